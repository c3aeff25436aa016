"""What the agent's imports add to the resident memory of a process that already holds
numpy and ONNX Runtime (``python -m bench.agent_imports``).

In a fresh interpreter per column (``sys.executable``; ``--oo`` adds a column with ``-OO``):
import numpy and onnxruntime, read ``VmRSS`` (``/proc/self/status``), then import each
step in turn and read it again. Each row is what that step added on top of the previous
ones, so the order matters: a library shared by two steps is counted in the first (ssl
after cryptography, for instance, adds little of OpenSSL). The last row is
``device_agent.agent`` itself, with everything left; "total" is the whole agent's import,
split into anonymous memory (``RssAnon``; the part in Python's object arenas from
``sys._debugmallocstats``) and file-backed pages (``RssFile``: the libraries' code).
``python -m bench.serving`` measures the running agent against a bare process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

STEPS = ("msgspec", "ota.model", "ota.messages", "cryptography.hazmat.primitives.asymmetric.ed25519",
         "ota.instructions", "ota.updater", "cryptography.x509", "ssl", "http.server",
         "paho.mqtt.client", "prometheus_client", "device_agent.agent")

_PROBE = """
import importlib, json, os, re, sys
def rss(key="VmRSS"):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))
def arenas():  # KiB in Python's object arenas (sys._debugmallocstats writes to fd 2)
    r, w = os.pipe()
    err = os.dup(2)
    os.dup2(w, 2)
    os.close(w)
    sys._debugmallocstats()
    os.dup2(err, 2)
    os.close(err)
    text = b""
    while chunk := os.read(r, 65536):
        text += chunk
    os.close(r)
    n, size = re.search(rb"(\\d+) arenas \\* (\\d+) bytes/arena", text).groups()
    return int(n) * int(size) // 1024
import numpy, onnxruntime
base = prev = rss()
split0 = (rss("RssAnon"), rss("RssFile"), arenas())
rows = []
for step in sys.argv[1:]:
    importlib.import_module(step)
    now = rss()
    rows.append((step, now - prev))
    prev = now
split = [b - a for a, b in zip(split0, (rss("RssAnon"), rss("RssFile"), arenas()))]
print(json.dumps({"rows": rows, "total": prev - base, "split": split}))
"""


def measure(steps: tuple[str, ...], flags: list[str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, *flags, "-c", _PROBE, *steps], capture_output=True,
                         text=True, check=True, timeout=300)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.agent_imports",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--oo", action="store_true",
                    help="add a column for an interpreter run with -OO (no docstrings)")
    ap.add_argument("--steps", nargs="+", default=STEPS, metavar="MODULE",
                    help="modules to import in turn instead of the agent's (from the repo "
                         "root: e.g. msgspec bench.payloads_msgspec)")
    args = ap.parse_args(argv)
    steps = tuple(args.steps)
    flags = ["", "-OO"] if args.oo else [""]
    runs = {f or "plain": measure(steps, [f] if f else []) for f in flags}
    names = list(runs)
    print("MiB added to a process holding numpy + onnxruntime, step by step")
    print(f"{'step':52}" + "".join(f"{n:>10}" for n in names))
    for i, step in enumerate(steps):
        vals = [runs[n]["rows"][i][1] / 1024 for n in names]  # type: ignore[index]
        print(f"{step:52}" + "".join(f"{v:10.1f}" for v in vals))
    print(f"{'total':52}" + "".join(f"{runs[n]['total'] / 1024:10.1f}"  # type: ignore[operator]
                                     for n in names))
    for i, part in enumerate(("of which anonymous", "  in Python's object arenas",
                              "of which file-backed (library code)")):
        col = (0, 2, 1)[i]
        print(f"{part:52}" + "".join(f"{runs[n]['split'][col] / 1024:10.1f}"  # type: ignore[index]
                                     for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
