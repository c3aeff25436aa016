"""The fleet CA: X.509 certificates for devices and for the server (``cryptography``).

Interface (what the server, the broker and the CLI use)::

    ca = FleetCA.load_or_create(data_root)      # files in DATA/ca/, keys 0600
    pem = ca.issue_device_cert(csr_pem, device_id)   # CN and SAN URI carry the id, 7 days
    cert, key = ca.server_cert_files(["fleet.example", "10.0.0.5"])   # TLS listener (HTTPS, MQTT)
    cert, key = ca.server_client_cert_files()   # the server's MQTT client, CN edgefleet-server
    ca.trust_bundle_path()                      # PEM: the current CA (+ the previous one while
                                                # a rollover overlaps)
    ca.ca_hash()                                # "sha256:<hex>" of the current CA's SPKI
    info = ca.verify_device_cert(pem)           # DeviceCert or CertificateError
    ca.rotate(overlap_s=...)                    # new CA; the old one stays trusted until then
    ca.write_crl(serials); ca.crl_path()        # crl.pem for Mosquitto's crlfile

Choices (docs/security.md, "Device certificates"):

- Keys: the CA and the server use ECDSA P-256; a device CSR may carry an Ed25519 key (the
  agent's ``keys/device.key``) or an ECDSA P-256 key; any other key type is refused.
- Lifetimes: CA 10 years, device certificates ``DEVICE_CERT_DAYS`` = 7 days (renewed once
  2/3 of the lifetime has passed, ``renew_at``), server certificates 90 days (re-issued by
  ``server_cert_files`` once 2/3 has passed, when the names change or the CA rotates).
- The CA hash pins the CA in enrolment tokens as ``kubeadm join
  --discovery-token-ca-cert-hash`` does: SHA-256 over the DER SubjectPublicKeyInfo.
- Rollover: ``rotate`` makes a new CA (new device and server certificates are signed by it)
  and keeps the old one trusted for ``overlap_s`` (default 14 days: every device renews at
  least once in that time and takes the new bundle). During the overlap the server's
  certificate files carry the new CA cross-signed by the old one, so an agent that still
  trusts only the old CA verifies the server; after it, the old CA and its key are deleted.
- A running server sees a rotation made by ``fleet-server ca rotate`` on the same data
  directory: every call re-reads the files when ``state.json`` changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_server.errors import FleetError, InvalidInputError
from model_bundles.atomic import atomic_write_bytes

__all__ = [
    "CA_DAYS", "DEVICE_CERT_DAYS", "DEFAULT_OVERLAP_S", "SERVER_CERT_DAYS", "SERVER_CN", "CONTROL_CN",
    "CaError", "CertificateError", "DeviceCert", "FleetCA", "device_uri", "key_fingerprint",
    "renew_at", "spki_hash",
]

CA_DAYS = 3650
DEVICE_CERT_DAYS = 7
SERVER_CERT_DAYS = 90
DEFAULT_OVERLAP_S = 14 * 86400
SERVER_CN = "edgefleet-server"
CONTROL_CN = "edgefleet-server._control"
"""The server's identity for broker control commands only (Mosquitto's dynamic-security
plugin); ``_`` cannot occur in a replica id, so no replica's CN can be this one."""
"""The CN of the server's own MQTT client certificate (the broker's superuser name)."""
SKEW = dt.timedelta(minutes=5)  # not_before is backdated this much for clock skew
MAX_CSR_BYTES = 16 * 1024
CA_DIR = "ca"
ISSUED = "issued.jsonl"
CRL = "crl.pem"
CRL_DAYS = 365


def is_server_name(name: str) -> bool:
    """The server's CN, or a replica's (``edgefleet-server.REPLICA``): never a device's."""
    return name == SERVER_CN or name.startswith(SERVER_CN + ".")


class CaError(FleetError):
    """The CA files are missing, unreadable or a rotation is refused."""


class CertificateError(InvalidInputError):
    """A CSR or certificate is refused (malformed, wrong key, wrong name, expired, foreign)."""


def spki_hash(public_key: Any) -> str:
    """``sha256:<hex>`` over the DER SubjectPublicKeyInfo of ``public_key``."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


key_fingerprint = spki_hash
"""A device key's fingerprint (the revoked-keys list is keyed by it)."""


def device_uri(device_id: str) -> str:
    return f"urn:edgefleet:device:{device_id}"


