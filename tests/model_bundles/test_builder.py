"""build_bundle on real ONNX models: golden outputs, dims, --golden, failures."""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import onnxruntime as ort
import pytest

from model_bundles.builder import build_bundle
from model_bundles.errors import BuildError, KeyFileError
from model_bundles.golden import read_golden
from model_bundles.manifest import Tolerance
from model_bundles.samples import write_sample_model
from model_bundles.verify import extract_verified, verify_bundle


def _build(model, publisher, out, **kw):
    kw.setdefault("name", "m")
    kw.setdefault("version", "1.0.0")
    return build_bundle([model], key_path=publisher.private_path, out=out, **kw)


def _golden_of(bundle, publisher, tmp_path):
    dest = tmp_path / "x"
    verified = extract_verified(bundle, dest, [publisher.public])
    return verified.manifest, read_golden(dest / "golden.npz", verified.manifest)


def test_sample_bundle_layout(sample_bundle, publisher, tmp_path):
    with tarfile.open(sample_bundle) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "manifest.json",
        "manifest.sig",
        "files/model.onnx",
        "files/golden.npz",
    ]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) == (0, 0, 0, 0o644, "", "")
        assert m.isreg()
    manifest, golden = _golden_of(sample_bundle, publisher, tmp_path)
    assert [s.name for s in manifest.inputs] == ["features"]
    assert manifest.inputs[0].shape == ("batch", 16)
    assert [(s.name, s.dtype) for s in manifest.outputs] == [
        ("scores", "float32"),
        ("label", "int64"),
    ]
    assert manifest.variants[0].id == "onnx-fp32" and manifest.variants[0].format == "onnx"
    assert manifest.golden.dims == {"batch": 1} and manifest.golden.count == 1
    # golden outputs are ONNX Runtime CPU's results on the golden inputs
    sess = ort.InferenceSession(
        str(tmp_path / "x" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scores, label = sess.run(None, {"features": golden.inputs["features"]})
    np.testing.assert_array_equal(scores, golden.outputs["scores"])
    np.testing.assert_array_equal(label, golden.outputs["label"])


def test_digits_bundle(digits_onnx, digits_samples, publisher, tmp_path):
    manifest = _build(digits_onnx, publisher, tmp_path / "d.efb", name="digits", task="classifier")
    assert manifest.inputs[0].shape == (None, 64)
    assert {o.name for o in manifest.outputs} == {"label", "probabilities"}
    assert verify_bundle(tmp_path / "d.efb", [publisher.public]).manifest == manifest
    # real inputs through --golden (float64 data is cast to the model's float32)
    np.savez(tmp_path / "in.npz", X=digits_samples[:8].astype(np.float64))
    manifest = _build(
        digits_onnx, publisher, tmp_path / "d2.efb", name="digits", golden=tmp_path / "in.npz"
    )
    assert manifest.golden.count == 8 and manifest.golden.dims == {"X:0": 8}
    _, golden = _golden_of(tmp_path / "d2.efb", publisher, tmp_path)
    np.testing.assert_array_equal(golden.inputs["X"], digits_samples[:8])
    assert golden.outputs["label"].shape == (8,)


def test_dim_is_honoured(sample_onnx, publisher, tmp_path):
    manifest = _build(sample_onnx, publisher, tmp_path / "b.efb", dims={"batch": 4})
    assert manifest.golden.dims == {"batch": 4} and manifest.golden.count == 4
    _, golden = _golden_of(tmp_path / "b.efb", publisher, tmp_path)
    assert golden.inputs["features"].shape == (4, 16)
    assert golden.outputs["label"].shape == (4,)


def test_dim_for_unnamed_dimension(digits_onnx, publisher, tmp_path):
    manifest = _build(digits_onnx, publisher, tmp_path / "d.efb", dims={"X:0": 3})
    assert manifest.golden.count == 3


def test_unknown_dim_refused(sample_onnx, publisher, tmp_path):
    with pytest.raises(BuildError, match="batch"):
        _build(sample_onnx, publisher, tmp_path / "b.efb", dims={"nbatch": 2})
    assert not (tmp_path / "b.efb").exists()


def test_bad_golden_shape_names_input_and_fix(sample_onnx, publisher, tmp_path):
    np.savez(tmp_path / "bad.npz", features=np.zeros((2, 3), np.float32))
    with pytest.raises(BuildError) as info:
        _build(sample_onnx, publisher, tmp_path / "b.efb", golden=tmp_path / "bad.npz")
    message = str(info.value)
    assert "\n" not in message
    assert "'features'" in message and "float32 [batch, 16]" in message and "(2, 3)" in message
    assert "fix:" in message and "[batch, 16]" in message
    assert list(tmp_path.glob("*.efb")) == [] and list(tmp_path.glob(".*")) == []


def test_bad_golden_rank_and_names(sample_onnx, publisher, tmp_path):
    np.savez(tmp_path / "rank.npz", features=np.zeros(16, np.float32))
    with pytest.raises(BuildError, match="rank"):
        _build(sample_onnx, publisher, tmp_path / "b.efb", golden=tmp_path / "rank.npz")
    np.savez(tmp_path / "name.npz", wrong=np.zeros((1, 16), np.float32))
    with pytest.raises(BuildError, match="no array for input 'features'.*--golden"):
        _build(sample_onnx, publisher, tmp_path / "b.efb", golden=tmp_path / "name.npz")
    np.savez(tmp_path / "dtype.npz", features=np.zeros((1, 16), np.complex64))
    with pytest.raises(BuildError, match="dtype"):
        _build(sample_onnx, publisher, tmp_path / "b.efb", golden=tmp_path / "dtype.npz")


def test_model_failing_on_inputs_names_input_and_fix(tmp_path, publisher):
    """A model whose graph needs batch 4 (Reshape to [2, 2, 4]) fails on batch 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "needs_batch_4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 4])],
        initializer=[numpy_helper.from_array(np.array([2, 2, 4], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "r.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(BuildError) as info:
        _build(path, publisher, tmp_path / "r.efb")
    message = str(info.value)
    assert "'x'" in message and "float32 [batch, 4]" in message and "--dim batch=" in message
    assert "--golden" in message
    manifest = _build(path, publisher, tmp_path / "r.efb", dims={"batch": 4})
    assert manifest.golden.count == 4


def test_zipmap_model_refused_with_hint(tmp_path, publisher):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    onx = to_onnx(LogisticRegression().fit(x, y), x[:1], target_opset=17)
    path = tmp_path / "zip.onnx"
    path.write_bytes(onx.SerializeToString())
    with pytest.raises(BuildError, match="zipmap"):
        _build(path, publisher, tmp_path / "z.efb")


def test_not_an_onnx_file(tmp_path, publisher):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(BuildError):
        _build(path, publisher, tmp_path / "j.efb")


def test_bad_name_version_task_key(sample_onnx, publisher, tmp_path):
    with pytest.raises(BuildError, match="name"):
        _build(sample_onnx, publisher, tmp_path / "x.efb", name="Bad")
    with pytest.raises(BuildError, match="version"):
        _build(sample_onnx, publisher, tmp_path / "x.efb", version="1.0")
    with pytest.raises(BuildError, match="task"):
        _build(sample_onnx, publisher, tmp_path / "x.efb", task="detector")
    with pytest.raises(KeyFileError):
        build_bundle(
            [sample_onnx],
            name="m",
            version="1.0.0",
            key_path=publisher.public_path,
            out=tmp_path / "x.efb",
        )


def test_two_models_become_two_variants(sample_onnx, publisher, tmp_path):
    # same weights in a second file: a variant that disagrees with the reference is refused
    other = write_sample_model(tmp_path / "other.onnx", seed=0)
    manifest = build_bundle(
        [sample_onnx, other],
        name="m",
        version="1.0.0",
        key_path=publisher.private_path,
        out=tmp_path / "two.efb",
        tolerance=Tolerance(atol=1e-3, rtol=1e-2),
    )
    assert [v.id for v in manifest.variants] == ["onnx-fp32", "onnx-fp32-2"]
    assert [f.path for f in manifest.files] == [
        "model.onnx",
        "model-onnx-fp32-2.onnx",
        "golden.npz",
    ]
    assert manifest.variants[1].tolerance == Tolerance(atol=1e-3, rtol=1e-2)
    assert verify_bundle(tmp_path / "two.efb", [publisher.public]).manifest == manifest


def test_models_with_different_signatures_refused(sample_onnx, digits_onnx, publisher, tmp_path):
    with pytest.raises(BuildError, match="signature"):
        build_bundle(
            [sample_onnx, digits_onnx],
            name="m",
            version="1.0.0",
            key_path=publisher.private_path,
            out=tmp_path / "x.efb",
        )


def test_build_is_deterministic(sample_onnx, publisher, tmp_path):
    kw = {"created_at": "2026-11-29T02:50:00Z"}
    _build(sample_onnx, publisher, tmp_path / "a.efb", **kw)
    _build(sample_onnx, publisher, tmp_path / "b.efb", **kw)
    a, b = (tmp_path / "a.efb").read_bytes(), (tmp_path / "b.efb").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


def test_build_overwrites_atomically(sample_onnx, publisher, tmp_path):
    out = tmp_path / "m.efb"
    out.write_bytes(b"old")
    _build(sample_onnx, publisher, out)
    assert verify_bundle(out, [publisher.public]).manifest.ref == "m@1.0.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.efb"]
