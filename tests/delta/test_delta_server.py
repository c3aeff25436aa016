"""The fleet server's delta cache and its content-addressed URL: a delta is built once,
cached beside the bundles and served by its hash; a declined pair is remembered and
offers nothing; a changed non-model file travels alone while the model is copied."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from fleet_server import delta_store
from fleet_server.delta_store import DeltaStore
from model_bundles.delta_build import build_delta
from model_bundles.samples import sample_model, write_sample_model
from tests.fleet_server.bundle_helpers import make_bundle
from tests.fleet_server.conftest import api, settings  # noqa: F401 - fixtures

from .conftest import fine_tune_head


def _store(tmp: Path, key: Ed25519PrivateKey, bundles: dict[str, Path],
           max_ratio: float = 0.9) -> DeltaStore:
    by_sha = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in bundles.values()}
    return DeltaStore(root=tmp / "deltas", key=key, max_ratio=max_ratio,
                      bundle_path=lambda sha: by_sha.get(sha, tmp / "absent.efb"))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ed25519PrivateKey, dict[str, Path]]:
    root = tmp_path_factory.mktemp("delta-server")
    key = Ed25519PrivateKey.generate()
    models = {"v1": sample_model(0), "head": fine_tune_head(sample_model(0), 1),
              "retrain": sample_model(9)}
    out = {}
    for name, model in models.items():
        onnx.save_model(model, str(root / f"{name}.onnx"))
        out[name] = make_bundle(root / f"{name}.efb", root / f"{name}.onnx", key,
                                version={"v1": "1.0.0", "head": "1.1.0"}.get(name, "2.0.0"),
                                extra=b"release notes " + name.encode() * 200)
    return key, out


def test_a_delta_is_built_once_cached_and_found_by_its_hash(
        tmp_path: Path, pairs: tuple[Ed25519PrivateKey, dict[str, Path]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    key, bundles = pairs
    store = _store(tmp_path, key, bundles)
    ref = store.offer(_sha(bundles["v1"]), _sha(bundles["head"]))
    assert ref is not None and ref.base_sha256 == _sha(bundles["v1"])
    path = store.file(ref.sha256)
    assert path is not None and _sha(path) == ref.sha256 and ref.size == path.stat().st_size

    def no_build(*a: object, **k: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(delta_store, "build_delta", no_build)
    assert store.offer(_sha(bundles["v1"]), _sha(bundles["head"])) == ref  # from the cache
    assert store.file("0" * 64) is None and store.file("../x") is None


def test_a_declined_pair_is_remembered_and_offers_nothing(
        tmp_path: Path, pairs: tuple[Ed25519PrivateKey, dict[str, Path]]) -> None:
    key, bundles = pairs
    store = _store(tmp_path, key, bundles, max_ratio=0.2)  # a retrain saves less
    assert store.offer(_sha(bundles["v1"]), _sha(bundles["retrain"])) is None
    [index] = (tmp_path / "deltas").glob("*.json")
    assert "send the full bundle" in json.loads(index.read_text())["declined"]
    assert not list((tmp_path / "deltas").glob("*.efd"))
    assert store.offer(_sha(bundles["v1"]), "f" * 64) is None  # not in the store
    assert len(list((tmp_path / "deltas").glob("*.json"))) == 1
    small = DeltaStore(root=tmp_path / "small", key=key, max_bundle_bytes=1000,
                       bundle_path=lambda sha: next(p for p in bundles.values()
                                                    if _sha(p) == sha))
    assert small.offer(_sha(bundles["v1"]), _sha(bundles["head"])) is None  # too big to build
    assert not (tmp_path / "small").exists()


def test_a_changed_non_model_file_travels_whole_and_the_model_is_copied(
        pairs: tuple[Ed25519PrivateKey, dict[str, Path]], tmp_path: Path) -> None:
    key, _ = pairs
    model = write_sample_model(tmp_path / "m.onnx")
    v1 = make_bundle(tmp_path / "a.efb", model, key, extra=b"notes one " * 300)
    v2 = make_bundle(tmp_path / "b.efb", model, key, version="1.0.1", extra=b"notes two " * 300)
    built = build_delta(v1, v2, key)
    how = {f["path"]: f["how"] for f in built.delta.files}
    assert how == {"model.onnx": "same", "notes.txt": "new"}
    assert built.delta.payload_size < 3000 + 2048


def test_the_by_hash_url_serves_a_cached_delta_to_an_admin_and_nothing_else(
        api: TestClient, pairs: tuple[Ed25519PrivateKey, dict[str, Path]]) -> None:  # noqa: F811
    key, bundles = pairs
    services = api.app.state.services  # type: ignore[attr-defined]
    store = _store(Path(services.data_dir.root), key, bundles)
    services.deltas = store
    missing = api.get(f"/api/v1/bundles/by-hash/{'a' * 64}.efd")
    assert missing.status_code == 404
    ref = store.offer(_sha(bundles["v1"]), _sha(bundles["head"]))
    assert ref is not None
    got = api.get(f"/api/v1/bundles/by-hash/{ref.sha256}.efd")
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == ref.sha256
    assert got.headers["etag"] == f'"{ref.sha256}"'
    part = api.get(f"/api/v1/bundles/by-hash/{ref.sha256}.efd", headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == b"EFD1"
    anonymous = TestClient(api.app).get(f"/api/v1/bundles/by-hash/{ref.sha256}.efd")
    assert anonymous.status_code == 401
