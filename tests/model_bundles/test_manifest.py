"""Manifest dataclasses: strict parsing, canonical encoding, validators."""

from __future__ import annotations

import json

import pytest

from model_bundles.errors import ManifestError
from model_bundles.manifest import (
    FileEntry,
    Manifest,
    TensorSpec,
    Tolerance,
    canonical_json,
    validate_name,
    validate_version,
)


def _doc(crafted) -> dict:
    return json.loads(json.dumps(crafted.manifest))


def test_round_trip_is_byte_exact(crafted):
    data = canonical_json(crafted.manifest)
    manifest = Manifest.from_bytes(data)
    assert manifest.to_bytes() == data
    assert manifest.to_dict() == crafted.manifest
    assert manifest.ref == "crafted@1.0.0"
    assert manifest.inputs[0] == TensorSpec("x", "float32", ("N", 4))
    assert manifest.files[0].member == "files/model.onnx"
    assert manifest.variants[0].tolerance == Tolerance(atol=0.0001, rtol=0.001)
    assert manifest.golden is not None and manifest.golden.dims == {"N": 1}
    assert manifest.file("golden.npz").size == len(b"golden bytes")
    assert manifest.variant("onnx-fp32").delegates == ("cpu",)


def test_canonical_json_rules():
    assert canonical_json({"b": 1, "a": [1.5, None, "é"]}) == '{"a":[1.5,null,"é"],"b":1}'.encode()
    with pytest.raises(ManifestError):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["files"][0].update(extra=1),  # unknown keys only at the top level
        lambda d: d.update({"Auto-Run": 1}),  # an unknown key must be a plain key name
        lambda d: d.update(format_minor=0),  # minor 0 is written by leaving the key out
        lambda d: d.update(format_minor=-1),
        lambda d: d.pop("latency_budget_ms"),
        lambda d: d.update(format_version=2),
        lambda d: d.update(format_version=True),
        lambda d: d.update(name="UPPER"),
        lambda d: d.update(name="-leading-dash"),
        lambda d: d.update(version="1.0"),
        lambda d: d.update(version="01.0.0"),
        lambda d: d.update(created_at="2026-13-01T00:00:00Z"),
        lambda d: d.update(task="detector"),
        lambda d: d["inputs"][0].update(dtype="complex64"),
        lambda d: d["inputs"][0].update(shape=[1.5]),
        lambda d: d["inputs"][0].update(extra="x"),
        lambda d: d["files"][0].update(path="a/../b"),
        lambda d: d["files"][0].update(path="/abs"),
        lambda d: d["files"][0].update(path="a\\b"),
        lambda d: d["files"][0].update(path="a//b"),
        lambda d: d["files"][0].update(path="./a"),
        lambda d: d["files"][0].update(path="x" * 256),
        lambda d: d["files"][0].update(sha256="ABC"),
        lambda d: d["files"][0].update(size=-1),
        lambda d: d["files"].append(dict(d["files"][0])),
        lambda d: d["variants"][0].update(file="nope.onnx"),
        lambda d: d["variants"][0]["tolerance"].update(atol=-1),
        lambda d: d["variants"][0].update(delegates="cpu"),
        lambda d: d["golden"].update(file="missing.npz"),
        lambda d: d["golden"].update(count=0),
        lambda d: d.update(latency_budget_ms=-5),
        lambda d: d.update(publisher_key_id="xyz"),
        lambda d: d.update(inputs=[]),
    ],
)
def test_schema_refusals(crafted, mutate):
    doc = _doc(crafted)
    mutate(doc)
    with pytest.raises(ManifestError) as info:
        Manifest.from_bytes(canonical_json(doc))
    assert "\n" not in str(info.value)


def test_duplicate_json_keys_refused(crafted):
    data = canonical_json(crafted.manifest)
    dup = data[:-1] + b',"name":"other"}'
    with pytest.raises(ManifestError):
        Manifest.from_bytes(dup)


def test_non_utf8_and_nan_refused():
    with pytest.raises(ManifestError):
        Manifest.from_bytes(b"\xff\xfe")
    with pytest.raises(ManifestError):
        Manifest.from_bytes(b'{"a":NaN}')


def test_float_written_as_int_is_kept(crafted):
    doc = _doc(crafted)
    doc["variants"][0]["tolerance"] = {"atol": 0, "rtol": 1}
    data = canonical_json(doc)
    assert Manifest.from_bytes(data).to_bytes() == data


def test_golden_may_be_null(crafted):
    doc = _doc(crafted)
    doc["golden"] = None
    assert Manifest.from_bytes(canonical_json(doc)).golden is None


def test_file_below_another_file_refused(crafted):
    doc = _doc(crafted)
    doc["files"].append({"path": "model.onnx/inner", "sha256": "0" * 64, "size": 0})
    with pytest.raises(ManifestError):
        Manifest.from_bytes(canonical_json(doc))


def test_case_insensitive_duplicate_paths_refused(crafted):
    doc = _doc(crafted)
    doc["files"].append({"path": "MODEL.onnx", "sha256": "0" * 64, "size": 0})
    with pytest.raises(ManifestError):
        Manifest.from_bytes(canonical_json(doc))


@pytest.mark.parametrize("name", ["a", "digits", "a.b_c-d", "0" * 64])
def test_good_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "a b", "a/b", "0" * 65, "é"])
def test_bad_names(name):
    with pytest.raises(ManifestError):
        validate_name(name)


@pytest.mark.parametrize("version", ["0.0.0", "1.2.3", "1.0.0-rc.1", "10.20.30-alpha-2"])
def test_good_versions(version):
    assert validate_version(version) == version


@pytest.mark.parametrize("version", ["1", "1.2", "v1.2.3", "1.2.3+build", "1.2.3-", "1.02.3"])
def test_bad_versions(version):
    with pytest.raises(ManifestError):
        validate_version(version)


def test_dataclasses_are_frozen_and_hashable(crafted):
    manifest = Manifest.from_bytes(canonical_json(crafted.manifest))
    with pytest.raises(AttributeError):
        manifest.name = "other"  # type: ignore[misc]
    assert hash(manifest) == hash(Manifest.from_bytes(canonical_json(crafted.manifest)))
    assert FileEntry("a", "0" * 64, 1) == FileEntry("a", "0" * 64, 1)
