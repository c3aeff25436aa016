"""Attacks on the device's local inference API, against a real agent process.

The agent (``python -m device_agent run``) serves the bench's committed model; each attack
is sent over a real socket, and every test asserts the answer, that the active model is
unchanged and that the agent still serves a normal request afterwards. Memory and threads
are read from ``/proc/<pid>/status`` of the agent process.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.lib import format as npy

from tests.security.conftest import Bench

NPZ = {"Content-Type": "application/x-npz"}
READ_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 8
MiB = 1024 * 1024


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns a truthy value (generous timeouts: no timing is
    asserted, only that the thing happens)."""
    end = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, ValueError, httpx.HTTPError):
            value = None
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def status(self, key: str) -> int:
        """A field of /proc/<pid>/status (VmRSS and VmHWM in KiB, Threads a count)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def settled_threads(self) -> int:
        """The thread count once it has stayed the same for a second (the handler thread
        of a request just answered may still be winding down)."""
        def steady() -> int | None:
            seen = set()
            for _ in range(5):
                seen.add(self.status("Threads"))
                time.sleep(0.2)
            return seen.pop() if len(seen) == 1 else None
        return int(wait_for(steady, 60, "a steady thread count"))

    def predict(self, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/predict", timeout=30, **kw)

    def assert_serves(self) -> None:
        r = self.predict(json={"inputs": {"features": [[0.25] * 16]}})
        assert r.status_code == 200, r.text
        assert r.json()["bundle"] == "sample@1.0.0"
        assert len(r.json()["outputs"]["scores"][0]) == 4


@pytest.fixture
def agent(bench: Bench, tmp_path: Path) -> Iterator[AgentProcess]:
    """The bench's device as a real ``device-agent run`` process (no broker reachable: the
    MQTT link keeps retrying, the local API serves the committed model)."""
    cfg_path = bench.agent_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(api_read_timeout_s=READ_TIMEOUT_S, api_max_connections=MAX_CONNECTIONS)
    cfg_path.write_text(json.dumps(cfg))
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "device_agent", "run", "--dir", str(bench.agent_dir),
             "--api-port", "0"], stdout=out, stderr=subprocess.STDOUT)
    try:
        api = bench.agent_dir / "state" / "api.json"
        info = wait_for(lambda: json.loads(api.read_text()), 60, f"api.json ({log})")
        url = info["url"]
        wait_for(lambda: httpx.get(f"{url}/v1/health").json()["model"], 60, "model served")
        a = AgentProcess(proc, url, log)
        a.assert_serves()
        yield a
        assert proc.poll() is None, log.read_text()  # no attack killed the agent
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- item 12: npz decompression bomb ---------------------------------------------------


def _npz_member(name: str, header: dict[str, Any], data_chunks: Iterator[bytes],
                *, level: int = 9) -> bytes:
    """An npz with one member whose npy header is ``header`` and data ``data_chunks``,
    written as numpy.savez_compressed would (deflate, zip64 for large members)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level
                         ) as zf, zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        npy.write_array_header_1_0(f, header)
        for chunk in data_chunks:
            f.write(chunk)
    return buf.getvalue()


def _gib_of_zeros() -> Iterator[bytes]:
    block = bytes(16 * MiB)
    for _ in range(64):
        yield block


