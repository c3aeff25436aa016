"""Active-path latency with shadow sampling at 100% vs shadow off (``python -m bench.shadow``).

Same model pair, same process, interleaved rounds (off, on, off, on, ...) so machine noise
hits both sides alike. The active path is what ``Agent.predict`` does: ``ModelRuntime.predict``
then ``ShadowRunner.offer``; its wall time per call is measured around both. The candidate
is a model of the same size with other weights, on one intra-op thread, in the shadow
worker under its CPU budget. Prints a table: p50/p99 off and on, their ratios (targets:
p50 <= 1.10, p99 <= 1.25 on 2 cores), shadow samples compared and the drop rate.
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
from model_bundles.keys import generate_keypair, load_public_key
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1500, help="calls per round")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per side (interleaved)")
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--budget", type=float, default=ShadowConfig().cpu_budget)
    ap.add_argument("--threads", type=int, default=1, help="active model intra-op threads")
    ap.add_argument("--pace-ms", type=float, default=0.0,
                    help="idle time between calls (0 = back to back, a saturated active path)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key, pub = generate_keypair(work / "keys")
        active_slot = slot(work, mlp(work / "a.onnx", seed=0, features=args.features,
                                     hidden=args.hidden), key, pub, "1.0.0")
        cand_slot = slot(work, mlp(work / "c.onnx", seed=1, features=args.features,
                                   hidden=args.hidden), key, pub, "1.1.0")
        active = ModelRuntime.load(active_slot, gate=True,
                                   options={"intra_op_threads": args.threads})
        cand = ModelRuntime.load(cand_slot, gate=True, options={"intra_op_threads": 1})
        runner = ShadowRunner(ShadowConfig(cpu_budget=args.budget)).start()
        x = np.random.default_rng(2).standard_normal((args.batch, args.features)).astype(
            np.float32)
        inputs = {"x": x}
        for _ in range(200):  # warm-up
            active.predict(inputs)
        lat: dict[str, list[float]] = {"off": [], "on": []}
        offered = 0
        for _ in range(args.rounds):
            for side in ("off", "on"):
                # "off" keeps the candidate loaded at sample rate 0 (set_candidate(None) would
                # close it); the active path then pays only the random draw
                runner.set_candidate(Candidate(cand, "0" * 64, 1.0 if side == "on" else 0.0))
                out = lat[side]
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    pred = active.predict(inputs)
                    runner.offer(inputs, pred.outputs, pred.latency_ms)
                    out.append((time.perf_counter() - t0) * 1000.0)
                    if args.pace_ms:
                        time.sleep(args.pace_ms / 1000.0)
                if side == "on":
                    offered += args.calls
                    runner.drain()
        # every "on" call was sampled (rate 1.0): compared + dropped == offered
        compared, dropped = runner.total_samples, runner.total_dropped
        runner.stop()
        active.close()
        cand.close()

    p50 = {s: pct(v, 50) for s, v in lat.items()}
    p99 = {s: pct(v, 99) for s, v in lat.items()}
    r50, r99 = p50["on"] / p50["off"], p99["on"] / p99["off"]
    print(f"shadow bench: MLP {args.features}-{args.hidden}-{args.hidden}-10, batch "
          f"{args.batch}, {args.rounds}x{args.calls} calls per side, cpu_budget "
          f"{args.budget}, pace {args.pace_ms} ms, {os.cpu_count()} CPUs")
    print(f"{'':14}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'shadow off':14}{p50['off']:>10.4f}{p99['off']:>10.4f}")
    print(f"{'shadow 100%':14}{p50['on']:>10.4f}{p99['on']:>10.4f}")
    print(f"{'ratio':14}{r50:>10.3f}{r99:>10.3f}   (targets <= 1.10, <= 1.25)")
    print(f"shadow: offered {offered}, compared {compared}, dropped {dropped} "
          f"(drop rate {dropped / max(1, offered):.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
