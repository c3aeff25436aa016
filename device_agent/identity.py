"""The device's certificate: pinned first contact, CSR, storage, renewal (docs/security.md).

Files in ``DIR/keys/`` (all 0600): ``device.key`` (Ed25519, made here, never leaves the
device; it also signs reports), ``device.crt`` (issued by the fleet CA, 7 days) and
``ca-bundle.pem`` (the fleet CAs this device trusts for the server and the broker).

- Pinning: an enrolment token ends in the fleet CA's hash (``efe_<secret>.sha256:<hex>``,
  SHA-256 of the CA certificate's SubjectPublicKeyInfo, as ``kubeadm join
  --discovery-token-ca-cert-hash``). ``pinned_ca`` fetches ``GET /api/v1/ca`` (public, no
  secret sent) and keeps only the CA certificate whose hash is the pin; a server whose
  bundle has no such CA is refused before the token or anything else is sent. The enrol
  request then goes over HTTPS verified against that one CA. No trust on first use.
- Renewal: once 2/3 of the certificate's life has passed (``due``), ``renew`` posts the
  current certificate and a new CSR signed by the same key to
  ``POST /api/v1/devices/{id}/certificate`` over HTTPS verified against ``ca-bundle.pem``;
  the server checks the certificate chains to a CA it trusts now (so renewal works across
  a server restart and, during its overlap, across a CA rollover), and answers the new
  certificate and the current bundle, which replace the files atomically.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from device_agent.errors import EnrolError
from device_agent.persist import atomic_write_bytes
from model_bundles import keys as mb_keys

if TYPE_CHECKING:  # httpx is imported by the calls that talk to the server, not at start
    import httpx

__all__ = ["Renewer", "ca_bundle_path", "cert_path", "due", "make_csr", "pinned_ca", "renew",
           "split_token", "spki_hash", "store"]

log = logging.getLogger(__name__)

PIN_PREFIX = "sha256:"
MAX_RESPONSE = 256 * 1024


def cert_path(agent_dir: Path) -> Path:
    return Path(agent_dir) / "keys" / "device.crt"


def ca_bundle_path(agent_dir: Path) -> Path:
    return Path(agent_dir) / "keys" / "ca-bundle.pem"


def key_path(agent_dir: Path) -> Path:
    return Path(agent_dir) / "keys" / "device.key"


def spki_hash(public_key: Any) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return PIN_PREFIX + hashlib.sha256(der).hexdigest()


def _valid_pin(pin: str) -> bool:
    digest = pin.removeprefix(PIN_PREFIX)
    return pin.startswith(PIN_PREFIX) and len(digest) == 64 and all(
        c in "0123456789abcdef" for c in digest)


def split_token(token: str, ca_hash: str | None = None) -> str:
    """The CA pin for ``token``: the one it ends in (``.sha256:<hex>``) or ``ca_hash``;
    both given must agree. ``EnrolError`` when there is none: no trust on first use."""
    _, sep, embedded = token.rpartition(".")
    embedded = embedded if sep else ""
    if embedded and not _valid_pin(embedded):
        embedded = ""
    if ca_hash is not None and not _valid_pin(ca_hash):
        raise EnrolError(f"--ca-hash {ca_hash!r} is not sha256:<64 hex digits>")
    if embedded and ca_hash and embedded != ca_hash:
        raise EnrolError("--ca-hash differs from the CA hash the token carries")
    pin = embedded or ca_hash
    if not pin:
        raise EnrolError("the token carries no fleet CA hash and no --ca-hash was given: "
                         "refusing to trust a server on first use (mint a new token with "
                         "fleet-server enrol-token)")
    return pin


def _get_json(client: httpx.Client, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    import httpx

    try:
        resp = client.request(method, url, **kw)
    except httpx.HTTPError as e:
        raise EnrolError(f"cannot reach {url}: {e}") from e
    if len(resp.content) > MAX_RESPONSE:
        raise EnrolError(f"{url} answered {len(resp.content)} bytes, too large")
    try:
        return resp.status_code, resp.json()
    except ValueError as e:
        raise EnrolError(f"{url} answered {resp.status_code} with non-JSON body") from e


def pinned_ca(server: str, pin: str, *, timeout_s: float = 15.0,
              transport: httpx.BaseTransport | None = None) -> bytes:
    """The PEM of the fleet CA whose hash is ``pin``, from the server's public bundle;
    ``EnrolError`` when the server has no such CA (nothing is sent but the GET)."""
    import httpx

    url = server.rstrip("/") + "/api/v1/ca"
    # Not verified yet: what we learn here is checked against the pin, and nothing secret
    # goes out on this connection.
    with httpx.Client(timeout=timeout_s, transport=transport, verify=False) as client:  # noqa: S501 - checked against the pin below
        status, data = _get_json(client, "GET", url)
    if status != 200 or not isinstance(data, dict) or not isinstance(data.get("bundle"), str):
        raise EnrolError(f"{url} answered {status} without a CA bundle: is this a fleet server?")
    try:
        certs = x509.load_pem_x509_certificates(data["bundle"].encode())
    except ValueError as e:
        raise EnrolError(f"the server's CA bundle is not PEM certificates: {e}") from e
    for cert in certs:
        if spki_hash(cert.public_key()) == pin:
            return cert.public_bytes(serialization.Encoding.PEM)
    found = ", ".join(spki_hash(c.public_key()) for c in certs) or "none"
    raise EnrolError(f"the server's fleet CA does not match the token's CA hash {pin} "
                     f"(the server has {found}): refusing to enrol; wrong server, or "
                     "someone in between")


def verified_client(server: str, cadata: bytes, *, timeout_s: float,
                    transport: httpx.BaseTransport | None) -> httpx.Client:
    """An HTTP client for ``server``: HTTPS verified against ``cadata`` only."""
    import httpx

    verify: ssl.SSLContext | bool = True
    if server.startswith("https://"):
        verify = ssl.create_default_context(cadata=cadata.decode())
    return httpx.Client(timeout=timeout_s, transport=transport, verify=verify)


def make_csr(key: Ed25519PrivateKey, device_id: str) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, None))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def check_issued(cert_pem: str, bundle_pem: str, key: Ed25519PrivateKey, device_id: str,
                 anchor: bytes) -> None:
    """The certificate is for our key and id and chains to a CA in the bundle, and the
    bundle holds ``anchor`` (the pinned or currently trusted CA)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        bundle = x509.load_pem_x509_certificates(bundle_pem.encode())
        anchors = x509.load_pem_x509_certificates(anchor)
    except ValueError as e:
        raise EnrolError(f"the server sent an unreadable certificate or bundle: {e}") from e
    if spki_hash(cert.public_key()) != spki_hash(key.public_key()):
        raise EnrolError("the issued certificate is not for this device's key")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [device_id]:
        raise EnrolError(f"the issued certificate does not name {device_id!r}")
    if not {spki_hash(a.public_key()) for a in anchors} & {spki_hash(c.public_key())
                                                           for c in bundle}:
        raise EnrolError("the server's CA bundle no longer holds a CA this device trusts")
    for ca in bundle:
        try:
            cert.verify_directly_issued_by(ca)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise EnrolError("the issued certificate is not signed by a CA in the bundle")


