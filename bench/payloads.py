"""Parse + validate cost of the agent's hot MQTT messages (``python -m bench.payloads``).

Three implementations of the same checks, in one process, on the same bytes:

- ``hand-written``: protocol 1's first parsers (json.loads + the field getters of
  ``ota/payload.py``), loaded from git at ``LEGACY_REV``, the last commit before
  docs/adr/0003-typed-payload-models.md;
- ``pydantic``: the ``ota`` package of ADR 0003 (pydantic v2 dataclasses), extracted from
  git at ``PYDANTIC_REV``, the last commit before docs/adr/0006-msgspec-protocol-models.md,
  and imported beside today's under the same module names (swapped in ``sys.modules``);
- ``msgspec``: today's ``ota`` (``msgspec.Struct``s, ``ota.model``).

Messages: a telemetry batch (``--batch`` windows, what the server ingests per device
outbox flush), a signed instruction's payload (a 64 MiB bundle: 256 chunk hashes) and a
chunk frame (256 KiB of data). Each row is the best of ``--repeat`` timeit runs, in
microseconds per message, with the ratio to the hand-written parser.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ota.chunks import decode_chunk_frame, encode_chunk_frame
from ota.instructions import BundleRef, Instruction
from ota.messages import LatencySummary, Telemetry

LEGACY_REV = "511610b1e2b93e7c0200cf63093ad155a55ad6f6"
PYDANTIC_REV = "a7caa2bf7c4cf69c04128db623078f77d2323b30"
ROOT = Path(__file__).resolve().parent.parent
SHA = "0123456789abcdef" * 4
PEM = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA" + "A" * 43 + "=\n-----END PUBLIC KEY-----\n"


def legacy_modules() -> dict[str, types.ModuleType]:
    """``payload``, ``messages``, ``instructions``, ``chunks`` as they were at LEGACY_REV
    (their ``from ota import payload`` pointed at the legacy payload module)."""
    mods: dict[str, types.ModuleType] = {}
    for name in ("payload", "messages", "instructions", "chunks"):
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{LEGACY_REV}:ota/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        src = src.replace("from ota import payload as p", "p = _legacy['payload']")
        src = src.replace("from ota.instructions import chunk_count",
                          "chunk_count = _legacy['instructions'].chunk_count")
        mod = types.ModuleType(f"legacy_{name}")
        mod.__dict__["_legacy"] = mods
        sys.modules[mod.__name__] = mod
        exec(compile(src, f"{LEGACY_REV[:8]}:ota/{name}.py", "exec"), mod.__dict__)  # noqa: S102 - our own git history
        mods[name] = mod
    return mods


def sample_bytes(batch: int) -> dict[str, Any]:
    tel = [Telemetry("dev-1", i, 1764384000.0 + i, 10.0, "digits@1.0.0",
                     "onnxruntime:CPUExecutionProvider", 120, 0, 5120 + i, 3,
                     LatencySummary(0.21, 0.40, 0.91)).to_bytes() for i in range(batch)]
    size, chunk = 64 * 1024 * 1024, 256 * 1024
    bundle = BundleRef("digits", "1.0.0", SHA, size, chunk, (SHA,) * (size // chunk), SHA, PEM)
    instr = Instruction("dev-1", 7, 1764384000.0, 1764988800.0, "dep-1", bundle).to_payload()
    frame = encode_chunk_frame(SHA, 3, 256, b"\x00" * chunk)
    return {"telemetry": tel, "instruction": instr, "frame": frame}


def pydantic_modules(folder: Path) -> dict[str, types.ModuleType]:
    """``ota.messages``, ``ota.instructions``, ``ota.chunks`` as they were at PYDANTIC_REV,
    imported from ``folder`` while today's ``ota`` modules are set aside, then put back."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", PYDANTIC_REV, "ota"],
                         check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(folder, filter="data")
    today = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "ota"}
    sys.path.insert(0, str(folder))
    try:
        import importlib
        return {n: importlib.import_module(f"ota.{n}")
                for n in ("messages", "instructions", "chunks")}
    finally:
        sys.path.remove(str(folder))
        for k in [k for k in sys.modules if k.split(".")[0] == "ota"]:
            del sys.modules[k]
        sys.modules.update(today)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=50, help="telemetry windows per batch")
    ap.add_argument("--number", type=int, default=200, help="calls per timeit run")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    data = sample_bytes(args.batch)
    old = legacy_modules()
    folder = tempfile.TemporaryDirectory(prefix="bench-payloads-")
    pyd = pydantic_modules(Path(folder.name))
    impls: dict[str, dict[str, Callable[[Any], Any]]] = {
        "hand-written": {
            "telemetry": lambda batch: [old["messages"].Telemetry.from_bytes(b) for b in batch],
            "instruction": old["instructions"].Instruction.from_payload,
            "frame": lambda f: old["chunks"].decode_chunk_frame(f, 1024 * 1024),
        },
        "pydantic": {
            "telemetry": lambda batch: [pyd["messages"].Telemetry.from_bytes(b) for b in batch],
            "instruction": pyd["instructions"].Instruction.from_payload,
            "frame": lambda f: pyd["chunks"].decode_chunk_frame(f, 1024 * 1024),
        },
        "msgspec": {
            "telemetry": lambda batch: [Telemetry.from_bytes(b) for b in batch],
            "instruction": Instruction.from_payload,
            "frame": lambda f: decode_chunk_frame(f, 1024 * 1024),
        },
    }
    rows = {"telemetry": f"telemetry batch ({args.batch} windows)",
            "instruction": "instruction payload (256 chunk hashes)",
            "frame": "chunk frame (256 KiB)"}
    print("| message | bytes | " + " | ".join(f"{k} us" for k in impls) + " | "
          + " | ".join(f"{k} ratio" for k in list(impls)[1:]) + " |")
    print("|---|---:|" + "---:|" * (2 * len(impls) - 1))
    for key, label in rows.items():
        arg = data[key]
        size = sum(map(len, arg)) if isinstance(arg, list) else len(arg)
        times: dict[str, float] = {}
        for name, parsers in impls.items():
            fn = parsers[key]
            fn(arg)  # warm up (and fail loudly if an implementation refuses the sample)
            best = min(timeit.repeat(lambda fn=fn, arg=arg: fn(arg), number=args.number,
                                     repeat=args.repeat))
            times[name] = best / args.number * 1e6
        base = times["hand-written"]
        cells = [f"{t:.1f}" for t in times.values()]
        ratios = [f"{t / base:.2f}" for n, t in times.items() if n != "hand-written"]
        print(f"| {label} | {size} | " + " | ".join(cells + ratios) + " |")
    folder.cleanup()
    print(f"\nhand-written = ota at {LEGACY_REV[:12]}, pydantic = ota at {PYDANTIC_REV[:12]}; "
          f"python {sys.version.split()[0]}; "
          + ", ".join(_versions()))
    return 0


def _versions() -> list[str]:
    out = []
    for name in ("pydantic", "pydantic_core", "msgspec"):
        try:
            out.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    return out


if __name__ == "__main__":
    sys.exit(main())
