"""Bytes on the wire for an update N -> N+1: full bundle, zstd of it, a byte-level binary
diff of the two model files, and our tensor-aware delta.

    python -m bench.delta [--features 256] [--hidden 1024] [--classes 10] [--zstd-level 19]

Models are generated here (a float MLP ``features-hidden-hidden-classes`` with seeded
weights; no downloads), built into signed bundles with golden vectors, for three updates:

- head: a fine-tune of the classifier head only (last MatMul and Add moved);
- retrain: every weight new (another seed);
- requant: the same float model re-quantised (ONNX Runtime dynamic int8, per-tensor -> per-
  channel), so every int8 weight and scale changes.

Columns: the full ``.efb``; ``zstd -<level>`` of it (the zstd CLI, or the ``zstandard``
module when installed); ``xdelta3 -9`` and ``bsdiff`` of the two model files (Debian's
``xdelta3``/``bsdiff``; the bundle's other files and headers are not counted for them, so
they are a lower bound for a byte-level diff) and ``xdelta3 -9`` of the two bundles (what a
byte-level diff would really send); our delta (``model-bundle delta``: the whole
``.efd``, signature and manifest included), or "declined" when the builder refuses it
(over 90% of the bundle). Ratios are to the full bundle.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_bundles import keys
from model_bundles.builder import build_bundle
from model_bundles.delta_build import DeltaDeclined, build_delta


def mlp(seed: int, features: int, hidden: int, classes: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    dims = [features, hidden, hidden, classes]
    inits, nodes, x = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:], strict=False), start=1):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        x = f"a{i}"
        if i < len(dims) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Softmax", [x], ["scores"], axis=-1))
    graph = helper.make_graph(
        nodes, "bench_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits)
    graph.node[0].input[0] = "features"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def head_tuned(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    head = {out.graph.initializer[-2].name, out.graph.initializer[-1].name}
    for init in out.graph.initializer:
        if init.name in head:
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(
                (w + rng.standard_normal(w.shape) * 0.01).astype(np.float32), init.name))
    return out


def quantized(model_path: Path, out: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(model_path), str(out), weight_type=QuantType.QInt8,
                     per_channel=per_channel)
    return out


def zstd_size(path: Path, level: int) -> int:
    try:
        import zstandard  # type: ignore[import-not-found]

        return len(zstandard.ZstdCompressor(level=level).compress(path.read_bytes()))
    except ImportError:
        out = subprocess.run(["zstd", f"-{level}", "-q", "-c", str(path)], check=True,
                             capture_output=True).stdout
        return len(out)


def diff_size(tool: str, old: Path, new: Path, work: Path) -> int | None:
    if shutil.which(tool) is None:
        return None
    patch = work / f"{new.stem}.{tool}"
    if tool == "xdelta3":
        cmd = ["xdelta3", "-e", "-9", "-f", "-s", str(old), str(new), str(patch)]
    else:
        cmd = ["bsdiff", str(old), str(new), str(patch)]
    subprocess.run(cmd, check=True, capture_output=True)
    return patch.stat().st_size


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--zstd-level", type=int, default=19)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-delta-") as tmp:
        work = Path(tmp)
        key_path, _ = keys.generate_keypair(work / "keys")
        key = keys.load_private_key(key_path)
        shape = (args.features, args.hidden, args.classes)
        base = mlp(0, *shape)
        models = {"v1": base, "head": head_tuned(base, 1), "retrain": mlp(1, *shape)}
        for name, model in models.items():
            onnx.save_model(model, str(work / f"{name}.onnx"))
        quantized(work / "v1.onnx", work / "q-tensor.onnx", per_channel=False)
        quantized(work / "v1.onnx", work / "q-channel.onnx", per_channel=True)
        pairs = {"head": ("v1", "head"), "retrain": ("v1", "retrain"),
                 "requant": ("q-tensor", "q-channel")}

        def bundle(name: str, version: str) -> Path:
            out = work / f"{name}.efb"
            if not out.exists():
                build_bundle([work / f"{name}.onnx"], name="bench", version=version,
                             key_path=key_path, out=out, task="classifier")
            return out

        print(f"MLP {args.features}-{args.hidden}-{args.hidden}-{args.classes} float32 "
              f"({(work / 'v1.onnx').stat().st_size / 2**20:.2f} MiB ONNX); bytes (ratio to "
              "the full bundle)\n")
        print(f"| update | full bundle | zstd -{args.zstd_level} bundle | xdelta3 -9 model "
              "| bsdiff model | xdelta3 -9 bundle | our delta |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for update, (old, new) in pairs.items():
            old_b, new_b = bundle(old, "1.0.0"), bundle(new, "1.1.0")
            full = new_b.stat().st_size
            cells = [f"{full:,} (1.000)"]
            sizes = [zstd_size(new_b, args.zstd_level),
                     diff_size("xdelta3", work / f"{old}.onnx", work / f"{new}.onnx", work),
                     diff_size("bsdiff", work / f"{old}.onnx", work / f"{new}.onnx", work),
                     diff_size("xdelta3", old_b, new_b, work)]
            cells += ["n/a" if s is None else f"{s:,} ({s / full:.3f})" for s in sizes]
            try:
                d = build_delta(old_b, new_b, key)
                cells.append(f"{len(d.data):,} ({d.ratio:.3f})")
            except DeltaDeclined:
                probe = build_delta(old_b, new_b, key, max_ratio=1.0e9 / full)
                cells.append(f"declined ({len(probe.data):,}: {probe.ratio:.3f})")
            print(f"| {update} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
