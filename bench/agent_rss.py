"""Where the agent process's resident memory goes, against a bare process holding the same
ONNX Runtime session (``python -m bench.agent_rss``).

For the sample model and the MLP of ``bench.serving``: start a real ``device-agent run``
process (``bench.agent_process``), post ``--requests`` requests on each of the four HTTP
routes of ``bench.serving`` (one keep-alive connection per route, as there), wait
``--quiet`` seconds, then read ``/proc/<pid>/smaps`` of the agent and of a bare process
(``bench.serving.bare_process``) and print the difference: anonymous memory (the C heap,
Python's object arenas, thread stacks) against file-backed pages (the code of the shared
libraries the agent loads), and the mappings that differ most. ``bench.agent_imports``
splits the imports; ``bench.serving`` gives the headline figure after its own load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bench.agent_process import AgentProcess, agent_dir_serving
from bench.serving import Post, bare_process, bodies, rename_input
from bench.shadow import mlp, slot
from model_bundles.keys import generate_keypair
from model_bundles.samples import write_sample_model


def smaps(pid: int) -> dict[str, Counter[str]]:
    """Mapping name ([heap], [anon], [stack], a file) -> summed kB fields (Rss, Anonymous)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if not head[0].endswith(":"):  # "start-end perms offset dev inode [path]"
            name = head[5] if len(head) > 5 else "[anon]"
        elif head[-1] == "kB":
            out[name][head[0][:-1]] += int(head[1])
    return out


def diff(agent: dict[str, Counter[str]], bare: dict[str, Counter[str]], top: int) -> list[str]:
    def total(m: dict[str, Counter[str]], key: str) -> int:
        return sum(c[key] for c in m.values())

    rss = total(agent, "Rss") - total(bare, "Rss")
    anon = total(agent, "Anonymous") - total(bare, "Anonymous")
    lines = [f"  +{rss / 1024:.1f} MiB: anonymous +{anon / 1024:.1f} "
             f"([heap] +{(agent['[heap]']['Rss'] - bare['[heap]']['Rss']) / 1024:.1f}, "
             f"[anon] +{(agent['[anon]']['Rss'] - bare['[anon]']['Rss']) / 1024:.1f}), "
             f"file-backed +{(rss - anon) / 1024:.1f}"]
    rows = sorted(((agent[k]["Rss"] - bare[k]["Rss"], k) for k in set(agent) | set(bare)),
                  reverse=True)
    for kib, k in rows[:top]:
        anon_k = agent[k]["Anonymous"] - bare[k]["Anonymous"]
        lines.append(f"  {kib / 1024:+7.1f} MiB (anonymous {anon_k / 1024:+5.1f})  {k}")
    return lines


def measure(label: str, model: Path, x: np.ndarray, work: Path, keys: tuple[Path, Path],
            args: argparse.Namespace) -> list[str]:
    slot_dir = slot(work, model, *keys, version=f"1.0.{len(list(work.glob('slot-*')))}")
    name = json.loads((slot_dir / "manifest.json").read_text())["name"]
    with AgentProcess(agent_dir_serving(work / f"agent-{len(label)}", slot_dir)) as agent:
        started = agent.rss_kib()
        posts = [Post(agent.url, p, b, h) for p, b, h in bodies(name, x).values()]
        for _ in range(max(1, args.requests // 100)):
            for post in posts:
                for _ in range(min(100, args.requests)):
                    post()
        for post in posts:
            post.close()
        loaded = agent.rss_kib()
        time.sleep(args.quiet)
        quiet = agent.rss_kib()
        mine = smaps(agent.pid)
    with bare_process(model, x) as pid:
        theirs = smaps(pid)
        bare = sum(c["Rss"] for c in theirs.values())
    return [f"{label}: agent {started / 1024:.1f} MiB when serving, {loaded / 1024:.1f} after "
            f"{len(posts)} x {args.requests} requests, {quiet / 1024:.1f} after {args.quiet:g} "
            f"s quiet; bare process {bare / 1024:.1f} MiB (+{(quiet - bare) / 1024:.1f})",
            *diff(mine, theirs, args.top)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.agent_rss",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="per route (bench.serving: 2000)")
    ap.add_argument("--quiet", type=float, default=6.0,
                    help="seconds after the load (bench.serving: 1 + --idle-seconds)")
    ap.add_argument("--top", type=int, default=8, help="mappings listed")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefleet-rss-") as tmp:
        work = Path(tmp)
        keys = generate_keypair(work / "keys")
        models = [("sample 16-4, batch 1", rename_input(write_sample_model(work / "s.onnx"), "x"),
                   np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)),
                  ("MLP 256-512-512-10, batch 8", mlp(work / "mlp.onnx", seed=0, features=256,
                                                     hidden=512),
                   np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32))]
        for label, model, x in models:
            print("\n".join(measure(label, model, x, work, keys, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
