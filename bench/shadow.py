"""Active-path latency with shadow on (default budget) vs shadow off (``python -m bench.shadow``).

Per model pair (MLPs of two widths by default), same process, interleaved rounds (off, on,
off, on, ...) so machine noise hits both sides alike. The active path is what
``Agent.predict`` does: ``ModelRuntime.predict`` then ``ShadowRunner.offer``; its wall time
per call is measured around both, with ``--pace-ms`` idle between calls (1 ms by default;
0 = a saturated active path). The candidate is a model of the same size with other
weights, on one intra-op thread, in the shadow worker under the default budget. Prints a
table: p50/p99 off and on, their ratios (targets: p50 <= 1.10, p99 <= 1.25), shadow
samples compared, per minute of "on" time, and the drops by reason; and the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from device_agent.runtime import ModelRuntime
from device_agent.shadow import Candidate, ShadowConfig, ShadowRunner
from model_bundles.builder import build_bundle
from model_bundles.input_stats import compute_input_stats
from model_bundles.keys import generate_keypair, load_public_key
from model_bundles.manifest import TensorSpec
from model_bundles.verify import extract_verified


def mlp(path: Path, *, seed: int, features: int, hidden: int, classes: int = 10) -> Path:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    w3 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("MatMul", ["r2", "w3"], ["z"]),
        helper.make_node("Softmax", ["z"], ["scores"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "bench_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"),
                                                              (w3, "w3"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def slot(work: Path, model: Path, key: Path, pub: Path, version: str) -> Path:
    """Build a signed bundle and extract it into a slot laid out like the installer's."""
    efb = work / f"{version}.efb"
    build_bundle([model], name="bench", version=version, key_path=key, out=efb,
                 task="classifier")
    dest = work / f"slot-{version}"
    dest.mkdir()
    vb = extract_verified(efb, dest / "files", [load_public_key(pub)])
    (dest / "manifest.json").write_bytes(vb.manifest_bytes)
    return dest


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def run_pair(args: argparse.Namespace, work: Path, key: Path, pub: Path, size: int,
             config: ShadowConfig) -> dict[str, float]:
    """One model pair (MLP ``size``-wide), interleaved off/on rounds; p50/p99 per side."""
    tag = f"{size}"
    active_slot = slot(work, mlp(work / f"a{tag}.onnx", seed=0, features=size, hidden=size),
                       key, pub, f"1.0.{size}")
    cand_slot = slot(work, mlp(work / f"c{tag}.onnx", seed=1, features=size, hidden=size),
                     key, pub, f"1.1.{size}")
    active = ModelRuntime.load(active_slot, gate=True, options={"intra_op_threads": args.threads})
    cand = ModelRuntime.load(cand_slot, gate=True, options={"intra_op_threads": 1})
    runner = ShadowRunner(config).start()
    inputs = {"x": np.random.default_rng(2).standard_normal((args.batch, size)).astype(
        np.float32)}
    # input statistics, so the drift sketches are fed as on a device (bundles built with
    # golden data carry them)
    reference = compute_input_stats(
        [TensorSpec("x", "float32", ("batch", size))],
        {"x": np.random.default_rng(3).standard_normal((256, size)).astype(np.float32)})
    for _ in range(200):  # warm-up
        active.predict(inputs)
    lat: dict[str, list[float]] = {"off": [], "on": []}
    on_s, offered = 0.0, 0
    banked: tuple[float, float] | None = None  # pace buckets at the end of the last "on" round
    for i in range(args.rounds):
        # ABBA order (off, on, on, off, ...): a trend over the run hits both sides alike
        for side in (("off", "on") if i % 2 == 0 else ("on", "off")):
            # "off" keeps the candidate loaded at sample rate 0 (set_candidate(None) would
            # close it); the active path then pays only the random draw
            runner.set_candidate(Candidate(cand, "0" * 64, args.rate if side == "on" else 0.0,
                                           reference))
            out = lat[side]
            pace = (runner.budget.samples, runner.budget.drift_rows)
            if side == "on" and banked is not None:
                # the pace buckets carry on from the last "on" round, as if the "off" rounds
                # had not happened (they would bank a burst per round otherwise)
                now = time.monotonic()
                for bucket, level in zip(pace, banked, strict=True):
                    bucket.level, bucket.at = level, now
            t_round = time.perf_counter()
            for _ in range(args.calls):
                t0 = time.perf_counter()
                pred = active.predict(inputs)
                runner.offer(inputs, pred.outputs, pred.latency_ms)
                out.append((time.perf_counter() - t0) * 1000.0)
                if args.pace_ms:
                    time.sleep(args.pace_ms / 1000.0)
            if side == "on":
                on_s += time.perf_counter() - t_round
                banked = (pace[0].level, pace[1].level)
                offered += args.calls
                runner.drain()
    compared, dropped = runner.total_samples, runner.total_dropped
    reasons = runner.drops_by_reason
    runner.stop()
    active.close()
    cand.close()
    p50 = {s: pct(v, 50) for s, v in lat.items()}
    p99 = {s: pct(v, 99) for s, v in lat.items()}
    return {"size": size, "p50_off": p50["off"], "p50_on": p50["on"], "p99_off": p99["off"],
            "p99_on": p99["on"], "r50": p50["on"] / p50["off"], "r99": p99["on"] / p99["off"],
            "compared": compared, "dropped": dropped, "offered": offered,
            "per_min": compared / on_s * 60.0 if on_s else 0.0,
            "reasons": ",".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "-"}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    d = ShadowConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=450, help="calls per round")
    ap.add_argument("--rounds", type=int, default=20, help="rounds per side (interleaved)")
    ap.add_argument("--sizes", default="1024,256",
                    help="model pairs: comma-separated MLP widths (features = hidden)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rate", type=float, default=1.0,
                    help="the stage's shadow_sample_rate (share of calls that may be sampled; "
                         "0: a null run, both sides alike, shows the bench's own noise)")
    ap.add_argument("--samples-per-minute", type=float, default=d.samples_per_minute)
    ap.add_argument("--drift-per-minute", type=float, default=d.drift_per_minute)
    ap.add_argument("--budget", type=float, default=d.cpu_budget, help="duty cycle")
    ap.add_argument("--cpu-share", type=float, default=d.cpu_share)
    ap.add_argument("--threads", type=int, default=1, help="active model intra-op threads")
    ap.add_argument("--no-sched-idle", action="store_true", help="worker at nice 19 only")
    ap.add_argument("--no-yield", action="store_true",
                    help="run samples at once, not in predicted gaps of the active path")
    ap.add_argument("--pace-ms", type=float, default=1.0,
                    help="idle time between calls (0 = back to back, a saturated active path)")
    args = ap.parse_args(argv)
    config = ShadowConfig(cpu_budget=args.budget, cpu_share=args.cpu_share,
                          samples_per_minute=args.samples_per_minute,
                          drift_per_minute=args.drift_per_minute,
                          worker_sched_idle=not args.no_sched_idle,
                          yield_to_active=not args.no_yield)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key, pub = generate_keypair(work / "keys")
        rows = [run_pair(args, work, key, pub, size, config) for size in sizes]

    print(f"shadow bench: MLP N-N-N-10 pairs, batch {args.batch}, {args.rounds}x{args.calls} "
          f"calls per side, pace {args.pace_ms} ms, stage rate {args.rate}, "
          f"{args.samples_per_minute:g} samples/min, cpu_share {args.cpu_share}, "
          f"duty {args.budget}, sched_idle {not args.no_sched_idle}, yield {not args.no_yield}, "
          f"{os.cpu_count()} CPUs, loadavg {load_before} -> {loadavg()}")
    print(f"{'pair':>6}{'p50 off':>9}{'p50 on':>9}{'p99 off':>9}{'p99 on':>9}{'r p50':>7}"
          f"{'r p99':>7}{'samples':>9}{'/min':>6}{'dropped':>9}  drops by reason")
    for r in rows:
        print(f"{r['size']:>6}{r['p50_off']:>9.4f}{r['p50_on']:>9.4f}{r['p99_off']:>9.4f}"
              f"{r['p99_on']:>9.4f}{r['r50']:>7.3f}{r['r99']:>7.3f}{r['compared']:>9}"
              f"{r['per_min']:>6.0f}{r['dropped']:>9}  {r['reasons']}")
    ok = all(r["r50"] <= 1.10 and r["r99"] <= 1.25 for r in rows)
    print(f"targets p50 <= 1.10, p99 <= 1.25: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
