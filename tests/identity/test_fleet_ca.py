"""The fleet CA (fleet_server/ca.py): files and modes, device certificates from CSRs, bad
CSRs and certificates refused, rollover with an overlap, and real TLS handshakes (Python's
ssl, OpenSSL) with the files it writes."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_server.ca import (
    DEVICE_CERT_DAYS,
    CaError,
    CertificateError,
    FleetCA,
    device_uri,
    renew_at,
    spki_hash,
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # certificates hold whole seconds


def csr_for(key, cn: str | None) -> str:
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, algo)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_ca_is_created_once_keys_0600_and_the_hash_is_stable_across_loads(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path)
    again = FleetCA.load_or_create(tmp_path)
    assert ca.ca_hash() == again.ca_hash()
    assert ca.ca_hash().startswith("sha256:") and len(ca.ca_hash()) == 7 + 64
    cert = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    assert spki_hash(cert.public_key()) == ca.ca_hash()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert os.stat(tmp_path / "ca" / "ca.key").st_mode & 0o777 == 0o600
    cert_path, key_path = ca.server_cert_files(["fleet.example", "10.1.2.3"])
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fleet.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    # the same names again: the same files (not re-issued)
    before = cert_path.read_bytes()
    assert again.server_cert_files(["fleet.example", "10.1.2.3"]) == (cert_path, key_path)
    assert cert_path.read_bytes() == before
    default = x509.load_pem_x509_certificate(ca.server_cert_files()[0].read_bytes())
    names = default.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", socket.gethostname()} <= set(names.get_values_for_type(x509.DNSName))


@pytest.mark.parametrize("key", [ed25519.Ed25519PrivateKey.generate(),
                                 ec.generate_private_key(ec.SECP256R1())],
                         ids=["ed25519", "p256"])
def test_csr_gets_a_device_certificate_with_the_id_in_cn_and_san_and_a_7_day_life(
        tmp_path: Path, key) -> None:
    ca = FleetCA.load_or_create(tmp_path)
    pem = ca.issue_device_cert(csr_for(key, "dev-1"), "dev-1", now=NOW)
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [device_uri("dev-1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=DEVICE_CERT_DAYS)
    assert spki_hash(cert.public_key()) == spki_hash(key.public_key())
    info = ca.verify_device_cert(pem, now=NOW)
    assert (info.device_id, info.issuer_hash) == ("dev-1", ca.ca_hash())
    due = renew_at(info.not_before, info.not_after)
    assert NOW + dt.timedelta(days=4) < due < NOW + dt.timedelta(days=5)
    # a CSR without a CN is named by the server
    assert ca.verify_device_cert(ca.issue_device_cert(csr_for(key, None), "dev-2")).device_id \
        == "dev-2"


@pytest.mark.parametrize(("case", "make", "message"), [
    ("malformed", lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE "
     "REQUEST-----\n", "not a PEM certificate signing request"),
    ("rsa_key", lambda: csr_for(rsa.generate_private_key(65537, 2048), "dev-1"),
     "key type RSA is not accepted"),
    ("p384_key", lambda: csr_for(ec.generate_private_key(ec.SECP384R1()), "dev-1"),
     "key type EC secp384r1 is not accepted"),
    ("names_another_device", lambda: csr_for(ed25519.Ed25519PrivateKey.generate(), "dev-2"),
     "CSR names 'dev-2', not device 'dev-1'"),
])
def test_bad_csr_is_refused_with_a_clear_error_and_nothing_changes(
        tmp_path: Path, case: str, make, message: str) -> None:
    ca = FleetCA.load_or_create(tmp_path)
    before = snapshot(tmp_path / "ca")
    with pytest.raises(CertificateError, match=message):
        ca.issue_device_cert(make(), "dev-1")
    assert snapshot(tmp_path / "ca") == before


def test_device_id_of_the_server_is_refused(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path)
    with pytest.raises(CertificateError, match="server's name"):
        ca.issue_device_cert(csr_for(ed25519.Ed25519PrivateKey.generate(), None),
                             "edgefleet-server")


def test_expired_and_foreign_ca_certificates_are_refused(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path / "a")
    other = FleetCA.load_or_create(tmp_path / "b")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = ca.issue_device_cert(csr_for(key, "dev-1"), "dev-1", now=NOW)
    later = NOW + dt.timedelta(days=DEVICE_CERT_DAYS, seconds=1)
    with pytest.raises(CertificateError, match="expired"):
        ca.verify_device_cert(pem, now=later)
    foreign = other.issue_device_cert(csr_for(key, "dev-1"), "dev-1")
    with pytest.raises(CertificateError, match="not issued by this fleet's CA"):
        ca.verify_device_cert(foreign)
    with pytest.raises(CertificateError, match="not a PEM X.509"):
        ca.verify_device_cert("garbage")


def test_rotation_keeps_the_old_ca_trusted_for_the_overlap_then_drops_it(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path, now=NOW)
    old_hash = ca.ca_hash()
    key = ed25519.Ed25519PrivateKey.generate()
    old_cert = ca.issue_device_cert(csr_for(key, "dev-1"), "dev-1", now=NOW)
    # a second process (the CLI) rotates; the running server's object sees it
    new_hash = FleetCA.load_or_create(tmp_path, now=NOW).rotate(overlap_s=14 * 86400, now=NOW)
    assert new_hash != old_hash and ca.ca_hash() == new_hash
    assert ca.trusted_hashes() == [new_hash, old_hash]
    bundle = x509.load_pem_x509_certificates(ca.trust_bundle_path().read_bytes())
    assert [spki_hash(c.public_key()) for c in bundle] == [new_hash, old_hash]
    assert ca.verify_device_cert(old_cert, now=NOW).issuer_hash == old_hash
    new_cert = ca.issue_device_cert(csr_for(key, "dev-1"), "dev-1", now=NOW)
    assert ca.verify_device_cert(new_cert, now=NOW).issuer_hash == new_hash
    with pytest.raises(CaError, match="overlaps until"):
        ca.rotate(now=NOW)
    # the overlap ends: the old CA and its key are gone, its certificates refused
    after = NOW + dt.timedelta(days=14, seconds=1)
    with pytest.raises(CertificateError, match="not issued by this fleet's CA"):
        ca.verify_device_cert(old_cert, now=after)
    assert ca.trusted_hashes() == [new_hash]
    assert not (tmp_path / "ca" / "previous.key").exists()
    assert len(x509.load_pem_x509_certificates(ca.trust_bundle_path().read_bytes())) == 1


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """One TLS handshake and a byte each way over a socket pair; the errors of both sides,
    joined (the server's verdict on a client certificate arrives after the client's handshake
    in TLS 1.3, so either side may fail first: the client then reads the server's alert), or
    None."""
    a, b = socket.socketpair()
    errors: list[str] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(b, server_side=True) as s:
                s.recv(1)
                s.sendall(b"y")
        except (ssl.SSLError, OSError) as e:
            errors.append(f"server: {e}")

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(a, server_hostname="localhost") as c:
            c.sendall(b"x")
            c.recv(1)
    except (ssl.SSLError, OSError) as e:
        errors.append(f"client: {e}")
    finally:
        a.close()
        t.join(5)
        b.close()
    return "; ".join(errors) if errors else None


def _server_ctx(ca: FleetCA) -> ssl.SSLContext:
    cert, key = ca.server_cert_files(["localhost"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.trust_bundle_path()))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _device_ctx(tmp: Path, name: str, cafile: Path, cert_pem: str, key) -> ssl.SSLContext:
    (tmp / f"{name}.crt").write_text(cert_pem)
    (tmp / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.load_cert_chain(str(tmp / f"{name}.crt"), str(tmp / f"{name}.key"))
    return ctx


def test_tls_with_ed25519_device_certificates_across_a_rollover(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path / "data")
    old_bundle = tmp_path / "old-bundle.pem"
    old_bundle.write_bytes(ca.trust_bundle_path().read_bytes())
    key = ed25519.Ed25519PrivateKey.generate()
    old_cert = ca.issue_device_cert(csr_for(key, "dev-1"), "dev-1")
    assert _handshake(_server_ctx(ca), _device_ctx(tmp_path, "a", old_bundle, old_cert, key)) \
        is None
    ca.rotate(overlap_s=3600)
    new_cert = ca.issue_device_cert(csr_for(key, "dev-1"), "dev-1")
    new_only = tmp_path / "new-ca.pem"
    new_only.write_bytes((tmp_path / "data" / "ca" / "ca.crt").read_bytes())
    server = _server_ctx(ca)
    # an agent that has not renewed yet: old bundle, old cert -> the cross-signed chain
    assert _handshake(server, _device_ctx(tmp_path, "b", old_bundle, old_cert, key)) is None
    # a renewed agent trusting only the new CA, with its new certificate
    assert _handshake(server, _device_ctx(tmp_path, "c", new_only, new_cert, key)) is None
    # a certificate from another fleet's CA is refused by the handshake
    foreign = FleetCA.load_or_create(tmp_path / "other")
    bad = foreign.issue_device_cert(csr_for(key, "dev-1"), "dev-1")
    assert "certificate verify failed" in str(
        _handshake(server, _device_ctx(tmp_path, "d", old_bundle, bad, key)))
    # so is an expired one from this fleet's CA
    expired = ca.issue_device_cert(csr_for(key, "dev-1"), "dev-1",
                                   now=dt.datetime.now(dt.UTC) - dt.timedelta(days=10), days=1)
    assert "certificate has expired" in str(
        _handshake(server, _device_ctx(tmp_path, "e", old_bundle, expired, key)))


def test_crl_lists_a_revoked_devices_unexpired_serials_signed_by_each_trusted_ca(
        tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path, now=NOW)
    key = ed25519.Ed25519PrivateKey.generate()
    ca.issue_device_cert(csr_for(key, "old"), "old", now=NOW - dt.timedelta(days=30))
    live = x509.load_pem_x509_certificate(ca.issue_device_cert(
        csr_for(key, "dev-1"), "dev-1", now=NOW).encode())
    ca.issue_device_cert(csr_for(key, "dev-2"), "dev-2", now=NOW)
    assert ca.issued_serials({"dev-1", "old"}, now=NOW) == [live.serial_number]
    assert ca.prune_issued(now=NOW) == 1  # the expired "old" line goes, the others stay
    assert ca.issued_serials({"dev-1", "dev-2", "old"}, now=NOW - dt.timedelta(days=60)) \
        == [live.serial_number, ca.issued_serials({"dev-2"}, now=NOW)[0]]
    ca.rotate(now=NOW)
    path = ca.write_crl(ca.issued_serials({"dev-1", "old"}, now=NOW), now=NOW)
    crls = [x509.load_pem_x509_crl(b"-----BEGIN X509 CRL-----" + part)
            for part in path.read_bytes().split(b"-----BEGIN X509 CRL-----")[1:]]
    bundle = x509.load_pem_x509_certificates(ca.trust_bundle_path().read_bytes())
    assert [c.issuer for c in crls] == [b.subject for b in bundle]
    for crl, issuer in zip(crls, bundle, strict=True):
        assert crl.is_signature_valid(issuer.public_key())
        assert [r.serial_number for r in crl] == [live.serial_number]


def test_ca_commands_on_a_directory_without_a_ca_refuse_and_create_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet_server.cli import main

    for command in (["ca", "show"], ["ca", "rotate"]):
        assert main([*command, "--data", str(tmp_path / "typo")]) == 1
        assert "has no fleet CA" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    ca = FleetCA.load_or_create(tmp_path / "data")
    assert main(["ca", "show", "--data", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().out.strip() == ca.ca_hash()
