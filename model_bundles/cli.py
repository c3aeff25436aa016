"""``model-bundle``: keygen, build, inspect, verify, quantize, delta.

Each subcommand is a ``cmd_<name>(args) -> int`` in :data:`dispatch`. Another package adds
a subcommand without this one importing it::

    parser, subparsers = build_parser_with_subparsers()
    p = subparsers.add_parser("publish", help="...")
    p.add_argument(...)
    p.set_defaults(func=cmd_publish)          # or: dispatch["publish"] = cmd_publish
    return main(argv, parser=parser)

or with :func:`register_subcommand` before ``main`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BundleError
from .progress import Steps, wanted

if TYPE_CHECKING:
    from .reader import BundleInfo

PROG = "model-bundle"

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


def _err(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


# --------------------------------------------------------------------------- commands


def cmd_keygen(args: argparse.Namespace) -> int:
    from .keys import generate_keypair, key_id, load_public_key

    priv, pub = generate_keypair(Path(args.out))
    kid = key_id(load_public_key(pub))
    print(f"wrote {priv} (private, mode 0600) and {pub}")
    print(f"key id {kid}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .builder import build_bundle

    with Steps(f"building {args.name}@{args.version}", enabled=wanted(args.json)) as steps:
        manifest = build_bundle(
            [Path(m) for m in args.models],
            name=args.name,
            version=args.version,
            key_path=Path(args.key),
            out=Path(args.out),
            golden=Path(args.golden) if args.golden else None,
            dims=dict(args.dim or []),
            task=args.task,
            on_step=steps.step,
        )
    size = Path(args.out).stat().st_size
    if args.json:
        print(json.dumps({"out": str(args.out), "ref": manifest.ref, "bytes": size,
                          "files": len(manifest.files),
                          "variants": [v.id for v in manifest.variants],
                          "publisher_key_id": manifest.publisher_key_id}, indent=2))
        return 0
    print(
        f"built {args.out}: {manifest.ref} ({len(manifest.files)} files, {_fmt_size(size)}) "
        f"signed by {manifest.publisher_key_id[:16]}"
    )
    return 0


def _print_inspect(info: BundleInfo) -> None:
    m = info.manifest
    out = [
        f"bundle:   {m.ref}",
        f"name:     {m.name}",
        f"version:  {m.version}",
        f"task:     {m.task}",
        f"created:  {m.created_at}",
        f"signer:   {info.signer_key_id or '(malformed signature envelope)'} (not verified; use 'verify --trust')",
        f"publisher key in manifest: {m.publisher_key_id}",
        f"size:     {info.size} bytes ({_fmt_size(info.size)})",
        f"sha256:   {info.sha256}",
        "files:",
    ]
    width = max(len(f.path) for f in m.files)
    for f in m.files:
        out.append(f"  {f.path:<{width}}  {f.size:>12} bytes  sha256 {f.sha256[:16]}")
    out.append("variants:")
    for v in m.variants:
        out.append(
            f"  {v.id}: {v.file} format={v.format} precision={v.precision} "
            f"delegates={','.join(v.delegates) or '-'} atol={v.tolerance.atol:g} rtol={v.tolerance.rtol:g}"
        )
    out.append("inputs:")
    for s in m.inputs:
        out.append(f"  {s.name}: {s.describe()}")
    out.append("outputs:")
    for s in m.outputs:
        out.append(f"  {s.name}: {s.describe()}")
    if m.golden is not None:
        dims = ", ".join(f"{k}={v}" for k, v in sorted(m.golden.dims.items())) or "-"
        out.append(f"golden:   {m.golden.file} count={m.golden.count} dims {dims}")
    else:
        out.append("golden:   none")
    if m.latency_budget_ms is not None:
        out.append(f"latency budget: {m.latency_budget_ms} ms")
    print("\n".join(out))


def cmd_inspect(args: argparse.Namespace) -> int:
    from .delta_cli import inspect_delta, is_delta
    from .reader import inspect_bundle

    if is_delta(Path(args.file)):
        return inspect_delta(Path(args.file), args.json)
    info = inspect_bundle(Path(args.file))
    if args.json:
        doc = {
            "manifest": info.manifest.to_dict(),
            "signer": info.signer_key_id,
            "signature_verified": False,
            "size": info.size,
            "sha256": info.sha256,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        _print_inspect(info)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .delta_cli import is_delta, verify_delta
    from .keys import load_public_key
    from .verify import verify_bundle

    if is_delta(Path(args.file)):
        return verify_delta(Path(args.file), [Path(p) for p in args.trust],
                            Path(args.base) if args.base else None)
    if args.base:
        _err("--base is for a delta file (.efd)")
        return 2
    keys = [load_public_key(Path(p)) for p in args.trust]  # KeyFileError -> usage error
    try:
        verified = verify_bundle(Path(args.file), keys)
    except BundleError as exc:
        print(f"FAIL: {exc}")
        return 1
    m = verified.manifest
    print(f"OK {m.name}@{m.version} signed by {verified.key_id[:16]}")
    return 0


dispatch: dict[str, Handler] = {
    "keygen": cmd_keygen,
    "build": cmd_build,
    "inspect": cmd_inspect,
    "verify": cmd_verify,
}

# (name, help, configure, handler) added by other packages through register_subcommand
_registered: list[tuple[str, str, Configure, Handler]] = []


def register_subcommand(name: str, configure: Configure, handler: Handler, help: str = "") -> None:
    """Add a subcommand to every parser built from now on (and to :data:`dispatch`)."""
    _registered[:] = [r for r in _registered if r[0] != name]
    _registered.append((name, help, configure, handler))
    dispatch[name] = handler


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import QuantizeRefusedError, quantize_model

    try:
        with Steps(f"quantising {Path(args.model).name}", enabled=wanted(args.json)) as steps:
            report = quantize_model(
                Path(args.model), Path(args.out), mode=args.mode,
                calibration=Path(args.calibration) if args.calibration else None,
                min_agreement=args.min_agreement, force=args.force, on_step=steps.step,
            )
    except QuantizeRefusedError as exc:
        r = exc.report
        _err(f"{exc}; size ratio {r.size_ratio:.3f}, latency ratio {r.latency_ratio:.3f}; "
             f"nothing written to {args.out} (lower --min-agreement or pass --force to "
             "write it anyway)")
        return 1
    if args.json:
        print(json.dumps({"out": str(args.out), **report.to_dict()}, indent=2))
        return 0
    state = "FORCED below threshold" if report.forced else "accepted"
    print(f"wrote {args.out} ({state}): {report.verdict}")
    print(f"size ratio {report.size_ratio:.3f} ({_fmt_size(report.int8_bytes)} / "
          f"{_fmt_size(report.fp32_bytes)}), latency ratio {report.latency_ratio:.3f} "
          f"({report.int8_ms:.3f} ms / {report.fp32_ms:.3f} ms per sample)"
          + ("" if report.preprocessed else "; quant_pre_process failed, quantised as is"))
    return 0


dispatch["quantize"] = cmd_quantize


def cmd_delta(args: argparse.Namespace) -> int:
    from .delta_cli import cmd_delta as run

    return run(args)


dispatch["delta"] = cmd_delta


# --------------------------------------------------------------------------- parser


def _dim(text: str) -> tuple[str, int]:
    """``NAME=VALUE`` or ``INPUT:AXIS=VALUE``, split at the last ``=``; the builder resolves
    the key (``model_bundles.dynamic_dims``: the axis follows the last ``:``)."""
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE or INPUT:AXIS=VALUE, got {text!r}")
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE must be an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE must be a positive integer")
    return name, number


def build_parser_with_subparsers() -> tuple[
    argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]
]:
    """The parser and its subparsers object (to add more subcommands)."""
    from .manifest import TASKS

    parser = argparse.ArgumentParser(
        prog=PROG, description="Build, inspect and verify signed model bundles (.efb)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("keygen", help="create publisher.key (0600) and publisher.pub")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the key pair")

    p = sub.add_parser("build", help="build and sign a bundle from an ONNX model")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="ONNX model, then other artefacts of it (.onnx, .tflite, .mlpackage)")
    p.add_argument("--name", required=True, help="bundle name ([a-z0-9][a-z0-9._-]{0,63})")
    p.add_argument("--version", required=True, metavar="X.Y.Z", help="bundle version")
    p.add_argument("--key", required=True, metavar="KEY", help="publisher private key (PEM)")
    p.add_argument("--out", required=True, metavar="FILE", help="bundle file to write (.efb)")
    p.add_argument("--golden", metavar="NPZ", help="golden inputs: one array per input name")
    p.add_argument(
        "--dim",
        action="append",
        type=_dim,
        metavar="NAME=VALUE",
        help="value of a dynamic dimension for generated golden inputs (repeatable): NAME "
        "for a named one, INPUT:AXIS for an unnamed one (declared -1 or without a size; "
        "the axis follows the last ':', e.g. x:0=8)",
    )
    p.add_argument("--task", choices=TASKS, default=None, help="model task (default generic)")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON (and no progress display)")

    p = sub.add_parser("inspect", help="show a bundle's manifest (signature not verified)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("verify", help="verify signature, member set and hashes")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--trust",
        action="append",
        required=True,
        metavar="PUB",
        help="trusted public key (repeatable)",
    )
    p.add_argument("--base", metavar="BASE",
                   help="for a delta (.efd): the base bundle; also check that the delta "
                   "rebuilds its target exactly")

    p = sub.add_parser("quantize", help="int8-quantise an ONNX model; refuse it if it disagrees")
    p.add_argument("model", metavar="MODEL", help="float ONNX model")
    p.add_argument("--out", required=True, metavar="FILE", help="quantised model to write")
    p.add_argument("--mode", choices=("dynamic", "static"), default="dynamic",
                   help="dynamic (int8 weights) or static (QDQ, calibrated activations)")
    p.add_argument("--calibration", metavar="NPZ",
                   help="calibration/evaluation inputs: one array per input name "
                   "(default: 64 generated samples)")
    p.add_argument("--min-agreement", type=float, default=None, metavar="X",
                   help="minimum top-1 agreement (classifiers, default 0.98) or cosine "
                   "similarity (others, default 0.99)")
    p.add_argument("--force", action="store_true", help="write the model even below threshold")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON (and no progress display)")

    from .delta_cli import configure_delta

    configure_delta(sub.add_parser(
        "delta", help="build a signed delta that rebuilds bundle N+1 from bundle N"))

    for name, help_text, configure, handler in _registered:
        sp = sub.add_parser(name, help=help_text)
        configure(sp)
        sp.set_defaults(func=handler)
    return parser, sub


def build_parser() -> argparse.ArgumentParser:
    return build_parser_with_subparsers()[0]


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 refused/failed, 2 usage)."""
    parser = parser or build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse usage errors and --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler: Handler | None = getattr(args, "func", None) or dispatch.get(args.command)
    if handler is None:
        _err(f"unknown command {args.command!r}")
        return 2
    try:
        return int(handler(args))
    except BundleError as exc:
        _err(str(exc))
        return 1
    except OSError as exc:  # a missing or unreadable file: "PATH: No such file or directory"
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _err(f"{where}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
