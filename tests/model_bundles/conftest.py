"""Helpers for the bundle tests: keys, a built sample bundle and a hostile-bundle crafter."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_bundles.keys import generate_keypair, key_id, load_private_key, load_public_key
from model_bundles.manifest import canonical_json
from model_bundles.signing import sign_manifest


@dataclass
class KeyPair:
    private_path: Path
    public_path: Path
    private: Ed25519PrivateKey

    @property
    def public(self):
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)


@pytest.fixture(scope="session")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    priv, pub = generate_keypair(tmp_path_factory.mktemp("keys"))
    return KeyPair(priv, pub, load_private_key(priv))


@pytest.fixture(scope="session")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    priv, pub = generate_keypair(tmp_path_factory.mktemp("stranger"))
    return KeyPair(priv, pub, load_private_key(priv))


@pytest.fixture(scope="session")
def sample_bundle_session(
    tmp_path_factory: pytest.TempPathFactory, sample_onnx: Path, publisher: KeyPair
) -> Path:
    from model_bundles.builder import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "sample.efb"
    build_bundle(
        [sample_onnx],
        name="sample",
        version="1.0.0",
        key_path=publisher.private_path,
        out=out,
        task="classifier",
    )
    assert load_public_key(publisher.public_path)  # sanity
    return out


@pytest.fixture
def sample_bundle(tmp_path: Path, sample_bundle_session: Path) -> Path:
    """A fresh copy of the built sample bundle (tests may tamper with it)."""
    dest = tmp_path / "sample.efb"
    shutil.copyfile(sample_bundle_session, dest)
    return dest


# --------------------------------------------------------------------------- crafting


@dataclass
class Entry:
    """One raw tar member for a crafted bundle."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


@dataclass
class Crafted:
    """A valid bundle's parts, to be bent by a test and then packed."""

    key: Ed25519PrivateKey
    files: dict[str, bytes]
    manifest: dict[str, Any] = field(default_factory=dict)

    entry = staticmethod(Entry)  # build a raw member: crafted.entry(name, data, type=...)

    def manifest_bytes(self) -> bytes:
        return canonical_json(self.manifest)

    def signature(
        self, manifest_bytes: bytes | None = None, key: Ed25519PrivateKey | None = None
    ) -> bytes:
        return sign_manifest(
            self.manifest_bytes() if manifest_bytes is None else manifest_bytes, key or self.key
        )

    def entries(
        self, manifest_bytes: bytes | None = None, signature: bytes | None = None
    ) -> list[Entry]:
        mb = self.manifest_bytes() if manifest_bytes is None else manifest_bytes
        sig = self.signature(mb) if signature is None else signature
        out = [Entry("manifest.json", mb), Entry("manifest.sig", sig)]
        out += [Entry("files/" + path, data) for path, data in self.files.items()]
        return out


def _file_entry(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def make_manifest(key: Ed25519PrivateKey, files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "format_version": 1,
        "name": "crafted",
        "version": "1.0.0",
        "created_at": "2026-11-29T02:50:00Z",
        "task": "classifier",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 2]}],
        "files": [_file_entry(p, d) for p, d in files.items()],
        "variants": [
            {
                "id": "onnx-fp32",
                "file": "model.onnx",
                "format": "onnx",
                "precision": "fp32",
                "delegates": ["cpu"],
                "tolerance": {"atol": 0.0001, "rtol": 0.001},
            }
        ],
        "golden": {"file": "golden.npz", "count": 1, "dims": {"N": 1}},
        "latency_budget_ms": None,
        "publisher_key_id": key_id(key.public_key()),
    }


def write_tar(path: Path, entries: list[Entry], trailer: bytes = b"") -> Path:
    """Write ``entries`` verbatim (no normalisation) as a PAX tar, then ``trailer``."""
    with open(path, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for e in entries:
                info = tarfile.TarInfo(e.name)
                info.type = e.type
                info.linkname = e.linkname
                info.mode = 0o644
                info.mtime = 0
                if e.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                    info.size = len(e.data)
                    tar.addfile(info, io.BytesIO(e.data))
                else:
                    info.size = 0
                    tar.addfile(info)
        fh.write(trailer)
    return path


@pytest.fixture
def crafted(publisher: KeyPair) -> Crafted:
    files = {"model.onnx": b"not really onnx but hashed" * 8, "golden.npz": b"golden bytes"}
    return Crafted(
        key=publisher.private, files=files, manifest=make_manifest(publisher.private, files)
    )


@pytest.fixture
def pack(tmp_path: Path) -> Callable[..., Path]:
    counter = {"n": 0}

    def _pack(entries: list[Entry], trailer: bytes = b"") -> Path:
        counter["n"] += 1
        return write_tar(tmp_path / f"crafted-{counter['n']}.efb", entries, trailer)

    return _pack
