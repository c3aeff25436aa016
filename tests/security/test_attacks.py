"""Attacks on the update path, one test per attack: each asserts the error the device
raises or reports AND that the active model and its files are unchanged.

The device is a real ``Agent`` with a real committed model (``bench`` in conftest.py); the
server side is the real ``fleet_server.tuf_repo``; the attacker controls what the transport
delivers (metadata bytes, instructions, chunks).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tuf.api.metadata import Metadata, Root

from device_agent.trust_store import HttpMetadataSource, TrustStore
from fleet_server import tuf_repo
from model_bundles import keys
from model_bundles.signing import sign_manifest
from ota.errors import ChunkError
from ota.install import InstallState
from ota.instructions import BundleRef, Instruction, sign_instruction
from ota.trust import (
    TargetMismatchError,
    TrustError,
    TrustExpiredError,
    TrustRollbackError,
    TrustSignatureError,
)

from .conftest import DEVICE, Bench, Published

S = InstallState


def _errors(bench: Bench) -> list[str]:
    """The ``error`` events the agent reported (from its on-disk outbox)."""
    assert bench.agent is not None
    out = []
    for rec in bench.agent.outbox.pending():
        text = rec.payload.decode()
        if '"kind":"error"' in text.replace(" ", ""):
            out.append(text)
    return out


def _refused(bench: Bench, envelope: bytes, error: str) -> None:
    """Offer ``envelope``: it must be refused with ``error`` and change nothing."""
    before = bench.model_state()
    seq, journal = bench.agent.store.applied_seq, bench.agent.journal  # type: ignore[union-attr]
    bench.offer(envelope)
    assert any(error in e for e in _errors(bench)), _errors(bench)
    assert bench.model_state() == before
    assert bench.agent.store.applied_seq == seq  # type: ignore[union-attr]
    assert bench.agent.journal == journal  # type: ignore[union-attr]


def _trusted_root_version(bench: Bench) -> int:
    files = TrustStore(bench.agent_dir).load()
    assert files is not None
    return Metadata[Root].from_bytes(files.root).signed.version


# -- arbitrary bundle ----------------------------------------------------------------------

def _retar(src: Path, dst: Path, *, drop: str | None = None,
           replace: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            if m.name == drop:
                continue
            data = (replace or {}).get(m.name)
            if data is None:
                f = tin.extractfile(m)
                data = f.read() if f else b""
            info = tarfile.TarInfo(m.name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tout.addfile(info, io.BytesIO(data))
    return dst


def _list_and_install(bench: Bench, path: Path, version: str) -> None:
    """A compromised fleet: lists ``path`` as a TUF target and instructs the device."""
    ref = bench.ref_for(path, version)
    bench.source.bundles.append({"id": ref.sha256, "name": ref.name, "version": version,
                                 "size": ref.size, "publisher_key_id": ref.publisher_key_id})
    bench.install(Published(path, ref))


def test_arbitrary_bundle_without_publisher_signature_is_refused(bench: Bench) -> None:
    before = bench.model_state()
    unsigned = _retar(bench.build("2.0.0"), bench.tmp / "unsigned.efb", drop="manifest.sig")
    _list_and_install(bench, unsigned, "2.0.0")
    assert bench.journal_state is S.FAILED
    assert "manifest.sig" in (bench.agent.journal.error or "")  # type: ignore[union-attr]
    assert bench.model_state() == before


def test_arbitrary_bundle_signed_by_unknown_key_is_refused(bench: Bench) -> None:
    before = bench.model_state()
    stranger, _ = keys.generate_keypair(bench.tmp / "stranger")
    forged = bench.build("2.0.0", key_path=stranger)
    _list_and_install(bench, forged, "2.0.0")  # the instruction names the real publisher
    assert bench.journal_state is S.FAILED
    assert "bundle verification failed" in (bench.agent.journal.error or "")  # type: ignore[union-attr]
    assert bench.model_state() == before


def test_root_signed_below_threshold_is_refused(bench: Bench) -> None:
    one_key = tuf_repo.load_signers(bench.root_keys)[:1]  # threshold is 2 of 3
    md = bench.repo.root()
    md.signed.version += 1
    md.signatures.clear()
    md.sign(one_key[0])
    bench.source.override["2.root.json"] = md.to_bytes()
    with pytest.raises(TrustSignatureError):
        bench.agent.trust.check(bench.publish("2.0.0").ref)  # type: ignore[union-attr]
    assert _trusted_root_version(bench) == 1
    _refused(bench, bench.instruction(bench.publish("2.0.1").ref), "2.root.json")


def test_timestamp_signed_by_unknown_key_is_refused(bench: Bench) -> None:
    md = Metadata.from_bytes(bench.repo.metadata("timestamp.json", bench.source.bundles) or b"")
    md.signed.version += 10
    md.signatures.clear()
    md.sign(tuf_repo._signer(Ed25519PrivateKey.generate()))
    bench.source.override["timestamp.json"] = md.to_bytes()
    with pytest.raises(TrustSignatureError):
        bench.agent.trust.check(bench.publish("2.0.0").ref)  # type: ignore[union-attr]
    _refused(bench, bench.instruction(bench.publish("2.0.1").ref), "timestamp.json")


# -- replay ----------------------------------------------------------------------------

def test_replayed_instruction_is_refused_also_after_agent_restart(bench: Bench) -> None:
    v1 = bench.tmp / "sample-1.0.0.efb"
    old = bench.instruction(bench.ref_for(v1, "1.0.0"), seq=1)  # the one already applied
    bench.install(bench.publish("2.0.0"))
    assert bench.model_state()["current"].version == "2.0.0"
    _refused(bench, old, "is not after applied seq")
    bench.start_agent()  # a restart: seq is persisted
    _refused(bench, old, "is not after applied seq")
    assert bench.model_state()["current"].version == "2.0.0"


def test_rolling_back_to_an_older_model_takes_a_new_instruction(bench: Bench) -> None:
    v1 = bench.source.bundles[0]
    bench.install(bench.publish("2.0.0"))
    pub1 = Published(bench.tmp / "sample-1.0.0.efb",
                     bench.ref_for(bench.tmp / "sample-1.0.0.efb", "1.0.0"))
    assert pub1.ref.sha256 == v1["id"]
    bench.install(pub1)  # new seq, same old bundle: allowed
    assert bench.model_state()["current"].version == "1.0.0"


def test_replayed_metadata_is_refused_also_after_agent_restart(bench: Bench) -> None:
    old = {n: bench.repo.metadata(n) for n in ("timestamp.json", "snapshot.json",
                                               "targets.json")}
    bench.install(bench.publish("2.0.0"))  # the server bumped every role; the device has them
    bench.source.override.update(old)  # a mirror or broker replays the older, valid set
    with pytest.raises(TrustRollbackError):
        bench.agent.trust.check(bench.agent.store.record.bundle)  # type: ignore[union-attr]
    bench.start_agent()
    with pytest.raises(TrustRollbackError):
        bench.agent.trust.check(bench.agent.store.record.bundle)  # type: ignore[union-attr]
    _refused(bench, bench.instruction(bench.publish("2.0.1").ref), "timestamp.json")


# -- freeze ----------------------------------------------------------------------------

def test_freeze_with_expired_timestamp_is_refused(bench: Bench) -> None:
    stale = bench.repo.metadata("timestamp.json")
    bench.clock.now += 2 * 86400  # timestamp lives 1 day
    bench.source.override["timestamp.json"] = stale
    with pytest.raises(TrustExpiredError):
        bench.agent.trust.check(bench.publish("2.0.0").ref)  # type: ignore[union-attr]
    _refused(bench, bench.instruction(bench.publish("2.0.1").ref), "expired")


def test_freeze_with_expired_instruction_is_refused(bench: Bench) -> None:
    pub = bench.publish("2.0.0")
    _refused(bench, bench.instruction(pub.ref, ttl_s=-1), "instruction expired")


# -- mix-and-match -----------------------------------------------------------------------

def test_mix_and_match_instruction_naming_a_hash_metadata_does_not_list_is_refused(
        bench: Bench) -> None:
    path = bench.build("2.0.0")  # built and signed by the publisher, never published
    ref = bench.ref_for(path, "2.0.0")
    with pytest.raises(TargetMismatchError):
        bench.agent.trust.check(ref)  # type: ignore[union-attr]
    _refused(bench, bench.instruction(ref), "is not a target")


def test_mix_and_match_listed_hash_under_another_name_is_refused(bench: Bench) -> None:
    pub = bench.publish("2.0.0")
    relabelled = bench.ref_for(pub.path, "9.9.9")  # same bytes, other version
    _refused(bench, bench.instruction(relabelled), "trusted version")


def _shadow_instruction(bench: Bench, shadow: BundleRef) -> bytes:
    """Keep the active bundle, shadow ``shadow`` on every request."""
    bench.seq += 1
    now = time.time()
    active = bench.agent.store.record.bundle  # type: ignore[union-attr]
    return sign_instruction(Instruction(
        device_id=DEVICE, seq=bench.seq, issued_at=now - 60, expires_at=now + 3600,
        deployment_id="d-1", bundle=active, shadow=shadow, shadow_sample_rate=1.0),
        bench.fleet_key)


def test_mix_and_match_shadow_candidate_metadata_does_not_list_is_refused(
        bench: Bench) -> None:
    """A shadow candidate runs on live inputs: it gets the bundle's TUF target check."""
    path = bench.build("2.0.0")  # signed by the publisher, never published
    ref = bench.ref_for(path, "2.0.0")
    with pytest.raises(TargetMismatchError):
        bench.agent.trust.check(ref)  # type: ignore[union-attr]
    _refused(bench, _shadow_instruction(bench, ref), "is not a target")
    assert bench.agent.store.record.shadow is None  # type: ignore[union-attr]
    assert bench.agent.shadow.candidate is None  # type: ignore[union-attr]
    assert bench.agent.core.transfers == {}  # type: ignore[union-attr]
    assert not (bench.agent_dir / "shadow").exists()


