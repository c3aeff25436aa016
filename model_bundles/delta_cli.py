"""``model-bundle delta``, and ``inspect``/``verify`` of a delta file (``.efd``).

``cli.py`` sends ``inspect`` and ``verify`` here when the file starts with the delta magic.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from .delta_format import MAGIC, Delta, read_unverified
from .errors import BundleError

__all__ = ["cmd_delta", "configure_delta", "inspect_delta", "is_delta", "verify_delta"]


def is_delta(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False  # the bundle command reports the missing file


def configure_delta(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="the bundle devices hold (.efb, version N)")
    p.add_argument("target", metavar="TARGET", help="the new bundle (.efb, version N+1)")
    p.add_argument("--key", required=True, metavar="KEY",
                   help="private key that signs the delta (publisher or fleet key, PEM)")
    p.add_argument("--out", required=True, metavar="FILE", help="delta file to write (.efd)")
    p.add_argument("--max-ratio", type=float, default=None, metavar="X",
                   help="largest delta offered, as a share of the target's size (default 0.9)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_delta(args: argparse.Namespace) -> int:
    from .atomic import atomic_write_bytes
    from .delta_build import DEFAULT_MAX_RATIO, build_delta
    from .keys import load_private_key

    key = load_private_key(Path(args.key))
    ratio = DEFAULT_MAX_RATIO if args.max_ratio is None else args.max_ratio
    built = build_delta(Path(args.base), Path(args.target), key, max_ratio=ratio)
    atomic_write_bytes(Path(args.out), built.data)
    d = built.delta
    if args.json:
        print(json.dumps({"out": str(args.out), "size": len(built.data),
                          "full_size": built.full_size, "ratio": round(built.ratio, 4),
                          **d.to_dict()}, indent=2, sort_keys=True))
    else:
        print(f"wrote {args.out}: {d.name} {d.base_version} -> {d.target_version}, "
              f"{len(built.data)} bytes ({built.ratio:.1%} of the {built.full_size}-byte bundle)")
    return 0


def _summary_lines(d: Delta) -> list[str]:
    out = [f"delta {d.name} {d.base_version} -> {d.target_version}",
           f"base sha256:   {d.base_sha256}",
           f"target sha256: {d.target_sha256} ({d.target_size} bytes)",
           f"payload: {d.payload_size} bytes, {len(d.segments)} segments"]
    for f in d.files:
        line = f"  {f['path']}: {f['how']}"
        if f["how"] == "tensors":
            line += f" ({len(f['changed_tensors'])} changed, {f['kept_tensors']} kept)"
        out.append(line)
        out += [f"    changed {t['name']} {t['size']} bytes {t['sha256'][:16]}"
                for t in f["changed_tensors"]]
    return out


def inspect_delta(path: Path, as_json: bool) -> int:
    """Show a delta's description; its signature is NOT verified."""
    with open(path, "rb") as fh:
        delta, signer = read_unverified(fh)
    if as_json:
        print(json.dumps({"delta": delta.to_dict(), "signer": signer,
                          "signature_verified": False, "size": path.stat().st_size},
                         indent=2, sort_keys=True))
    else:
        print("\n".join([*_summary_lines(delta), f"signer: {signer} (not verified)"]))
    return 0


def verify_delta(path: Path, trust: list[Path], base: Path | None) -> int:
    """Signature (and, given the base bundle, that it rebuilds its target exactly)."""
    from .delta_apply import apply_delta_stream
    from .delta_build import base_opener
    from .delta_format import read_header
    from .keys import load_public_key

    keys = [load_public_key(p) for p in trust]
    data = path.read_bytes()
    try:
        if base is None:
            header = read_header(io.BytesIO(data), len(data), keys)
        else:
            opener, base_sha = base_opener(base)
            header = apply_delta_stream(io.BytesIO(data), len(data), opener,
                                        _Discard(),  # type: ignore[arg-type]  # write() only
                                        keys, base_sha256=base_sha)
    except BundleError as exc:
        print(f"FAIL: {exc}")
        return 1
    d = header.delta
    rebuilt = " and rebuilds its target exactly" if base is not None else ""
    print(f"OK delta {d.name} {d.base_version} -> {d.target_version} signed by "
          f"{header.key_id[:16]}{rebuilt}")
    return 0


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        return len(b)
