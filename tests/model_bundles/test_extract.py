"""extract_verified and verify_extracted."""

from __future__ import annotations

import hashlib
import os

import pytest

from model_bundles import verify as verify_mod
from model_bundles.errors import (
    ExtraFileError,
    HashMismatchError,
    MissingFileError,
    UnknownKeyError,
)
from model_bundles.verify import extract_verified, verify_bundle, verify_extracted


def test_extract_writes_exactly_the_listed_files(sample_bundle, publisher, tmp_path):
    dest = tmp_path / "slot"
    verified = extract_verified(sample_bundle, dest, [publisher.public])
    assert verified == verify_bundle(sample_bundle, [publisher.public])
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert names == sorted(f.path for f in verified.manifest.files)
    for entry in verified.manifest.files:
        assert hashlib.sha256((dest / entry.path).read_bytes()).hexdigest() == entry.sha256
    verify_extracted(dest, verified.manifest)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_extract_nested_paths(crafted, pack, publisher, tmp_path):
    crafted.files = {"model.onnx": b"m", "golden.npz": b"g", "extra/deep/data.bin": b"d" * 10}
    crafted.manifest["files"].append(
        {"path": "extra/deep/data.bin", "sha256": hashlib.sha256(b"d" * 10).hexdigest(), "size": 10}
    )
    for entry in crafted.manifest["files"][:2]:
        data = crafted.files[entry["path"]]
        entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    path = pack(crafted.entries())
    verified = extract_verified(path, tmp_path / "out", [publisher.public])
    assert (tmp_path / "out" / "extra" / "deep" / "data.bin").read_bytes() == b"d" * 10
    verify_extracted(tmp_path / "out", verified.manifest)


def _listing(directory):
    return sorted(os.listdir(directory))


def test_extract_refused_bundle_leaves_nothing(crafted, pack, publisher, tmp_path):
    entries = crafted.entries()
    entries[2].data = b"X" + entries[2].data[1:]
    path = pack(entries)
    before = _listing(tmp_path)
    with pytest.raises(HashMismatchError):
        extract_verified(path, tmp_path / "slot", [publisher.public])
    assert _listing(tmp_path) == before


def test_extract_unknown_key_leaves_nothing(sample_bundle, stranger, tmp_path):
    before = _listing(tmp_path)
    with pytest.raises(UnknownKeyError):
        extract_verified(sample_bundle, tmp_path / "slot", [stranger.public])
    assert _listing(tmp_path) == before


def test_failure_during_extraction_cleans_up(sample_bundle, publisher, tmp_path, monkeypatch):
    """The disk fills while the one verify-and-extract pass writes golden.npz: the error
    passes through and the temporary directory is removed."""
    real = verify_mod._MemberWriter.write

    def full_disk(self, name, data):
        if name == "files/golden.npz":
            raise OSError(28, "No space left on device")
        real(self, name, data)

    monkeypatch.setattr(verify_mod._MemberWriter, "write", full_disk)
    before = _listing(tmp_path)
    with pytest.raises(OSError, match="No space left"):
        extract_verified(sample_bundle, tmp_path / "slot", [publisher.public])
    assert _listing(tmp_path) == before


def test_extract_dest_must_not_exist(sample_bundle, publisher, tmp_path):
    dest = tmp_path / "slot"
    dest.mkdir()
    with pytest.raises(FileExistsError):
        extract_verified(sample_bundle, dest, [publisher.public])
    assert list(dest.iterdir()) == []


def test_verify_extracted_refusals(sample_bundle, publisher, tmp_path):
    dest = tmp_path / "slot"
    manifest = extract_verified(sample_bundle, dest, [publisher.public]).manifest

    golden = dest / "golden.npz"
    original = golden.read_bytes()
    golden.write_bytes(b"Z" + original[1:])
    with pytest.raises(HashMismatchError, match="golden.npz"):
        verify_extracted(dest, manifest)
    golden.write_bytes(original[:-1])
    with pytest.raises(HashMismatchError):
        verify_extracted(dest, manifest)
    golden.unlink()
    with pytest.raises(MissingFileError, match="golden.npz"):
        verify_extracted(dest, manifest)
    golden.write_bytes(original)
    verify_extracted(dest, manifest)

    (dest / "stray.txt").write_text("x")
    with pytest.raises(ExtraFileError, match="stray.txt"):
        verify_extracted(dest, manifest)
    (dest / "stray.txt").unlink()

    (dest / "link").symlink_to(dest / "model.onnx")
    with pytest.raises(ExtraFileError):
        verify_extracted(dest, manifest)
    (dest / "link").unlink()

    (dest / "subdir").mkdir()
    with pytest.raises(ExtraFileError):
        verify_extracted(dest, manifest)
    (dest / "subdir").rmdir()

    with pytest.raises(MissingFileError):
        verify_extracted(tmp_path / "nowhere", manifest)