def test_mix_and_match_listed_shadow_hash_under_another_name_is_refused(
        bench: Bench) -> None:
    pub = bench.publish("2.0.0")
    _refused(bench, _shadow_instruction(bench, bench.ref_for(pub.path, "9.9.9")),
             "trusted version")
    assert not (bench.agent_dir / "shadow").exists()


def test_listed_shadow_candidate_is_accepted(bench: Bench) -> None:
    """The control: the same instruction with a published candidate starts its transfer."""
    pub = bench.publish("2.0.0")
    bench.offer(_shadow_instruction(bench, pub.ref))
    rec = bench.agent.store.record.shadow  # type: ignore[union-attr]
    assert rec is not None and rec.ref == pub.ref and rec.failed is None
    assert (bench.agent_dir / "shadow" / f"{pub.ref.sha256}.part").exists()


# -- endless data --------------------------------------------------------------------------

def test_endless_data_chunk_longer_than_declared_is_cut_at_declared_size(bench: Bench) -> None:
    before = bench.model_state()
    pub = bench.publish("2.0.0")
    bench.offer(bench.instruction(pub.ref))
    with pytest.raises(ChunkError):
        bench.deliver(pub, extra=b"\0" * 4096)
    part = bench.agent_dir / "downloads" / f"{pub.ref.sha256}.part"
    assert not part.exists() or part.stat().st_size <= pub.ref.size
    assert bench.model_state() == before
    assert bench.journal_state is S.DOWNLOADING


