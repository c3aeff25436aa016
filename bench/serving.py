"""The serving path against bare ``InferenceSession.run``, in one run (``python -m
bench.serving``).

For each model (the sample classifier, sub-millisecond, and a wider MLP) this bench builds
a signed bundle, starts a real agent process on it (``bench.agent_process``) and, from
this process over one keep-alive ``http.client`` connection per path, times:

- OIP binary: ``POST /v2/models/{name}/infer`` with Triton's binary tensor data (input and
  outputs binary), the fast path for clients;
- OIP JSON, ``/v1/predict`` JSON and ``/v1/predict`` npz, reported;
- the same OIP binary route served by uvicorn + a minimal ASGI app (``bench.asgi_oip``), the
  measured alternative HTTP server;
- in this process: ``ModelRuntime.predict`` and ``device_agent.Agent(dir).predict`` (the
  app's Python API: the serving holder, telemetry and metrics around it), the fixed cost
  per call (their own interleaved run against bare, 5x longer blocks, in a shuffled order
  each round, with a second bare side, "bare, again", as the comparison's noise floor);

each interleaved round by round with a bare ``InferenceSession.run`` on the same file,
input and session options as the agent's (``delegates.onnxruntime_backend``: spinning off,
one inter-op thread, ORT's default intra-op pool), so machine noise hits all sides alike.
Request bodies are encoded once; answers are read in full, not decoded.

Then, per agent: its idle CPU over ``--idle-seconds`` (``/proc/<pid>/stat`` utime+stime,
after the load stopped) and its RSS against a bare Python process that imports numpy and
onnxruntime, opens the same session and runs it once. Last, the cost of the agent's
thread setting: CPU time and latency of the MLP paced at ``--paced-rate`` runs/s with ONNX
Runtime's default thread spinning and with spinning off.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.agent_process import AgentProcess, agent_dir_serving, proc_status
from bench.inference import interleave, pct
from bench.shadow import mlp, slot
from device_agent.agent import Agent
from device_agent.runtime import ModelRuntime
from model_bundles.keys import generate_keypair
from model_bundles.samples import write_sample_model

HEADER = "Inference-Header-Content-Length"


def session_options(spinning: bool = False) -> Any:
    """The agent's session options (``OrtBackend.open`` with no options); ``spinning``
    gives ONNX Runtime's default (spinning on) for comparison."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class Post:
    """One keep-alive connection posting the same body to the same path."""

    def __init__(self, url: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.path, self.body = path, body
        self.headers = {**headers, "Content-Length": str(len(body))}

    def __call__(self) -> bytes:
        self.conn.request("POST", self.path, self.body, self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{self.path} answered {resp.status}: {data[:200]!r}")
        return data

    def close(self) -> None:
        self.conn.close()


def bodies(name: str, x: np.ndarray) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """path label -> (path, body, headers) for the same input ``x``."""
    infer = f"/v2/models/{name}/infer"
    head = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    npz = io.BytesIO()
    np.savez(npz, x=x)
    js = {"Content-Type": "application/json"}
    return {
        "OIP binary": (infer, head + x.tobytes(), {HEADER: str(len(head)),
                                                   "Content-Type": "application/octet-stream"}),
        "OIP JSON": (infer, json.dumps({"inputs": [{"name": "x", "shape": list(x.shape),
                                                    "datatype": "FP32",
                                                    "data": x.ravel().tolist()}]}).encode(), js),
        "/v1/predict JSON": ("/v1/predict", json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                             js),
        "/v1/predict npz": ("/v1/predict", npz.getvalue(),
                            {"Content-Type": "application/x-npz"}),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_uvicorn(slot_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.asgi_oip", str(slot_dir), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                c.close()
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("uvicorn did not start")


def bare_rss_kib(model: Path, x: np.ndarray) -> int:
    """VmRSS of a bare Python process holding the same ORT session, after one run."""
    with bare_process(model, x) as pid:
        return proc_status(pid, "VmRSS")


@contextlib.contextmanager
def bare_process(model: Path, x: np.ndarray) -> Iterator[int]:
    """A bare Python process (numpy, onnxruntime) holding an ORT session on ``model`` with
    the agent's thread settings, after one run on an input of ``x``'s shape: its pid."""
    code = ("import sys, numpy as np, onnxruntime as ort\n"
            "so = ort.SessionOptions()\n"
            "so.add_session_config_entry('session.intra_op.allow_spinning', '0')\n"
            "so.add_session_config_entry('session.inter_op.allow_spinning', '0')\n"
            "so.inter_op_num_threads = 1\n"
            f"s = ort.InferenceSession({str(model)!r}, sess_options=so, "
            "providers=['CPUExecutionProvider'])\n"
            f"s.run(None, {{'x': np.zeros({list(x.shape)!r}, np.float32)}})\n"
            "print('ready', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def measure(label: str, model: Path, x: np.ndarray, work: Path, keys: tuple[Path, Path],
            args: argparse.Namespace) -> tuple[list[tuple[str, ...]], list[str]]:
    import onnxruntime as ort

    slot_dir = slot(work, model, *keys, version=f"1.0.{len(list(work.glob('slot-*')))}")
    bare = ort.InferenceSession(str(model), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    feeds = {"x": x}
    rt = ModelRuntime.load(slot_dir, ["cpu"])
    app = Agent(agent_dir_serving(work / f"inproc-{label}", slot_dir))  # not started
    app.predict(feeds)  # loads the committed model
    bare_run: Callable[[], object] = lambda: bare.run(None, feeds)  # noqa: E731
    # the fixed in-process cost is a few us: longer blocks so timer noise averages out
    # in a shuffled order each round; "bare, again" (the same session as "bare", its own
    # blocks) measures the noise floor of the comparison
    inproc = interleave({"bare": bare_run, "ModelRuntime.predict": lambda: rt.predict(feeds),
                         "Agent.predict": lambda: app.predict(feeds), "bare, again": bare_run},
                        args.rounds, args.calls * 5, shuffle=True)
    app.stop()
    notes: list[str] = []
    with AgentProcess(agent_dir_serving(work / f"agent-{label}", slot_dir)) as agent:
        posts = {k: Post(agent.url, p, b, h)
                 for k, (p, b, h) in bodies(rt.manifest.name, x).items()}
        uvi, uvi_url = start_uvicorn(slot_dir) if args.uvicorn else (None, "")
        if not args.uvicorn:
            notes.append(f"{label}: uvicorn row skipped ({args.uvicorn_missing or '--no-uvicorn'})")
        try:
            if uvi is not None:
                path, body, headers = bodies(rt.manifest.name, x)["OIP binary"]
                posts["OIP binary, uvicorn ASGI"] = Post(uvi_url, path, body, headers)
            lat = interleave({"bare": bare_run, **posts}, args.rounds, args.calls)
        finally:
            for p in posts.values():
                p.close()
            if uvi is not None:
                uvi.terminate()
                uvi.wait(10)
        time.sleep(1.0)
        cpu0 = agent.cpu_seconds()
        time.sleep(args.idle_seconds)
        idle = (agent.cpu_seconds() - cpu0) / args.idle_seconds * 100
        rss = agent.rss_kib()
        threads = proc_status(agent.pid, "Threads")
    bare_rss = bare_rss_kib(model, x)
    rt.close()
    rows = [(label, "bare InferenceSession.run", f"{pct(lat['bare'], 50):.4f}",
             f"{pct(lat['bare'], 99):.4f}", "1.000", "", "")]
    for run in (inproc, lat):
        b50, b99 = pct(run["bare"], 50), pct(run["bare"], 99)
        for k in run:
            if k == "bare":
                continue
            p50, p99 = pct(run[k], 50), pct(run[k], 99)
            rows.append((label, k, f"{p50:.4f}", f"{p99:.4f}", f"{p50 / b50:.2f}",
                         f"{(p50 - b50) * 1000:+.1f}", f"{(p99 - b99) * 1000:+.0f}"))
    notes.append(f"{label}: agent idle CPU {idle:.2f}% of one core over {args.idle_seconds:g} s "
                 f"({threads} threads); RSS agent {rss / 1024:.1f} MiB vs bare Python + same "
                 f"ORT session {bare_rss / 1024:.1f} MiB (+{(rss - bare_rss) / 1024:.1f} MiB)")
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=100, help="calls per side per round")
    ap.add_argument("--mlp", type=int, nargs=3, default=(256, 512, 8),
                    metavar=("FEATURES", "HIDDEN", "BATCH"))
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--no-uvicorn", dest="uvicorn", action="store_false")
    ap.add_argument("--paced-rate", type=float, default=200.0,
                    help="runs/s for the spinning on/off CPU comparison")
    args = ap.parse_args(argv)
    missing = [m for m in ("uvicorn", "httptools", "uvloop") if importlib.util.find_spec(m) is None]
    args.uvicorn_missing = f"pip install {' '.join(missing)}" if missing else ""
    args.uvicorn = args.uvicorn and not missing
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-serving-") as tmp:
        work = Path(tmp)
        keys = generate_keypair(work / "keys")
        sample = rename_input(write_sample_model(work / "sample.onnx"), "x")
        f, h, b = args.mlp
        models = [("sample 16-4, batch 1", sample, np.linspace(-1, 1, 16, dtype=np.float32)
                   .reshape(1, 16)),
                  (f"MLP {f}-{h}-{h}-10, batch {b}", mlp(work / "mlp.onnx", seed=0,
                                                         features=f, hidden=h),
                   np.random.default_rng(1).standard_normal((b, f)).astype(np.float32))]
        for label, model, x in models:
            r, n = measure(label, model, x, work, keys, args)
            rows += r
            notes += n
        notes.append(spinning_cpu(models[1][1], models[1][2], args.paced_rate))
    print(f"serving bench: {os.cpu_count()} CPUs, {args.rounds} rounds x {args.calls} calls "
          "per side, interleaved; latency in ms, added in us (p50 / p99 over bare)")
    print(f"{'model':28}{'path':28}{'p50':>9}{'p99':>9}{'ratio':>7}{'+p50':>8}{'+p99':>8}")
    for m, path, a, b99, r, d50, d99 in rows:
        print(f"{m:28}{path:28}{a:>9}{b99:>9}{r:>7}{d50:>8}{d99:>8}")
    print()
    for n in notes:
        print(n)
    return 0


def spinning_cpu(model: Path, x: np.ndarray, rate: float, seconds: float = 3.0) -> str:
    """CPU time this process spends running ``model`` paced at ``rate`` runs/s (a device
    serving light traffic), with ORT's default spinning and with the agent's (off)."""
    import onnxruntime as ort

    used, p50 = {}, {}
    for spinning in (True, False):
        sess = ort.InferenceSession(str(model), sess_options=session_options(spinning),
                                    providers=["CPUExecutionProvider"])
        sess.run(None, {"x": x})
        t0, c0 = time.perf_counter(), time.process_time()
        n, lat = 0, []
        while (now := time.perf_counter()) - t0 < seconds:
            if now - t0 >= n / rate:
                sess.run(None, {"x": x})
                lat.append(time.perf_counter() - now)
                n += 1
            else:
                time.sleep(min(0.001, n / rate - (now - t0)))
        used[spinning] = (time.process_time() - c0) / (time.perf_counter() - t0) * 100
        p50[spinning] = pct(lat, 50) * 1000
        del sess
    return (f"ORT thread spinning, {rate:g} runs/s of the MLP for {seconds:g} s (default "
            f"intra-op pool): CPU {used[True]:.0f}% of one core and p50 {p50[True]:.3f} ms "
            f"per run with spinning (ORT's default), {used[False]:.0f}% and "
            f"{p50[False]:.3f} ms without (the agent's setting)")


def rename_input(model: Path, name: str) -> Path:
    """The sample model with its input renamed (the bench feeds every model ``x``)."""
    import onnx

    m = onnx.load(str(model))
    old = m.graph.input[0].name
    m.graph.input[0].name = name
    for node in m.graph.node:
        node.input[:] = [name if i == old else i for i in node.input]
    onnx.save(m, str(model))
    return model


if __name__ == "__main__":
    raise SystemExit(main())
