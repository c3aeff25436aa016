"""Parse + validate cost of the agent's hot MQTT messages (``python -m bench.payloads``).

Three implementations of the same checks, in one run, on the same bytes:

- ``hand-written``: protocol 1's first parsers (json.loads + the field getters of
  ``ota/payload.py``), loaded from git at ``LEGACY_REV``, the last commit before
  docs/adr/0003-typed-payload-models.md;
- ``pydantic``: today's ``ota`` (pydantic v2 dataclasses, ``ota.model``);
- ``msgspec``: the same declarations as ``msgspec.Struct``s with ``Meta`` constraints
  (written here only for this measurement; skipped with a note when msgspec is absent).

Messages: a telemetry batch (``--batch`` windows, what the server ingests per device
outbox flush), a signed instruction's payload (a 64 MiB bundle: 256 chunk hashes) and a
chunk frame (256 KiB of data). Each row is the best of ``--repeat`` timeit runs, in
microseconds per message, with the ratio to the hand-written parser.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ota.chunks import decode_chunk_frame, encode_chunk_frame
from ota.instructions import BundleRef, Instruction
from ota.messages import LatencySummary, Telemetry

LEGACY_REV = "511610b1e2b93e7c0200cf63093ad155a55ad6f6"
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


def msgspec_parsers() -> dict[str, Callable[[Any], Any]] | None:
    """The msgspec side, or ``None`` when msgspec is not installed."""
    try:
        from bench import payloads_msgspec
    except ImportError:
        return None
    return payloads_msgspec.PARSERS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=50, help="telemetry windows per batch")
    ap.add_argument("--number", type=int, default=200, help="calls per timeit run")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    data = sample_bytes(args.batch)
    old = legacy_modules()
    impls: dict[str, dict[str, Callable[[Any], Any]] | None] = {
        "hand-written": {
            "telemetry": lambda batch: [old["messages"].Telemetry.from_bytes(b) for b in batch],
            "instruction": old["instructions"].Instruction.from_payload,
            "frame": lambda f: old["chunks"].decode_chunk_frame(f, 1024 * 1024),
        },
        "pydantic": {
            "telemetry": lambda batch: [Telemetry.from_bytes(b) for b in batch],
            "instruction": Instruction.from_payload,
            "frame": lambda f: decode_chunk_frame(f, 1024 * 1024),
        },
        "msgspec": msgspec_parsers(),
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
        times: dict[str, float | None] = {}
        for name, parsers in impls.items():
            if parsers is None:
                times[name] = None
                continue
            fn = parsers[key]
            fn(arg)  # warm up (and fail loudly if an implementation refuses the sample)
            best = min(timeit.repeat(lambda fn=fn, arg=arg: fn(arg), number=args.number,
                                     repeat=args.repeat))
            times[name] = best / args.number * 1e6
        base = times["hand-written"] or 1.0
        cells = [f"{t:.1f}" if t is not None else "n/a" for t in times.values()]
        ratios = [f"{t / base:.2f}" if t is not None else "n/a"
                  for n, t in times.items() if n != "hand-written"]
        print(f"| {label} | {size} | " + " | ".join(cells + ratios) + " |")
    if impls["msgspec"] is None:
        print("\nmsgspec is not installed: pip install msgspec to add its column")
    print(f"\nhand-written = ota at {LEGACY_REV[:12]}; python {sys.version.split()[0]}; "
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