def test_endless_data_metadata_longer_than_bound_is_cut(bench: Bench) -> None:
    def endless(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{" + b" " * (64 * 1024))

    source = HttpMetadataSource("http://fleet.invalid", transport=httpx.MockTransport(endless))
    with pytest.raises(TrustError, match="more than 16384 bytes"):
        source.fetch("timestamp.json", 16 * 1024)


# -- wrong device ----------------------------------------------------------------------

def test_instruction_for_another_device_is_refused(bench: Bench) -> None:
    pub = bench.publish("2.0.0")
    _refused(bench, bench.instruction(pub.ref, device_id="dev-2"), "is for device 'dev-2'")
    assert DEVICE != "dev-2"


# -- root rotation -------------------------------------------------------------------------

def test_root_rotation_new_key_accepted_removed_key_refused(bench: Bench) -> None:
    old = tuf_repo.load_signers(bench.root_keys)
    new_dir = bench.tmp / "new-root-keys"
    assert tuf_repo.rotate_root(bench.data, old[:2], new_keys_dir=new_dir, threshold=1) == 2
    bench.install(bench.publish("2.0.0"))  # the device walks 1 -> 2
    assert bench.model_state()["current"].version == "2.0.0"
    assert _trusted_root_version(bench) == 2
    before = bench.model_state()

    v3 = bench.repo.root()
    v3.signed.version = 3
    v3.signatures.clear()
    for s in old:  # every removed key: still not the new root role
        v3.sign(s, append=True)
    bench.source.override["3.root.json"] = v3.to_bytes()
    with pytest.raises(TrustSignatureError):
        bench.agent.trust.check(bench.publish("2.0.1").ref)  # type: ignore[union-attr]
    assert _trusted_root_version(bench) == 2
    assert bench.model_state() == before

    del bench.source.override["3.root.json"]
    new = tuf_repo.load_signers(new_dir)
    assert tuf_repo.rotate_root(bench.data, new, new_signers=new, threshold=1) == 3
    bench.install(bench.publish("3.0.0"))
    assert _trusted_root_version(bench) == 3
    assert bench.model_state()["current"].version == "3.0.0"


# -- hostile archives ----------------------------------------------------------------------

def _raw_tar(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            if isinstance(e, tuple):
                tar.addfile(e[0], io.BytesIO(e[1]))
            else:
                tar.addfile(e)
    return buf.getvalue()


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
            link: str = "") -> tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, 0o644, 0
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info


HOSTILE = {
    "path_traversal": [_member("files/../../../etc/evil", b"x")],
    "absolute_path": [_member("/etc/evil", b"x")],
    "symlink": [_member("files/link", kind=tarfile.SYMTYPE, link="/etc/passwd")],
    "hard_link": [_member("files/hard", kind=tarfile.LNKTYPE, link="files/model.onnx")],
    "device_file": [_member("files/dev", kind=tarfile.CHRTYPE)],
    "duplicate_name": [_member("files/model.onnx", b"second copy")],
    "file_not_in_manifest": [_member("files/extra.bin", b"unlisted")],
}


def _hostile_bundle(bench: Bench, extra: list, *, declared_huge: bool = False) -> Path:
    """The published v1 bundle's members, re-signed by the publisher, plus ``extra``."""
    src = bench.tmp / "sample-1.0.0.efb"
    members: list = []
    with tarfile.open(src) as tin:
        for m in tin.getmembers():
            f = tin.extractfile(m)
            members.append(_member(m.name, f.read() if f else b""))
    manifest = members[0][1]
    key = keys.load_private_key(bench.publisher_key_path)
    assert members[1][0].name == "manifest.sig"
    members[1] = _member("manifest.sig", sign_manifest(manifest, key))
    if declared_huge:  # a member header declaring 3 GiB, with no data behind it
        info = tarfile.TarInfo("files/bomb.bin")
        info.size, info.mode, info.mtime = 3 << 30, 0o644, 0
        buf = io.BytesIO()
        tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
        for m in members:
            tar.addfile(m[0], io.BytesIO(m[1]))
        data = buf.getvalue() + info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024
    else:
        data = _raw_tar(members + extra)
    path = bench.tmp / f"hostile-{hashlib.sha256(data).hexdigest()[:8]}.efb"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("attack", [*HOSTILE, "decompression_bomb"])
def test_hostile_archive_is_refused_and_active_model_unchanged(bench: Bench, attack: str) -> None:
    before = bench.model_state()
    if attack == "decompression_bomb":
        path = _hostile_bundle(bench, [], declared_huge=True)
    else:
        path = _hostile_bundle(bench, HOSTILE[attack])
    _list_and_install(bench, path, "1.0.0")
    assert bench.journal_state is S.FAILED, bench.agent.journal  # type: ignore[union-attr]
    assert bench.agent.journal.error  # type: ignore[union-attr]
    assert bench.model_state() == before
    inactive = bench.agent.slots.path(bench.agent.slots.inactive())  # type: ignore[union-attr]
    assert not inactive.exists() or not any(inactive.rglob("*"))
    assert not (bench.tmp.parent / "etc").exists()
