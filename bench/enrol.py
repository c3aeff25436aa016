"""Enrolment cost: ``POST /api/v1/enrol`` against a real fleet server (uvicorn on a TCP port,
SQLite in a temporary data dir, embedded broker), over HTTP/1.1 keep-alive, with the health
route measured in the same run as the baseline.

    python -m bench.enrol [--enrolments 300] [--nagle]

Rows: the health route, minting an enrolment token (admin), and the enrolment itself; each
with requests/s, p50 / p95 ms and the p50 ratio to health. ``--nagle`` adds the same three
rows against a server whose listening socket is made the way it was before the fix (protocol
0, so asyncio leaves Nagle on for accepted connections): every answer then waits for the
client's delayed ACK, about 40 ms (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet_server import serve  # noqa: E402
from fleet_server.config import ServerSettings  # noqa: E402


def _public_pem() -> str:
    return Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _proto0_socket(host: str, port: int) -> socket.socket:
    """The listening socket as ``bind_socket`` made it before the fix (protocol 0)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


@contextmanager
def _server(tmp: Path, *, nagle: bool) -> Iterator[serve.RunningServer]:
    settings = ServerSettings(data_dir=tmp / ("nagle" if nagle else "fleet"), port=0,
                              mqtt_port=0, insecure=True)  # plain HTTP, as measured before
    patch = mock.patch.object(serve, "bind_socket", _proto0_socket) if nagle else None
    if patch is not None:
        patch.start()
    try:
        with serve.start_server(settings) as running:
            yield running
    finally:
        if patch is not None:
            patch.stop()


def _time(n: int, call: Callable[[int], httpx.Response]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = call(i)
        out.append(time.perf_counter() - t0)
        if r.status_code >= 300:
            raise SystemExit(f"HTTP {r.status_code}: {r.text[:200]}")
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def measure(running: serve.RunningServer, n: int) -> dict[str, list[float]]:
    pem = _public_pem()
    with httpx.Client(base_url=running.http_url + "/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {running.admin_token}"}) as c:
        tokens = [c.post("/enrolment-tokens", json={"group": "default"}).json()["token"]
                  for _ in range(n)]
        health = _time(n, lambda i: c.get("/health"))
        mint = _time(n, lambda i: c.post("/enrolment-tokens", json={"group": "default"}))
        enrol = _time(n, lambda i: c.post("/enrol", json={
            "token": tokens[i], "device_id": f"bench-{i:05d}", "public_key": pem}))
    return {"health": health, "enrolment token": mint, "enrol": enrol}


def table(label: str, rows: dict[str, list[float]]) -> None:
    base = _pct(rows["health"], 0.5)
    for name, values in rows.items():
        p50 = _pct(values, 0.5)
        print(f"{label:<10} {name:<16} {len(values) / sum(values):>9.0f} "
              f"{p50:>8.2f} {_pct(values, 0.95):>8.2f} {p50 / base:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.enrol", description=__doc__.split("\n")[0])
    ap.add_argument("--enrolments", type=int, default=300)
    ap.add_argument("--nagle", action="store_true",
                    help="also measure a server with the pre-fix listening socket")
    args = ap.parse_args(argv)
    print(f"{'server':<10} {'route':<16} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p50/health':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        with _server(Path(tmp), nagle=False) as running:
            table("nodelay", measure(running, args.enrolments))
        if args.nagle:
            with _server(Path(tmp), nagle=True) as running:
                table("proto 0", measure(running, max(20, args.enrolments // 10)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