def renew_at(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """When a certificate is due for renewal: 2/3 of its lifetime."""
    return not_before + (not_after - not_before) * 2 / 3


@dataclass(frozen=True)
class DeviceCert:
    """A verified device certificate."""

    device_id: str
    serial: int
    key_fingerprint: str
    issuer_hash: str
    not_before: dt.datetime
    not_after: dt.datetime
    public_key: Any


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _accepted_key(public_key: Any) -> None:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1":
        return
    kind = type(public_key).__name__.removeprefix("_").replace("PublicKey", "")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        kind = f"EC {public_key.curve.name}"
    raise CertificateError(f"key type {kind} is not accepted: use Ed25519 or ECDSA P-256")


def _ca_cert(key: ec.EllipticCurvePrivateKey, subject: x509.Name, issuer: x509.Name,
             signer: ec.EllipticCurvePrivateKey, not_before: dt.datetime,
             not_after: dt.datetime, path_length: int | None) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer.public_key()), critical=False)
            .sign(signer, hashes.SHA256()))


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                         decipher_only=False)


class FleetCA:
    """The CA files in ``DATA/ca/``: ``ca.crt``/``ca.key`` (current), ``previous.crt``/
    ``previous.key`` and ``cross.crt`` during a rollover, ``bundle.pem`` (what is trusted),
    ``server.crt``/``server.key``, ``server-client.crt``/``server-client.key``, ``state.json``."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self._lock = threading.RLock()
        self._stamp: tuple[int, int] | None = None
        self._key: ec.EllipticCurvePrivateKey
        self._cert: x509.Certificate
        self._previous: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
        self._overlap_until: float | None = None

    # -- creation and loading -----------------------------------------------------------
    @classmethod
    def load_or_create(cls, data_root: Path, *, now: dt.datetime | None = None) -> FleetCA:
        """Open the CA of the data directory ``data_root`` (its ``ca/`` folder), creating a
        new CA there on first use."""
        ca = cls(Path(data_root) / CA_DIR)
        with ca._lock:
            try:
                ca.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not (ca.dir / "ca.crt").exists():
                    key = _new_key()
                    cert = ca._self_signed(key, _now(now))
                    atomic_write_bytes(ca.dir / "ca.key", _key_pem(key), mode=0o600)
                    atomic_write_bytes(ca.dir / "ca.crt", _pem(cert))
                    ca._write_state({"overlap_until": None})
            except OSError as e:
                raise CaError(f"cannot create the fleet CA in {ca.dir}: {e}") from e
            ca._refresh(now)
        return ca

    def _self_signed(self, key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
        short = spki_hash(key.public_key())[7:19]
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"edgefleet fleet CA {short}")])
        return _ca_cert(key, name, name, key, now - SKEW, now + dt.timedelta(days=CA_DAYS), None)

    def _write_state(self, state: dict[str, Any]) -> None:
        atomic_write_bytes(self.dir / "state.json", json.dumps(state).encode() + b"\n")

    def _refresh(self, now: dt.datetime | None = None) -> None:
        """Re-read the files if ``state.json`` changed; end an overlap that is over."""
        state_path = self.dir / "state.json"
        try:
            st = state_path.stat()
            stamp = (st.st_mtime_ns, st.st_ino)
            if stamp != self._stamp:
                state = json.loads(state_path.read_text())
                self._key = serialization.load_pem_private_key(  # type: ignore[assignment]
                    (self.dir / "ca.key").read_bytes(), None)
                self._cert = x509.load_pem_x509_certificate((self.dir / "ca.crt").read_bytes())
                self._overlap_until = state.get("overlap_until")
                self._previous = None
                if self._overlap_until is not None:
                    prev_key = serialization.load_pem_private_key(
                        (self.dir / "previous.key").read_bytes(), None)
                    prev_cert = x509.load_pem_x509_certificate(
                        (self.dir / "previous.crt").read_bytes())
                    self._previous = (prev_cert, prev_key)  # type: ignore[assignment]
                self._stamp = stamp
                self._write_bundle()
        except (OSError, ValueError, KeyError) as e:
            raise CaError(f"cannot read the fleet CA in {self.dir}: {e}") from e
        if self._overlap_until is not None and _now(now).timestamp() >= self._overlap_until:
            self._end_overlap()

    def _end_overlap(self) -> None:
        for name in ("previous.key", "previous.crt", "cross.crt"):
            (self.dir / name).unlink(missing_ok=True)
        self._write_state({"overlap_until": None})
        self._stamp = None
        self._refresh()

    def _trusted(self) -> list[x509.Certificate]:
        return [self._cert] + ([self._previous[0]] if self._previous else [])

    def _write_bundle(self) -> None:
        data = b"".join(_pem(c) for c in self._trusted())
        path = self.dir / "bundle.pem"
        if not path.exists() or path.read_bytes() != data:
            atomic_write_bytes(path, data)

    # -- what the rest of the server asks -------------------------------------------------
    def ca_hash(self) -> str:
        """``sha256:<hex>`` of the current CA's SubjectPublicKeyInfo (the enrolment pin)."""
        with self._lock:
            self._refresh()
            return spki_hash(self._cert.public_key())

    def trusted_hashes(self) -> list[str]:
        with self._lock:
            self._refresh()
            return [spki_hash(c.public_key()) for c in self._trusted()]

    def trust_bundle_path(self) -> Path:
        """PEM file of every CA trusted now (current first)."""
        with self._lock:
            self._refresh()
            return self.dir / "bundle.pem"

    def trust_bundle_pem(self) -> str:
        return self.trust_bundle_path().read_text()

    def overlap_until(self) -> float | None:
        with self._lock:
            self._refresh()
            return self._overlap_until

    def issue_device_cert(self, csr_pem: str | bytes, device_id: str, *,
                          now: dt.datetime | None = None,
                          days: float = DEVICE_CERT_DAYS) -> str:
        """A PEM certificate for the key of ``csr_pem``, named ``device_id`` (CN and SAN
        ``urn:edgefleet:device:<id>``), client-auth only, valid ``days``."""
        csr = parse_csr(csr_pem, device_id)
        with self._lock:
            self._refresh(now)
            t = _now(now)
            cert = (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
                    .issuer_name(self._cert.subject).public_key(csr.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(t - SKEW).not_valid_after(t + dt.timedelta(days=days))
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                    .add_extension(_leaf_usage(), critical=True)
                    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                    .add_extension(x509.SubjectAlternativeName(
                        [x509.UniformResourceIdentifier(device_uri(device_id))]), critical=False)
                    .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                        self._key.public_key()), critical=False)
                    .sign(self._key, hashes.SHA256()))
            with (self.dir / ISSUED).open("a", encoding="utf-8") as f:  # for the CRL
                f.write(json.dumps({"serial": cert.serial_number, "device_id": device_id,
                                    "not_after": cert.not_valid_after_utc.timestamp()}) + "\n")
            return _pem(cert).decode()

    def verify_device_cert(self, cert_pem: str | bytes, *,
                           now: dt.datetime | None = None) -> DeviceCert:
        """Check a device certificate: issued by a CA trusted now, within its dates, a
        device name; ``CertificateError`` says which check failed."""
        try:
            data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
            cert = x509.load_pem_x509_certificate(data)
        except ValueError as e:
            raise CertificateError(f"certificate is not a PEM X.509 certificate: {e}") from e
        with self._lock:
            self._refresh(now)
            issuer = None
            for ca in self._trusted():
                if cert.issuer != ca.subject:
                    continue
                try:
                    cert.verify_directly_issued_by(ca)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                issuer = ca
                break
        if issuer is None:
            raise CertificateError("certificate is not issued by this fleet's CA")
        t = _now(now)
        if t > cert.not_valid_after_utc:
            raise CertificateError(f"certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        if t < cert.not_valid_before_utc:
            raise CertificateError("certificate is not valid yet")
        device_id = _common_name(cert)
        if device_id is None or is_server_name(device_id):
            raise CertificateError("certificate does not name a device")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound as e:
            raise CertificateError("certificate has no device name in its SAN") from e
        if device_uri(device_id) not in san.get_values_for_type(x509.UniformResourceIdentifier):
            raise CertificateError("certificate's SAN does not carry its CN's device id")
        return DeviceCert(device_id=device_id, serial=cert.serial_number,
                          key_fingerprint=spki_hash(cert.public_key()),
                          issuer_hash=spki_hash(issuer.public_key()),
                          not_before=cert.not_valid_before_utc,
                          not_after=cert.not_valid_after_utc, public_key=cert.public_key())

    def server_cert_files(self, hostnames: Sequence[str] | None = None, *,
                          now: dt.datetime | None = None) -> tuple[Path, Path]:
        """(certificate chain, key) for the server's TLS listeners; SANs are ``hostnames``
        (default: localhost, 127.0.0.1 and this machine's hostname)."""
        names = list(hostnames) if hostnames else default_hostnames()
        return self._leaf_files("server", names[0], names, ExtendedKeyUsageOID.SERVER_AUTH, now)

    def server_client_cert_files(self, *, now: dt.datetime | None = None,
                                 replica: str | None = None) -> tuple[Path, Path]:
        """(certificate chain, key) the server's MQTT client presents (CN ``edgefleet-server``,
        or ``edgefleet-server.REPLICA`` for one of several replicas: an external broker that
        takes the CN as username and client id then keeps each replica's session apart)."""
        if replica is None:
            return self._leaf_files("server-client", SERVER_CN, [],
                                    ExtendedKeyUsageOID.CLIENT_AUTH, now)
        return self._leaf_files(f"server-client-{replica}", f"{SERVER_CN}.{replica}", [],
                                ExtendedKeyUsageOID.CLIENT_AUTH, now)

    def server_control_cert_files(self, *, now: dt.datetime | None = None) -> tuple[Path, Path]:
        """(certificate chain, key) the server presents to Mosquitto's dynamic-security
        plugin to cut a revoked device off (CN ``CONTROL_CN``, ``broker_control.py``)."""
        return self._leaf_files("server-control", CONTROL_CN, [],
                                ExtendedKeyUsageOID.CLIENT_AUTH, now)

    def _leaf_files(self, stem: str, cn: str, names: list[str], usage: x509.ObjectIdentifier,
                    now: dt.datetime | None) -> tuple[Path, Path]:
        cert_path, key_path = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        with self._lock:
            self._refresh(now)
            t = _now(now)
            chain = [] if self._previous is None else [self._cross()]
            if not self._leaf_current(cert_path, key_path, cn, names, chain, t):
                key = _new_key()
                builder = (x509.CertificateBuilder()
                           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                           .issuer_name(self._cert.subject).public_key(key.public_key())
                           .serial_number(x509.random_serial_number())
                           .not_valid_before(t - SKEW)
                           .not_valid_after(t + dt.timedelta(days=SERVER_CERT_DAYS))
                           .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                           .add_extension(_leaf_usage(), critical=True)
                           .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                               self._key.public_key()), critical=False))
                if names:
                    builder = builder.add_extension(
                        x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
                cert = builder.sign(self._key, hashes.SHA256())
                atomic_write_bytes(key_path, _key_pem(key), mode=0o600)
                atomic_write_bytes(cert_path, b"".join(_pem(c) for c in [cert, *chain]))
        return cert_path, key_path

    def _leaf_current(self, cert_path: Path, key_path: Path, cn: str, names: list[str],
                      chain: list[x509.Certificate], t: dt.datetime) -> bool:
        if not (cert_path.exists() and key_path.exists()):
            return False
        certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
        leaf = certs[0]
        if certs[1:] != chain or leaf.issuer != self._cert.subject or _common_name(leaf) != cn:
            return False
        try:
            leaf.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        if t >= renew_at(leaf.not_valid_before_utc, leaf.not_valid_after_utc):
            return False
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = sorted(map(repr, san))
        except x509.ExtensionNotFound:
            have = []
        return have == sorted(repr(_general_name(n)) for n in names)

    def _cross(self) -> x509.Certificate:
        """The current CA's key and name, signed by the previous CA (until the overlap ends)."""
        path = self.dir / "cross.crt"
        if path.exists():
            return x509.load_pem_x509_certificate(path.read_bytes())
        raise CaError(f"{path} is missing while a rollover overlaps")

    # -- certificate revocation lists (Mosquitto's crlfile) -----------------------------
    def issued_serials(self, device_ids: set[str], *, now: dt.datetime | None = None) -> list[int]:
        """Serials of the unexpired certificates issued to ``device_ids``."""
        t = _now(now).timestamp()
        out: list[int] = []
        try:
            lines = (self.dir / ISSUED).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if row.get("device_id") in device_ids and row.get("not_after", 0) > t:
                out.append(int(row["serial"]))
        return out

    def prune_issued(self, *, now: dt.datetime | None = None) -> int:
        """Drop expired certificates from ``issued.jsonl`` (it grows by one line a renewal);
        returns how many lines went."""
        t = _now(now).timestamp()
        path = self.dir / ISSUED
        with self._lock:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                return 0
            keep = []
            for line in lines:
                try:
                    if json.loads(line).get("not_after", 0) > t:
                        keep.append(line)
                except ValueError:
                    continue
            if len(keep) != len(lines):
                atomic_write_bytes(path, "".join(f"{line}\n" for line in keep).encode())
            return len(lines) - len(keep)

    def write_crl(self, serials: Sequence[int], *, now: dt.datetime | None = None) -> Path:
        """``crl.pem``: one CRL per CA trusted now, each listing ``serials``, valid
        ``CRL_DAYS`` (rewritten at every revocation, rotation and server start)."""
        with self._lock:
            self._refresh(now)
            t = _now(now)
            pairs = [(self._cert, self._key)] + ([self._previous] if self._previous else [])
            out = b""
            for ca, key in pairs:
                builder = (x509.CertificateRevocationListBuilder()
                           .issuer_name(ca.subject).last_update(t - SKEW)
                           .next_update(t + dt.timedelta(days=CRL_DAYS))
                           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                               key.public_key()), critical=False))
                for serial in sorted(set(serials)):
                    builder = builder.add_revoked_certificate(
                        x509.RevokedCertificateBuilder().serial_number(serial)
                        .revocation_date(t - SKEW).build())
                out += builder.sign(key, hashes.SHA256()).public_bytes(
                    serialization.Encoding.PEM)
            path = self.dir / CRL
            atomic_write_bytes(path, out)
            return path

    def crl_path(self) -> Path:
        """``crl.pem`` (an empty CRL per trusted CA until a device is revoked)."""
        path = self.dir / CRL
        if not path.exists():
            self.write_crl([])
        return path

    # -- rollover -------------------------------------------------------------------------
    def rotate(self, *, overlap_s: float = DEFAULT_OVERLAP_S,
               now: dt.datetime | None = None) -> str:
        """Make a new CA; the current one stays trusted for ``overlap_s``. Returns the new
        hash. Refused while a previous rollover still overlaps."""
        if overlap_s <= 0:
            raise CaError("the overlap must be positive")
        with self._lock:
            self._refresh(now)
            if self._previous is not None:
                until = dt.datetime.fromtimestamp(self._overlap_until or 0, dt.UTC)
                raise CaError(f"a CA rollover overlaps until {until:%Y-%m-%d %H:%M} UTC; "
                              "rotate again after that")
            t = _now(now)
            old_key, old_cert = self._key, self._cert
            key = _new_key()
            cert = self._self_signed(key, t)
            until = t + dt.timedelta(seconds=overlap_s)
            cross = _ca_cert(key, cert.subject, old_cert.subject, old_key, t - SKEW, until, 0)
            atomic_write_bytes(self.dir / "previous.key", _key_pem(old_key), mode=0o600)
            atomic_write_bytes(self.dir / "previous.crt", _pem(old_cert))
            atomic_write_bytes(self.dir / "cross.crt", _pem(cross))
            atomic_write_bytes(self.dir / "ca.key", _key_pem(key), mode=0o600)
            atomic_write_bytes(self.dir / "ca.crt", _pem(cert))
            self._write_state({"overlap_until": until.timestamp()})
            self._stamp = None
            self._refresh(now)
            return spki_hash(key.public_key())


def parse_csr(csr_pem: str | bytes, device_id: str) -> x509.CertificateSigningRequest:
    """A CSR that is well-formed, self-signed, of an accepted key type, and names
    ``device_id`` (or nothing) in its CN; ``CertificateError`` otherwise."""
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    if len(data) > MAX_CSR_BYTES:
        raise CertificateError(f"CSR of {len(data)} bytes is over {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(data)
        public_key = csr.public_key()
    except (ValueError, TypeError) as e:
        raise CertificateError(f"CSR is not a PEM certificate signing request: {e}") from e
    _accepted_key(public_key)
    if not csr.is_signature_valid:
        raise CertificateError("CSR signature does not verify against its own key")
    if is_server_name(device_id):
        raise CertificateError(f"{device_id!r} is a server's name, not a device id")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names and (len(names) != 1 or names[0].value != device_id):
        raise CertificateError(f"CSR names {names[0].value!r}, not device {device_id!r}")
    return csr


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        return None
    return names[0].value


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def default_hostnames() -> list[str]:
    """localhost, 127.0.0.1 and this machine's hostname (the default server SANs)."""
    names = ["localhost", "127.0.0.1"]
    host = socket.gethostname()
    if host and host not in names:
        names.append(host)
    return names
