"""Multi-format bundles: one model as ONNX fp32, ONNX int8, TFLite and a Core ML package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from model_bundles.builder import build_bundle
from model_bundles.errors import BuildError
from model_bundles.keys import generate_keypair, key_id, load_public_key
from model_bundles.manifest import Tolerance
from model_bundles.verify import extract_verified, verify_bundle

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
from tiny_twin import TFLITE, write_int8_twin, write_mlpackage, write_onnx_twin  # noqa: E402

pytest.importorskip("ai_edge_litert.interpreter")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


def _trust(pub: Path) -> dict:  # type: ignore[type-arg]
    key = load_public_key(pub)
    return {key_id(key): key}


@pytest.fixture
def twins(tmp_path: Path) -> tuple[Path, Path]:
    fp32 = write_onnx_twin(tmp_path / "tiny.onnx")
    return fp32, write_int8_twin(fp32, tmp_path / "tiny-int8.onnx")


@pytest.fixture(scope="module")
def mlpackage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("coremltools")
    return write_mlpackage(tmp_path_factory.mktemp("coreml") / "tiny.mlpackage")


def _build(models: list[Path], key: Path, out: Path, **kw: object):  # type: ignore[no-untyped-def]
    return build_bundle(models, name="tiny", version="1.0.0", key_path=key, out=out, **kw)


def test_bundle_carries_onnx_fp32_int8_and_tflite_variants_each_gated_at_build(
    tmp_path: Path, keys, twins: tuple[Path, Path]
) -> None:
    key, pub = keys
    out = tmp_path / "tiny.efb"
    manifest = _build([*twins, TFLITE], key, out)
    by_id = {v.id: v for v in manifest.variants}
    assert list(by_id) == ["onnx-fp32", "onnx-int8", "tflite-fp32"]
    assert by_id["tflite-fp32"].format == "tflite"
    assert by_id["tflite-fp32"].file == "model-tflite-fp32.tflite"
    assert by_id["tflite-fp32"].delegates == ("litert", "litert-ref")
    assert by_id["onnx-int8"].precision == "int8"
    assert by_id["onnx-int8"].tolerance.atol > by_id["onnx-fp32"].tolerance.atol
    # the reference signature is the ONNX model's, the TFLite tensors map by position
    assert [s.name for s in manifest.inputs] == ["features"]
    assert [s.name for s in manifest.outputs] == ["scores"]
    verified = verify_bundle(out, _trust(pub))
    assert {f.path for f in verified.manifest.files} >= {"model.onnx", "model-onnx-int8.onnx",
                                                          "model-tflite-fp32.tflite"}
    assert (tmp_path / "tiny.efb").stat().st_size > 0


def test_variant_out_of_tolerance_refuses_the_build_naming_it_and_its_error(
    tmp_path: Path, keys
) -> None:
    key, _ = keys
    wrong = write_onnx_twin(tmp_path / "wrong.onnx", scale=-1.0)  # the reference differs
    out = tmp_path / "tiny.efb"
    with pytest.raises(BuildError, match=r"variant tflite-fp32 .*max abs error [0-9.e-]+"):
        _build([wrong, TFLITE], key, out)
    assert not out.exists() and not list(tmp_path.glob(".tiny.efb*"))


def test_per_variant_tolerance_applies_to_that_variant_only(
    tmp_path: Path, keys, twins: tuple[Path, Path]
) -> None:
    key, _ = keys
    strict = {"onnx-int8": Tolerance(atol=1e-9, rtol=0.0)}
    with pytest.raises(BuildError, match="variant onnx-int8 .*max abs error"):
        _build(list(twins), key, tmp_path / "a.efb", variant_tolerances=strict)
    loose = {"tflite-fp32": Tolerance(atol=1e-3, rtol=1e-3)}
    manifest = _build([twins[0], TFLITE], key, tmp_path / "b.efb", variant_tolerances=loose)
    assert manifest.variant("tflite-fp32").tolerance == Tolerance(atol=1e-3, rtol=1e-3)
    with pytest.raises(BuildError, match="tolerance given for variant 'onnx-int9'"):
        _build([twins[0]], key, tmp_path / "c.efb",
               variant_tolerances={"onnx-int9": Tolerance(atol=1.0, rtol=0.0)})


def test_tflite_whose_outputs_differ_from_the_reference_is_refused_by_position(
    tmp_path: Path, keys, sample_onnx: Path
) -> None:
    key, _ = keys
    with pytest.raises(BuildError, match="has 1 outputs, .* has 2"):
        _build([sample_onnx, TFLITE], key, tmp_path / "x.efb")


def test_tflite_first_is_refused_because_the_reference_must_be_onnx(
    tmp_path: Path, keys
) -> None:
    key, _ = keys
    with pytest.raises(BuildError, match="first model must be ONNX"):
        _build([TFLITE], key, tmp_path / "x.efb")


def test_tflite_without_a_litert_runtime_says_what_to_install(
    tmp_path: Path, keys, twins: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, _ = keys
    for mod in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
                "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(BuildError, match="pip install ai-edge-litert"):
        _build([twins[0], TFLITE], key, tmp_path / "x.efb")
    assert not (tmp_path / "x.efb").exists()


def _package(root: Path, manifest: object | None, spec: bytes | None = b"x") -> Path:
    pkg = root / "hand.mlpackage"
    (pkg / "Data" / "com.apple.CoreML").mkdir(parents=True)
    if manifest is not None:
        (pkg / "Manifest.json").write_text(
            manifest if isinstance(manifest, str) else json.dumps(manifest))
    if spec is not None:
        (pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(spec)
    return pkg


@pytest.mark.parametrize(("manifest", "spec", "error"), [
    (None, b"x", "no Manifest.json"),
    ("{not json", b"x", "Manifest.json is not a readable Core ML package manifest"),
    ({"fileFormatVersion": "1.0.0", "itemInfoEntries": {}, "rootModelIdentifier": "a"}, b"x",
     "not a readable Core ML package manifest"),
    ({"itemInfoEntries": {"a": {"path": "com.apple.CoreML/model.mlmodel"}},
      "rootModelIdentifier": "a"}, None, "root model spec Data/com.apple.CoreML/model.mlmodel"),
    ({"itemInfoEntries": {"a": {"path": "../../../etc/passwd"}},
      "rootModelIdentifier": "a"}, b"x", "does not exist"),
])
def test_malformed_mlpackage_is_refused_with_the_structural_reason(
    tmp_path: Path, keys, twins: tuple[Path, Path], manifest: object, spec: bytes | None,
    error: str,
) -> None:
    key, _ = keys
    pkg = _package(tmp_path, manifest, spec)
    with pytest.raises(BuildError, match=error):
        _build([twins[0], pkg], key, tmp_path / "x.efb")
    assert not (tmp_path / "x.efb").exists()


def test_mlpackage_files_are_packed_under_the_variant_folder_and_listed(
    tmp_path: Path, keys, twins: tuple[Path, Path], mlpackage: Path
) -> None:
    key, pub = keys
    out = tmp_path / "tiny.efb"
    manifest = _build([twins[0], TFLITE, mlpackage], key, out)
    v = manifest.variant("mlpackage-fp32")
    assert (v.format, v.file, v.delegates) == ("mlpackage", "model-mlpackage-fp32.mlpackage",
                                               ("coreml-native",))
    packed = sorted(f.path for f in manifest.files if f.path.startswith(v.file + "/"))
    expected = sorted(f"{v.file}/{p.relative_to(mlpackage).as_posix()}"
                      for p in mlpackage.rglob("*") if p.is_file())
    assert packed == expected and f"{v.file}/Manifest.json" in packed
    dest = tmp_path / "x"
    extract_verified(out, dest, _trust(pub))
    assert (dest / v.file / "Manifest.json").read_bytes() == (mlpackage / "Manifest.json").read_bytes()


def test_mlpackage_whose_input_names_differ_is_refused_when_coremltools_reads_it(
    tmp_path: Path, keys, mlpackage: Path, sample_onnx: Path
) -> None:
    key, _ = keys
    # sample_onnx takes "features" too but gives "scores" and "label": the spec differs
    with pytest.raises(BuildError, match="has 1 outputs"):
        _build([sample_onnx, mlpackage], key, tmp_path / "x.efb")
