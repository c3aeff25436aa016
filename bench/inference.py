"""Inference overheads, measured in one run on real models (``python -m bench.inference``).

Three comparisons, each against a bare ``onnxruntime.InferenceSession.run`` on the same
model file, input and thread count, with the two sides interleaved round by round so
machine noise hits both alike (medians and p99 over all calls):

1. in-process: ``ModelRuntime.predict`` (what ``Agent.predict`` and the local API call)
   vs the bare call. Target: at most 5% added on a model taking >= 1 ms per call.
2. local HTTP: ``POST /v1/predict`` on a real ``LocalApi`` (JSON and npz bodies, one
   keep-alive ``http.client`` connection per client thread) vs the bare call: added ms per
   call, and requests/s with 1 and 4 concurrent clients.
3. int8 vs fp32: ``model_bundles.quantize`` dynamic int8 of the same MLP: file size,
   latency (bare sessions, interleaved) and top-1 agreement on held-out inputs.

The model is a generated MLP (``--features``-``--hidden``-``--hidden``-10, softmax), built
with onnx.helper and packed as a signed bundle so the agent path is the real one.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.shadow import mlp, slot
from device_agent.local_api import LocalApi
from device_agent.runtime import ModelRuntime
from device_agent.telemetry import TelemetryRecorder
from model_bundles.keys import generate_keypair
from model_bundles.quantize import quantize_model


def bare_session(path: Path, threads: int):  # noqa: ANN201 - onnxruntime types
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def timed(fn: Callable[[], object], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def interleave(sides: dict[str, Callable[[], object]], rounds: int, calls: int,
               warmup: int = 50, *, shuffle: bool = False) -> dict[str, list[float]]:
    """``calls`` timed calls per side per round, the sides in turn. ``shuffle``: a new
    (seeded) order each round, so no side always runs right after another (with several
    ONNX Runtime sessions the side that follows a switch measured ~5 us slower at p50,
    the same session included)."""
    for fn in sides.values():
        timed(fn, warmup)
    lat: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        if shuffle:
            rng.shuffle(order)
        for name in order:
            lat[name] += timed(sides[name], calls)
    return lat


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


class Client:
    """One keep-alive HTTP connection posting the same body."""

    def __init__(self, port: int, body: bytes, ctype: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.body = body
        self.headers = {"Content-Type": ctype, "Content-Length": str(len(body))}

    def __call__(self) -> bytes:
        self.conn.request("POST", "/v1/predict", self.body, self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"predict answered {resp.status}: {data[:200]!r}")
        return data

    def close(self) -> None:
        self.conn.close()


def throughput(port: int, body: bytes, ctype: str, clients: int, seconds: float) -> float:
    """Requests/s with ``clients`` threads, each on its own keep-alive connection."""
    done = [0] * clients
    stop = threading.Event()
    start = threading.Barrier(clients + 1)

    def work(i: int) -> None:
        c = Client(port, body, ctype)
        c()
        start.wait()
        while not stop.is_set():
            c()
            done[i] += 1
        c.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inference",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, both sides")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=20, help="calls per side per round")
    ap.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    ap.add_argument("--agreement-samples", type=int, default=512)
    args = ap.parse_args(argv)

    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        key, pub = generate_keypair(work / "keys")
        fp32 = mlp(work / "fp32.onnx", seed=0, features=args.features, hidden=args.hidden)
        rt = ModelRuntime.load(slot(work, fp32, key, pub, "1.0.0"), gate=True,
                               options={"intra_op_threads": args.threads})
        bare = bare_session(fp32, args.threads)
        x = np.random.default_rng(1).standard_normal(
            (args.batch, args.features)).astype(np.float32)
        feeds = {"x": x}
        out_names = [o.name for o in bare.get_outputs()]
        same = np.allclose(rt.predict(feeds).outputs["scores"], bare.run(out_names, feeds)[0])

        # 1. in-process
        lat = interleave({"bare": lambda: bare.run(out_names, feeds),
                          "predict": lambda: rt.predict(feeds)}, args.rounds, args.calls)
        b50, p50 = pct(lat["bare"], 50), pct(lat["predict"], 50)
        b99, p99 = pct(lat["bare"], 99), pct(lat["predict"], 99)
        rows += [
            ("bare InferenceSession.run", f"{b50:.4f}", f"{b99:.4f}", "1.000"),
            ("ModelRuntime.predict", f"{p50:.4f}", f"{p99:.4f}",
             f"{p50 / b50:.3f} (target <= 1.05; +{(p50 - b50) * 1000:.1f} us)"),
        ]

        # fixed per-call cost, isolated on a tiny model (8-8-8-10, batch 1)
        tiny = mlp(work / "tiny.onnx", seed=3, features=8, hidden=8)
        trt = ModelRuntime.load(slot(work, tiny, key, pub, "0.0.1"),
                                options={"intra_op_threads": 1})
        tbare = bare_session(tiny, 1)
        tfeeds = {"x": np.ones((1, 8), np.float32)}
        lat = interleave({"bare": lambda: tbare.run(out_names, tfeeds),
                          "predict": lambda: trt.predict(tfeeds)}, args.rounds, args.calls * 5)
        tb, tp = pct(lat["bare"], 50), pct(lat["predict"], 50)
        rows.append(("predict on tiny MLP (fixed cost)", f"{tp:.4f}", f"{pct(lat['predict'], 99):.4f}",
                     f"+{(tp - tb) * 1000:.1f} us/call over bare {tb * 1000:.1f} us"))
        trt.close()

        # 2. local HTTP
        buf = io.BytesIO()
        np.savez(buf, x=x)
        bodies = {"json": (json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                           "application/json"),
                  "npz": (buf.getvalue(), "application/x-npz")}
        rps: dict[str, dict[int, float]] = {}
        with LocalApi(lambda: rt, TelemetryRecorder(), port=0) as api:
            clients = {k: Client(api.port, b, c) for k, (b, c) in bodies.items()}
            lat = interleave({"bare": lambda: bare.run(out_names, feeds),
                              **{f"http {k}": c for k, c in clients.items()}},
                             max(2, args.rounds // 2), max(20, args.calls // 2))
            for c in clients.values():
                c.close()
            b50, b99 = pct(lat["bare"], 50), pct(lat["bare"], 99)
            for k in bodies:
                h50, h99 = pct(lat[f"http {k}"], 50), pct(lat[f"http {k}"], 99)
                rows.append((f"HTTP /v1/predict ({k})", f"{h50:.4f}", f"{h99:.4f}",
                             f"{h50 / b50:.3f} (+{h50 - b50:.3f} ms/call)"))
            for k, (body, ctype) in bodies.items():
                rps[k] = {n: throughput(api.port, body, ctype, n, args.seconds) for n in (1, 4)}
        bare_rps = 1000.0 / b50

        # 3. int8 vs fp32
        int8 = work / "int8.onnx"
        quantize_model(fp32, int8, mode="dynamic")
        q = bare_session(int8, args.threads)
        lat = interleave({"fp32": lambda: bare.run(out_names, feeds),
                          "int8": lambda: q.run(out_names, feeds)}, args.rounds, args.calls)
        xs = np.random.default_rng(7).standard_normal(
            (args.agreement_samples, args.features)).astype(np.float32)
        ref = bare.run(out_names, {"x": xs})[0]
        got = q.run(out_names, {"x": xs})[0]
        top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
        max_err = float(np.max(np.abs(ref - got)))
        size_ratio = int8.stat().st_size / fp32.stat().st_size
        f50, i50 = pct(lat["fp32"], 50), pct(lat["int8"], 50)
        rt.close()

    print(f"inference bench: MLP {args.features}-{args.hidden}-{args.hidden}-10, batch "
          f"{args.batch}, {args.threads} intra-op thread(s), {os.cpu_count()} CPUs, "
          f"delegate {rt.delegate}; outputs identical to bare: {same}")
    print(f"{'path':30}{'p50 ms':>10}{'p99 ms':>10}   ratio to bare (p50)")
    for name, a, b, r in rows:
        print(f"{name:30}{a:>10}{b:>10}   {r}")
    print(f"\nthroughput (keep-alive clients; bare single-thread equivalent "
          f"{bare_rps:.0f} req/s):")
    for k, by_n in rps.items():
        print(f"  HTTP {k:5} 1 client {by_n[1]:8.0f} req/s   4 clients {by_n[4]:8.0f} req/s")
    print(f"\nint8 (dynamic) vs fp32: size ratio {size_ratio:.3f}, latency ratio p50 "
          f"{i50 / f50:.3f} ({i50:.4f} vs {f50:.4f} ms), top-1 agreement {top1:.4f} on "
          f"{args.agreement_samples} inputs, max abs error {max_err:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
