"""Models that declare dynamic dimensions as ``dim_value: -1`` (Paddle2ONNX, some TensorFlow
exporters), 0 on an output, or with neither value nor name: they build, ``--dim
INPUT:AXIS=N`` sets such a dimension, the manifest records it as ``null``, inspect shows it
as dynamic and verify passes. Bad ``--dim`` keys are refused with the reason, nothing
written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from model_bundles.builder import build_bundle
from model_bundles.cli import main
from model_bundles.errors import BuildError, ManifestError
from model_bundles.golden import read_golden
from model_bundles.manifest import TensorSpec
from model_bundles.onnx_spec import read_onnx_io
from model_bundles.verify import extract_verified

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))
from unnamed_dims_model import ODD_INPUT, write_unnamed_dims_model  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_unnamed_dims_model(tmp_path_factory.mktemp("m") / "unnamed.onnx")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _build_argv(model: Path, publisher, out: Path, *dims: str) -> list[str]:
    argv = ["build", str(model), "--name", "unnamed", "--version", "1.0.0",
            "--key", str(publisher.private_path), "--out", str(out)]
    for d in dims:
        argv += ["--dim", d]
    return argv


def test_minus_one_zero_on_output_and_unset_dims_are_read_as_dynamic(model: Path) -> None:
    inputs, outputs = read_onnx_io(model)
    assert [(s.name, s.shape) for s in inputs] == [
        ("x", (None, 4)), (ODD_INPUT, (2, None, 3)), ("ids", ("batch", None))]
    assert [(s.name, s.shape) for s in outputs] == [
        ("relu", (None, 4)), ("neg", (None, None, 3)), ("ids_out", (None, None))]


def test_minus_one_model_builds_with_dims_by_input_and_axis_end_to_end(
    capsys, model: Path, publisher, tmp_path: Path
) -> None:
    bundle = tmp_path / "u.efb"
    code, out, err = run(capsys, *_build_argv(
        model, publisher, bundle, "x:0=3", f"{ODD_INPUT}:1=5", "batch=2", "ids:1=4"))
    assert code == 0, err
    assert "unnamed@1.0.0" in out

    code, out, err = run(capsys, "inspect", str(bundle))
    assert code == 0, err
    for line in ("  x: float32 [?, 4]", f"  {ODD_INPUT}: float32 [2, ?, 3]",
                 "  ids: int64 [batch, ?]", "  neg: float32 [?, ?, 3]",
                 f"dims batch=2, ids:1=4, {ODD_INPUT}:1=5, x:0=3"):
        assert line in out
    code, out, err = run(capsys, "inspect", str(bundle), "--json")
    assert code == 0, err
    doc = json.loads(out)["manifest"]
    assert [i["shape"] for i in doc["inputs"]] == [[None, 4], [2, None, 3], ["batch", None]]
    assert [o["shape"] for o in doc["outputs"]] == [[None, 4], [None, None, 3], [None, None]]
    assert doc["golden"] == {"file": "golden.npz", "count": 3,
                             "dims": {"x:0": 3, f"{ODD_INPUT}:1": 5, "batch": 2, "ids:1": 4}}

    code, out, err = run(capsys, "verify", str(bundle), "--trust", str(publisher.public_path))
    assert (code, out.startswith("OK unnamed@1.0.0")) == (0, True), err
    verified = extract_verified(bundle, tmp_path / "x", [publisher.public])
    golden = read_golden(tmp_path / "x" / "golden.npz", verified.manifest)
    assert {k: v.shape for k, v in golden.inputs.items()} == {
        "x": (3, 4), ODD_INPUT: (2, 5, 3), "ids": (2, 4)}
    np.testing.assert_array_equal(golden.outputs["relu"], np.maximum(golden.inputs["x"], 0))
    np.testing.assert_array_equal(golden.outputs["neg"], -golden.inputs[ODD_INPUT])
    np.testing.assert_array_equal(golden.outputs["ids_out"], golden.inputs["ids"])


def test_dynamic_dims_default_to_one_without_dim(model: Path, publisher, tmp_path: Path) -> None:
    manifest = build_bundle([model], name="unnamed", version="1.0.0",
                            key_path=publisher.private_path, out=tmp_path / "u.efb")
    assert manifest.golden is not None
    assert manifest.golden.dims == {"x:0": 1, f"{ODD_INPUT}:1": 1, "batch": 1, "ids:1": 1}


def test_axis_follows_the_last_colon_and_leading_zeros_name_the_same_axis(
    model: Path, publisher, tmp_path: Path
) -> None:
    manifest = build_bundle([model], name="unnamed", version="1.0.0",
                            key_path=publisher.private_path, out=tmp_path / "u.efb",
                            dims={f"{ODD_INPUT}:01": 6})
    assert manifest.golden is not None and manifest.golden.dims[f"{ODD_INPUT}:1"] == 6


@pytest.mark.parametrize(("dims", "reason"), [
    ({"y:0": 2}, "the model has no input 'y' (inputs: 'x', 'input:0/x y', 'ids'"),
    ({"x:2": 2}, "input 'x' has rank 2 (axes 0..1, shape [?, 4]); axis 2 is out of range"),
    ({"x:1": 2}, "axis 1 of input 'x' is fixed at 4, not dynamic"),
    ({f"{ODD_INPUT}:0": 2}, "axis 0 of input 'input:0/x y' is fixed at 2"),
    ({"ids:0": 2}, "axis 0 of input 'ids' is the named dimension 'batch'; set it as --dim batch=N"),
    ({"x:0": 0}, "--dim x:0=0: the value must be a positive integer"),
    ({"x:0": -1}, "--dim x:0=-1: the value must be a positive integer"),
    ({"x": 2}, "no dynamic dimension 'x' (dynamic dimensions: x:0, input:0/x y:1, batch, ids:1"),
    ({"x:0": 2, "x:00": 3}, "set the same dimension to different values"),
])
def test_bad_dim_key_is_refused_with_the_reason_and_nothing_written(
    model: Path, publisher, tmp_path: Path, dims: dict[str, int], reason: str
) -> None:
    out = tmp_path / "u.efb"
    with pytest.raises(BuildError) as info:
        build_bundle([model], name="unnamed", version="1.0.0",
                     key_path=publisher.private_path, out=out, dims=dims)
    assert reason in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("dim", "reason"), [
    ("x:0=0", "VALUE must be a positive integer"),
    ("x:0=-1", "VALUE must be a positive integer"),
    ("x:0=two", "VALUE must be an integer"),
    ("x:0", "expected NAME=VALUE or INPUT:AXIS=VALUE"),
])
def test_cli_refuses_a_malformed_dim_as_usage_error(
    capsys, model: Path, publisher, tmp_path: Path, dim: str, reason: str
) -> None:
    code, _, err = run(capsys, *_build_argv(model, publisher, tmp_path / "u.efb", dim))
    assert code == 2 and reason in err
    assert not (tmp_path / "u.efb").exists()


def test_cli_refuses_an_axis_that_is_not_dynamic_in_one_line(
    capsys, model: Path, publisher, tmp_path: Path
) -> None:
    code, out, err = run(capsys, *_build_argv(model, publisher, tmp_path / "u.efb", "x:1=3"))
    assert code == 1 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("model-bundle: error: ")
    assert line.endswith("--dim x:1: axis 1 of input 'x' is fixed at 4, not dynamic (shape [?, 4])")
    assert not (tmp_path / "u.efb").exists()


def test_input_declaring_zero_is_refused_with_the_fix_and_nothing_written(
    publisher, tmp_path: Path
) -> None:
    model = write_unnamed_dims_model(tmp_path / "zero.onnx", first_dim=0)
    out = tmp_path / "z.efb"
    with pytest.raises(BuildError, match=(
            r"zero.onnx: input 'x' declares axis 0 as 0 \(shape \[0, 4\]\); ONNX Runtime "
            r"accepts only empty tensors there.*dim_value -1 or a dim_param name")):
        build_bundle([model], name="zero", version="1.0.0", key_path=publisher.private_path,
                     out=out)
    assert not out.exists()


def test_variant_declaring_minus_one_matches_a_reference_that_names_the_dim(
    model: Path, publisher, tmp_path: Path
) -> None:
    named = write_unnamed_dims_model(tmp_path / "named.onnx", first_dim="N")
    manifest = build_bundle([named, model], name="twins", version="1.0.0",
                            key_path=publisher.private_path, out=tmp_path / "t.efb",
                            dims={"N": 2})
    assert [v.id for v in manifest.variants] == ["onnx-fp32", "onnx-fp32-2"]
    assert manifest.inputs[0].shape == ("N", 4)


def test_manifest_format_is_unchanged_a_minus_one_in_a_manifest_is_still_refused() -> None:
    assert TensorSpec.from_dict({"name": "x", "dtype": "float32", "shape": [None, 4]}).shape == (
        None, 4)
    with pytest.raises(ManifestError, match="negative dimension -1"):
        TensorSpec.from_dict({"name": "x", "dtype": "float32", "shape": [-1, 4]})


def _golden_npz(path: Path, x_rows: int = 4) -> Path:
    rng = np.random.default_rng(1)
    np.savez(path, x=rng.standard_normal((x_rows, 4)).astype(np.float32),
             **{ODD_INPUT: rng.standard_normal((2, 6, 3)).astype(np.float32)},
             ids=rng.integers(0, 9, (3, 5)).astype(np.int64))
    return path


def test_golden_npz_may_use_any_size_on_minus_one_axes_and_dims_record_it(
    model: Path, publisher, tmp_path: Path
) -> None:
    manifest = build_bundle([model], name="unnamed", version="1.0.0",
                            key_path=publisher.private_path, out=tmp_path / "u.efb",
                            golden=_golden_npz(tmp_path / "in.npz"))
    assert manifest.golden is not None and manifest.golden.count == 4
    assert manifest.golden.dims == {"x:0": 4, f"{ODD_INPUT}:1": 6, "batch": 3, "ids:1": 5}


def test_golden_npz_that_contradicts_a_dim_by_axis_is_refused(
    model: Path, publisher, tmp_path: Path
) -> None:
    out = tmp_path / "u.efb"
    with pytest.raises(BuildError, match=r"golden input 'x' has x:0=4 on axis 0 but --dim x:0=3"):
        build_bundle([model], name="unnamed", version="1.0.0", key_path=publisher.private_path,
                     out=out, golden=_golden_npz(tmp_path / "in.npz"), dims={"x:0": 3})
    assert not out.exists()
