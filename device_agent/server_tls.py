"""How the agent reaches its server and broker over TLS: verified against the fleet CA
bundle it pinned at enrolment (``DIR/keys/ca-bundle.pem``), showing its own certificate to
the broker (``DIR/keys/device.crt`` with ``device.key``). See docs/security.md, "Transport".

The files are re-read for every HTTPS request and before every MQTT connect, so a renewed
certificate or a CA bundle extended by a rollover takes effect without a restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from device_agent.mqtt_link import LinkTls

__all__ = ["ca_bundle", "http_verify", "link_tls", "untrusted_server"]

KEYS = "keys"


def ca_bundle(agent_dir: Path) -> Path:
    return Path(agent_dir) / KEYS / "ca-bundle.pem"


def link_tls(agent_dir: Path, tls: bool) -> LinkTls | None:
    """The MQTT link's TLS files (None for a plain ``mqtt://`` broker, ``--insecure``)."""
    if not tls:
        return None
    keys = Path(agent_dir) / KEYS
    cert = keys / "device.crt"
    return LinkTls(ca_file=ca_bundle(agent_dir), cert_file=cert if cert.exists() else None,
                   key_file=keys / "device.key" if cert.exists() else None)


def http_verify(agent_dir: Path) -> ssl.SSLContext | bool:
    """httpx ``verify=``: the pinned fleet CA bundle when the agent has one, else the
    system's CAs (an agent enrolled with a server behind a proxy with a public
    certificate, or an ``http://`` server, where nothing is verified)."""
    path = ca_bundle(agent_dir)
    if not path.exists():
        return True
    return ssl.create_default_context(cafile=str(path))


def untrusted_server(error: BaseException) -> str | None:
    """A clear line when ``error`` (or what caused it) is a server certificate the pinned
    CA does not vouch for; None for any other error."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return ("the server's certificate is not trusted: it does not chain to the "
                    f"pinned fleet CA or does not name the host ({seen.verify_message})")
        seen = seen.__cause__ or seen.__context__
    return None
