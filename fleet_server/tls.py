"""The server's TLS material and the SSL contexts built from it (docs/security.md, "Transport").

``ServerTls`` names five PEM files: the trust bundle (the fleet CA, or an old and a new one
side by side during a rollover), the server's certificate and key (HTTPS and the embedded
broker's listener) and the server's own MQTT client certificate and key (its bridge
authenticates to the broker with it, CN ``edgefleet-server``). The files themselves come
from the fleet CA (``fleet_server/ca.py``); this module only reads them.

The identity of an MQTT client is the common name of the certificate it presented,
verified by the TLS handshake against the trust bundle (``peer_common_name``).
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleet_server.ca import FleetCA
from fleet_server.errors import FleetError

MIN_TLS = ssl.TLSVersion.TLSv1_2

INSECURE_BANNER = "INSECURE: plain HTTP/MQTT"
"""What the console shows on every page, in red, when the server runs with ``--insecure``."""

INSECURE_WARNING = (
    f"WARNING: {INSECURE_BANNER} (--insecure). Tokens, passwords, device secrets and "
    "reports cross the network unencrypted and unauthenticated; use it only on a trusted "
    "test network (docs/security.md).")


class TlsConfigError(FleetError):
    """A TLS file is missing or unusable."""


@dataclass(frozen=True)
class ServerTls:
    """Paths of the server's TLS files (PEM)."""

    ca_bundle: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def check(self) -> ServerTls:
        """Raise ``TlsConfigError`` naming the first file that is missing."""
        for name in ("ca_bundle", "cert", "key", "client_cert", "client_key"):
            path = getattr(self, name)
            if not Path(path).is_file():
                raise TlsConfigError(f"TLS {name.replace('_', ' ')} file {path} does not exist")
        return self

    def client_cert_sha256(self) -> str:
        """SHA-256 of the server's MQTT client certificate (DER): how the broker knows it."""
        try:
            cert = x509.load_pem_x509_certificate(Path(self.client_cert).read_bytes())
        except (OSError, ValueError) as e:
            raise TlsConfigError(f"cannot read {self.client_cert}: {e}") from e
        return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def uvicorn_options(self) -> dict[str, Any]:
        """``uvicorn.Config`` keywords for HTTPS with the server certificate."""
        return {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key),
                "ssl_ca_certs": str(self.ca_bundle)}


_LISTENERS: weakref.WeakKeyDictionary[ssl.SSLContext, Path] = weakref.WeakKeyDictionary()
_LISTENERS_LOCK = threading.Lock()


def track_listener(ctx: ssl.SSLContext, cert: Path) -> None:
    """Remember that listener context ``ctx`` was loaded from ``cert`` (for
    ``tls_refresh.TlsRefresher``, which reloads it when the file is re-issued)."""
    with _LISTENERS_LOCK:
        _LISTENERS[ctx] = Path(cert).resolve()


def listeners_loaded_from(cert: Path) -> list[ssl.SSLContext]:
    """The live listener contexts loaded from ``cert``."""
    cert = Path(cert).resolve()
    with _LISTENERS_LOCK:
        return [ctx for ctx, path in _LISTENERS.items() if path == cert]


def server_context(*, ca_bundle: Path, cert: Path, key: Path,
                   require_client_cert: bool) -> ssl.SSLContext:
    """A listener's context: our certificate, and (MQTT) a client certificate that chains
    to ``ca_bundle`` is required before the first MQTT byte is read."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_bundle))
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"cannot load TLS files {cert}, {key}, {ca_bundle}: {e}") from e
    ctx.minimum_version = MIN_TLS
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    track_listener(ctx, cert)
    return ctx


def peer_common_name(ssl_object: Any) -> str | None:
    """The CN of the certificate the peer presented on ``ssl_object`` (None: no TLS, or no
    verified certificate). Only called after the handshake verified the chain."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)
    except ValueError:
        return None
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else None


def fleet_server_tls(data_root: Path, hostnames: Sequence[str],
                     replica: str | None = None) -> ServerTls:
    """The server's TLS files, issued by the fleet CA of the data directory ``data_root``
    (created on first start; certificates re-issued when close to expiry, when the names
    change or after a CA rollover)."""
    ca = FleetCA.load_or_create(data_root)
    cert, key = ca.server_cert_files(list(hostnames))
    client_cert, client_key = ca.server_client_cert_files(replica=replica)
    return ServerTls(ca_bundle=ca.trust_bundle_path(), cert=cert, key=key,
                     client_cert=client_cert, client_key=client_key).check()
