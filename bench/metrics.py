"""What the Prometheus counters add to a predict call (``python -m bench.metrics``).

Two measurements on one machine, in one run:

1. ``TelemetryRecorder.record`` / ``record_error`` with the agent's ``InferenceObserver``
   bound vs with none (``timeit``, best of ``--repeat``): the added microseconds per call.
2. ``Agent(dir).predict`` (in process, on a tiny 8-8-8-10 MLP, batch 1, or ``--mlp F H B``)
   with metrics bound vs unbound vs a bare ``InferenceSession.run`` on the same file
   with the agent's session options,
   interleaved round by round in a shuffled order, each side's best round (as
   ``timeit``: the least disturbed by other load): the agent's whole fixed cost per call
   and the metrics' share of it; also against the public ``run`` of the agent's own
   session (no session-to-session difference in the comparison).
   Target: the in-process fixed cost <= 5 us per call.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np

from bench.agent_process import agent_dir_serving
from bench.serving import session_options
from bench.shadow import mlp, slot
from device_agent.agent import Agent
from device_agent.metrics import AgentMetrics
from device_agent.telemetry import TelemetryRecorder
from model_bundles.keys import generate_keypair


def recorder_cost(number: int, repeat: int) -> list[tuple[str, float]]:
    bound, bare = TelemetryRecorder(), TelemetryRecorder()
    bound.observer = AgentMetrics().observer("m", "1.0.0", "cpu")
    rows = []
    for label, stmt in (("record (no metrics)", lambda: bare.record(0.7)),
                        ("record (metrics bound)", lambda: bound.record(0.7)),
                        ("record_error (no metrics)", bare.record_error),
                        ("record_error (metrics bound)", bound.record_error)):
        best = min(timeit.repeat(stmt, number=number, repeat=repeat)) / number
        rows.append((label, best * 1e6))
    return rows


def predict_cost(work: Path, rounds: int, calls: int, features: int = 8, hidden: int = 8,
                 batch: int = 1) -> list[tuple[str, float]]:
    key, pub = generate_keypair(work / "keys")
    model = mlp(work / "tiny.onnx", seed=3, features=features, hidden=hidden)
    agent = Agent(agent_dir_serving(work / "agent", slot(work, model, key, pub, "0.0.1")))
    x = np.random.default_rng(0).standard_normal((batch, features)).astype(np.float32)
    agent.predict({"x": x})  # loads the committed model and binds its counters
    observer = agent.recorder.observer
    import onnxruntime as ort

    # the agent's session options (spinning off, ORT's default intra-op pool): a bare
    # session on one thread would leave the pool's wake-up in the "fixed cost"
    sess = ort.InferenceSession(str(model), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    # the public run of the very session the agent serves with: two sessions of one file
    # and options differed by up to ~8 us a call on the 2,048-float MLP here
    own = agent.serving.current.session._sess  # type: ignore[union-attr]
    samples: dict[str, list[float]] = {"bare": [], "own": [], "metrics": [], "no metrics": []}

    def run(name: str) -> None:
        if name == "bare":
            fn = lambda: sess.run(None, {"x": x})  # noqa: E731
        elif name == "own":
            fn = lambda: own.run(None, {"x": x})  # noqa: E731
        else:
            agent.recorder.observer = observer if name == "metrics" else None
            fn = lambda: agent.predict({"x": x})  # noqa: E731
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples[name].append((time.perf_counter() - t0) / calls * 1e6)

    order = list(samples)
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        rng.shuffle(order)  # no side always runs first (caches, frequency ramps)
        for name in order:
            run(name)
    agent.recorder.observer = observer
    best = {k: min(v) for k, v in samples.items()}  # timeit's rule: the quietest round
    return [("bare InferenceSession.run", best["bare"]),
            ("InferenceSession.run, the agent's own session", best["own"]),
            ("Agent.predict, metrics bound", best["metrics"]),
            ("Agent.predict, no metrics", best["no metrics"]),
            ("fixed cost (metrics bound - bare)", best["metrics"] - best["bare"]),
            ("fixed cost (metrics bound - own session)", best["metrics"] - best["own"]),
            ("metrics share (bound - no metrics)", best["metrics"] - best["no metrics"])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__)
    ap.add_argument("--number", type=int, default=200_000, help="calls per timeit repeat")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=100, help="interleaved predict rounds")
    ap.add_argument("--calls", type=int, default=500, help="predict calls per round")
    ap.add_argument("--mlp", type=int, nargs=3, default=(8, 8, 1),
                    metavar=("FEATURES", "HIDDEN", "BATCH"),
                    help="the predict model (default: the tiny 8-8-8-10, batch 1)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = recorder_cost(args.number, args.repeat) + predict_cost(
            Path(tmp), args.rounds, args.calls, *args.mlp)
    width = max(len(r[0]) for r in rows)
    print(f"{'per call':{width}}  microseconds")
    for label, us in rows:
        print(f"{label:{width}}  {us:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
