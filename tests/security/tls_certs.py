"""Client certificates for the transport tests, issued by a real ``FleetCA``: the good ones
enrolment gives a device, and the bad ones an attacker holds (another fleet's, an expired
one, one naming a different device than the client id it connects with)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from device_agent.mqtt_link import LinkTls
from fleet_server.ca import FleetCA


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path
    private_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey

    def link_tls(self, ca_bundle: Path) -> LinkTls:
        return LinkTls(ca_file=ca_bundle, cert_file=self.cert, key_file=self.key)


def issue(ca: FleetCA, out: Path, device_id: str, *, stem: str | None = None,
          now: dt.datetime | None = None, days: float = 7) -> ClientCert:
    """A fresh Ed25519 device key in ``out`` (the agent's key type; it also signs reports)
    and ``ca``'s certificate for it (CSR path, as at enrolment); ``now``/``days`` in the
    past make an expired one."""
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, None))
    pem = ca.issue_device_cert(csr.public_bytes(serialization.Encoding.PEM), device_id,
                               now=now, days=days)
    files = ClientCert(out / f"{stem or device_id}.crt", out / f"{stem or device_id}.key", key)
    files.cert.write_text(pem)
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


def expired(ca: FleetCA, out: Path, device_id: str) -> ClientCert:
    """Issued by ``ca`` ten days ago for one day."""
    ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    return issue(ca, out, device_id, stem=f"{device_id}-expired", now=ago, days=1)