def _bomb() -> bytes:
    """1 GiB of float32 zeros, shape (2**24, 16), deflated to about 1 MiB."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 24, 16)}
    return _npz_member("features", header, _gib_of_zeros())


def _lying_header() -> bytes:
    """A small member whose npy header declares 2**40 x 16 float32 (64 TiB)."""
    return _npz_member("features", {"descr": "<f4", "fortran_order": False,
                                    "shape": (1 << 40, 16)}, iter(()))


def _short_data() -> bytes:
    """The header promises 4 x 16 float32 (256 bytes) but the member holds 8."""
    return _npz_member("features", {"descr": "<f4", "fortran_order": False,
                                    "shape": (4, 16)}, iter([bytes(8)]))


def _too_many_members() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{"features": np.zeros((1, 16), np.float32),
                     **{f"extra{i}": np.zeros(1, np.float32) for i in range(50)}})
    return buf.getvalue()


def _object_array() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, features=np.array([[object()] * 16], dtype=object))  # a pickle inside
    return buf.getvalue()


def test_npz_decompression_bomb_is_refused_before_allocation(
    bench: Bench, agent: AgentProcess,
) -> None:
    body = _bomb()
    assert len(body) < 2 * MiB  # the reported attack: ~1 MiB on the wire, 1 GiB unpacked
    before = bench.model_state()
    rss0, hwm0 = agent.status("VmRSS"), agent.status("VmHWM")
    r = agent.predict(content=body, headers=NPZ)
    assert r.status_code == 413
    assert "declare 1073741952 bytes uncompressed, over the 67108864-byte input limit" in (
        r.json()["error"])
    # The 1 GiB array was never allocated: peak RSS grew by far less (the request body
    # itself is ~1 MiB); before the fix the agent reached 4.25 GB.
    assert agent.status("VmHWM") < max(hwm0, rss0) + 128 * 1024
    agent.assert_serves()
    assert bench.model_state() == before


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (_lying_header, 413, "input 'features': array of shape [1099511627776, 16] float32 "
                             "is 70368744177664 bytes, over the 67108864-byte limit"),
        (_short_data, 400, "the zip entry declares 136 bytes uncompressed, its npy header "
                           "describes 384"),
        (_too_many_members, 400, "npz has 51 arrays; the model takes 1 input"),
        (_object_array, 400, "arrays of dtype object are refused"),
    ],
    ids=["header_declares_huge_shape", "data_shorter_than_header", "too_many_members",
         "object_dtype_pickle"],
)
def test_hostile_npz_is_refused_from_its_headers(
    bench: Bench, agent: AgentProcess, make: Callable[[], bytes], status: int, message: str,
) -> None:
    before = bench.model_state()
    hwm0 = agent.status("VmHWM")
    r = agent.predict(content=make(), headers=NPZ)
    assert r.status_code == status
    assert message in r.json()["error"]
    assert agent.status("VmHWM") < hwm0 + 128 * 1024
    agent.assert_serves()
    assert bench.model_state() == before


# -- item 13: silent bad casts -----------------------------------------------------------


def _row(value: str) -> bytes:
    """A JSON body whose one features row is fifteen 0.5s and ``value`` (raw JSON text)."""
    return ('{"inputs": {"features": [[' + ", ".join(["0.5"] * 15 + [value]) + "]]}}").encode()


def _npz(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, features=arr)
    return buf.getvalue()


def _row_array(value: Any, dtype: Any) -> np.ndarray:
    arr = np.full((1, 16), 0.5, dtype=dtype)
    arr[0, 15] = value
    return arr


def _assert_refused(bench: Bench, agent: AgentProcess, kw: dict[str, Any], message: str
                    ) -> None:
    before = bench.model_state()
    r = agent.predict(**kw)
    assert r.status_code == 400
    assert message in r.json()["error"]
    agent.assert_serves()
    assert bench.model_state() == before


OVERFLOW = "input 'features': cannot convert to float32: has values outside the float32 range"
NON_FINITE = "input 'features': cannot convert to float32: has NaN or infinite values"
BOOLEANS = "input 'features': cannot convert to float32: has booleans; a float32 input takes"


@pytest.mark.parametrize(
    "kw",
    [{"content": _row("1e39"), "headers": {"Content-Type": "application/json"}},
     {"content": _row("-3.5e38"), "headers": {"Content-Type": "application/json"}},
     {"content": _npz(_row_array(1e39, np.float64)), "headers": NPZ}],
    ids=["json", "json_negative", "npz_float64"],
)
def test_float_overflow_to_inf_is_refused(
    bench: Bench, agent: AgentProcess, kw: dict[str, Any],
) -> None:
    _assert_refused(bench, agent, kw, OVERFLOW)


@pytest.mark.parametrize(
    "kw",
    [{"content": _row("NaN"), "headers": {"Content-Type": "application/json"}},
     {"content": _row("Infinity"), "headers": {"Content-Type": "application/json"}},
     {"content": _row("1e400"), "headers": {"Content-Type": "application/json"}},
     {"content": _npz(_row_array(np.nan, np.float32)), "headers": NPZ},
     {"content": _npz(_row_array(-np.inf, np.float32)), "headers": NPZ}],
    ids=["json_nan", "json_infinity", "json_literal_past_float64", "npz_nan", "npz_inf"],
)
def test_nan_input_is_refused(bench: Bench, agent: AgentProcess, kw: dict[str, Any]) -> None:
    _assert_refused(bench, agent, kw, NON_FINITE)


@pytest.mark.parametrize(
    "kw",
    [{"content": _row("true"), "headers": {"Content-Type": "application/json"}},
     {"content": b'{"inputs": {"features": [[' + b", ".join([b"false"] * 16) + b"]]}}",
      "headers": {"Content-Type": "application/json"}},
     {"content": _npz(np.ones((1, 16), dtype=bool)), "headers": NPZ}],
    ids=["json_mixed", "json_all_bools", "npz_bool_array"],
)
def test_bool_for_numeric_input_is_refused(
    bench: Bench, agent: AgentProcess, kw: dict[str, Any],
) -> None:
    _assert_refused(bench, agent, kw, BOOLEANS)


def test_numeric_strings_are_refused_not_parsed(bench: Bench, agent: AgentProcess) -> None:
    _assert_refused(bench, agent, {"content": _row('"1.5"'),
                                   "headers": {"Content-Type": "application/json"}},
                    "input 'features': cannot convert to float32: has values that are not "
                    "numbers (<U32)")


# -- item 14: stalled connections --------------------------------------------------------


def _stalled(url: str, request: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(request)
    return s


STALLED_BODY = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{\"inputs\":")
STALLED_HEADERS = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Len"


def _closed_by_peer(s: socket.socket) -> bytes | None:
    """Everything the agent sent, once it closed the connection; None while it is open."""
    s.settimeout(0.2)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data or b"(closed)"


def test_stalled_connection_is_closed_and_does_not_hold_a_thread(
    bench: Bench, agent: AgentProcess,
) -> None:
    before = bench.model_state()
    threads0 = agent.settled_threads()
    socks = [_stalled(agent.url, STALLED_BODY) for _ in range(3)]
    socks += [_stalled(agent.url, STALLED_HEADERS) for _ in range(3)]
    wait_for(lambda: agent.status("Threads") >= threads0 + len(socks), 30,
             "a handler thread per stalled connection")
    agent.assert_serves()  # served meanwhile, next to six stalled connections
    answers = [wait_for(lambda s=s: _closed_by_peer(s), 60, "the agent closing a stalled "
                        "connection") for s in socks]
    for s in socks:
        s.close()
    for a in answers[:3]:  # body never came: 408 then closed
        assert a.startswith(b"HTTP/1.1 408"), a
        assert b"request body not received within 2 s" in a
    wait_for(lambda: agent.status("Threads") <= threads0, 60, "thread count back to baseline")
    agent.assert_serves()
    assert bench.model_state() == before


def test_connections_over_the_cap_are_refused_without_a_thread(
    bench: Bench, agent: AgentProcess,
) -> None:
    threads0 = agent.settled_threads()
    socks = [_stalled(agent.url, STALLED_BODY) for _ in range(MAX_CONNECTIONS)]
    wait_for(lambda: agent.status("Threads") >= threads0 + MAX_CONNECTIONS, 30,
             "a handler thread per stalled connection")
    extra = _stalled(agent.url, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = wait_for(lambda: _closed_by_peer(extra), 60, "the over-the-cap answer")
    extra.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"too many open connections" in answer
    assert agent.status("Threads") < threads0 + MAX_CONNECTIONS + 1  # no thread for it
    for s in socks:
        wait_for(lambda s=s: _closed_by_peer(s), 60, "the stalled connection closed")
        s.close()
    wait_for(lambda: agent.status("Threads") <= threads0, 60, "thread count back to baseline")
    agent.assert_serves()