def store(agent_dir: Path, cert_pem: str, bundle_pem: str) -> None:
    atomic_write_bytes(cert_path(agent_dir), cert_pem.encode(), mode=0o600)
    atomic_write_bytes(ca_bundle_path(agent_dir), bundle_pem.encode(), mode=0o600)


def not_after(agent_dir: Path) -> dt.datetime | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path(agent_dir).read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc


def due(agent_dir: Path, now: dt.datetime | None = None) -> bool:
    """Whether the certificate has passed 2/3 of its life (False without one)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path(agent_dir).read_bytes())
    except (OSError, ValueError):
        return False
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return (now or dt.datetime.now(dt.UTC)) >= start + (end - start) * 2 / 3


def renew(agent_dir: Path, *, server: str, device_id: str, timeout_s: float = 15.0,
          transport: httpx.BaseTransport | None = None) -> dt.datetime:
    """Trade the current certificate for a new one; returns its expiry. ``EnrolError``
    says why the server refused (expired, revoked, another fleet's CA) or was unreachable;
    the current files are kept then."""
    key = mb_keys.load_private_key(key_path(agent_dir))
    anchor = ca_bundle_path(agent_dir).read_bytes()
    body = {"certificate": cert_path(agent_dir).read_text(), "csr": make_csr(key, device_id)}
    url = f"{server.rstrip('/')}/api/v1/devices/{device_id}/certificate"
    with verified_client(server, anchor, timeout_s=timeout_s, transport=transport) as client:
        status, data = _get_json(client, "POST", url, json=body)
    if status != 200 or not isinstance(data, dict):
        detail = data.get("detail") if isinstance(data, dict) else data
        raise EnrolError(f"certificate renewal refused ({status}): {detail}")
    try:
        cert_pem, bundle_pem = data["certificate"], data["ca_bundle"]
    except KeyError as e:
        raise EnrolError(f"renewal answer is missing {e}") from e
    check_issued(cert_pem, bundle_pem, key, device_id, anchor)
    store(agent_dir, cert_pem, bundle_pem)
    end = not_after(agent_dir)
    if end is None:
        raise EnrolError("the renewed certificate could not be read back")
    return end


class Renewer:
    """A daemon thread that renews the certificate once it is ``due``: checked at start
    and every ``check_s``; a failure is logged and tried again at the next check."""

    def __init__(self, agent_dir: Path, *, server: str, device_id: str,
                 check_s: float = 600.0) -> None:
        self.dir, self.server, self.device_id = Path(agent_dir), server, device_id
        self.check_s = check_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> dt.datetime | None:
        """Renew if due; the new expiry, or None (not due, no certificate, or failed)."""
        if not due(self.dir):
            return None
        try:
            end = renew(self.dir, server=self.server, device_id=self.device_id)
        except (EnrolError, OSError, ValueError) as e:
            log.warning("certificate renewal failed (next try in %.0f s): %s", self.check_s, e)
            return None
        log.info("device certificate renewed, valid until %s", end.isoformat())
        return end

    def start(self) -> Renewer:
        if cert_path(self.dir).exists():
            self._thread = threading.Thread(target=self._run, name="edgefleet-cert-renew",
                                            daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.check_once()
            if self._stop.wait(self.check_s):
                return

    def stop(self) -> None:
        self._stop.set()
