"""Real signed bundles and instruction refs for the installer and agent tests."""

from __future__ import annotations

from pathlib import Path

from model_bundles import keys as mb_keys
from model_bundles.builder import build_bundle
from ota.chunks import file_chunk_hashes, file_sha256
from ota.instructions import BundleRef


def publisher(tmp: Path) -> Path:
    """A publisher key pair in ``tmp/keys`` (made once); returns the private key path."""
    priv = tmp / "keys" / "publisher.key"
    if not priv.exists():
        mb_keys.generate_keypair(tmp / "keys")
    return priv


def signed_bundle(tmp: Path, model: Path, name: str = "sample", version: str = "1.0.0",
                  latency_budget_ms: float | None = None) -> Path:
    out = tmp / f"{name}-{version}.efb"
    build_bundle([model], name=name, version=version, key_path=publisher(tmp), out=out,
                 dims={"batch": 2}, latency_budget_ms=latency_budget_ms)
    return out


def bundle_ref(bundle: Path, key_path: Path, chunk_size: int = 64 * 1024) -> BundleRef:
    """What a signed instruction says about ``bundle`` (computed over the given bytes)."""
    priv = mb_keys.load_private_key(key_path)
    pub = priv.public_key()
    manifest_name, version = bundle.stem.rsplit("-", 1)
    return BundleRef(
        name=manifest_name, version=version, sha256=file_sha256(bundle),
        size=bundle.stat().st_size, chunk_size=chunk_size,
        chunk_hashes=tuple(file_chunk_hashes(bundle, chunk_size)),
        publisher_key_id=mb_keys.key_id(pub),
        publisher_public_key=mb_keys.public_key_pem(pub))
