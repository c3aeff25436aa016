"""Key files: modes, no overwrite, loading, key ids."""

from __future__ import annotations

import hashlib
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from model_bundles.errors import KeyFileError
from model_bundles.keys import (
    generate_keypair,
    generate_private_key_file,
    key_id,
    load_private_key,
    load_public_key,
    public_key_pem,
)


def test_keygen_modes_and_formats(tmp_path):
    priv, pub = generate_keypair(tmp_path / "keys")
    assert (priv.name, pub.name) == ("publisher.key", "publisher.pub")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key = load_private_key(priv)
    public = load_public_key(pub)
    assert key_id(key.public_key()) == key_id(public)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(public) == hashlib.sha256(raw).hexdigest()
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "publisher.key",
        "publisher.pub",
    ]


def test_keygen_refuses_overwrite(tmp_path):
    priv, pub = generate_keypair(tmp_path)
    before = (priv.read_bytes(), pub.read_bytes())
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path)
    assert (priv.read_bytes(), pub.read_bytes()) == before
    pub.unlink()
    with pytest.raises(KeyFileError):
        generate_keypair(tmp_path)  # the private key alone still blocks
    assert priv.read_bytes() == before[0]


def test_keygen_refuses_when_only_public_exists(tmp_path):
    (tmp_path / "publisher.pub").write_text("placeholder")
    with pytest.raises(KeyFileError):
        generate_keypair(tmp_path)
    assert not (tmp_path / "publisher.key").exists()


def test_generate_private_key_file(tmp_path):
    key = generate_private_key_file(tmp_path / "device.key")
    assert stat.S_IMODE((tmp_path / "device.key").stat().st_mode) == 0o600
    assert key_id(load_private_key(tmp_path / "device.key")) == key_id(key)
    with pytest.raises(KeyFileError):
        generate_private_key_file(tmp_path / "device.key")


def test_load_public_key_forms(tmp_path):
    _, pub = generate_keypair(tmp_path)
    expected = key_id(load_public_key(pub))
    text = pub.read_text()
    assert key_id(load_public_key(text)) == expected
    assert key_id(load_public_key(text.encode())) == expected
    assert key_id(load_public_key(str(pub))) == expected
    key = load_public_key(pub)
    assert public_key_pem(key) == text
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(load_public_key(raw)) == expected


def test_bad_key_files(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(KeyFileError):
        load_private_key(garbage)
    with pytest.raises(KeyFileError):
        load_public_key(garbage)
    with pytest.raises(KeyFileError):
        load_private_key(tmp_path / "missing.key")
    ec = generate_private_key(SECP256R1())
    ec_path = tmp_path / "ec.key"
    ec_path.write_bytes(
        ec.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_private_key(ec_path)
    ec_pub = ec.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_public_key(ec_pub)
