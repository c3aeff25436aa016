"""The configuration an external Mosquitto (2.x) needs to enforce the embedded broker's rules.

``MosquittoFiles`` writes into one directory:

- ``mosquitto.conf``: no anonymous clients, the password file and ACL below, and
  ``use_username_as_clientid true`` (a client's id is its authenticated username, so one
  device cannot take over another's session by naming its client id);
- ``edgefleet.passwd``: one ``user:$7$...`` line per client, the PBKDF2-SHA512 format
  ``mosquitto_passwd`` writes (Mosquitto 2.0, 101 iterations, 12-byte salt);
- ``edgefleet.acl``: ``pattern`` lines with ``%u`` for every device (its own topics, from
  ``ota.topics.DeviceTopics``), and full access to device topics for the server's username.

and bounds on what a client can make Mosquitto hold (issue 14, item 5): ``max_packet_size``
(a packet larger than the protocol's largest message, a chunk frame, plus its topic and
headers disconnects its sender, as on the embedded broker; Mosquitto recommends it over
``message_size_limit``, and cannot cap payloads per topic: the server's parsers refuse a
report over 256 KiB), and ``max_queued_messages`` /
``max_queued_bytes`` per client (QoS 1 messages beyond them, for an offline or slow client,
are dropped silently: device reports are confirmed end to end by the server's ``ReportAck``,
so a dropped one stays in the device's outbox and is sent again). Mosquitto 2.0 has no
per-client publish rate limit; the server's bridge applies its own (``telemetry_limits``).

The registry keeps only the SHA-256 of a device's MQTT secret, which Mosquitto cannot check,
so a device's line is added where the plain secret is known: at enrolment
(``add_client``), then Mosquitto is told to reload (SIGHUP). See docs/operations.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet_server.broker_auth import SERVER_USERNAME
from ota.limits import DEFAULT_LIMITS, MiB
from ota.topics import DEVICES, DeviceTopics, validate_device_id

PBKDF2_ITERATIONS = 101
"""What ``mosquitto_passwd`` of Mosquitto 2.0 uses for its ``$7$`` hashes."""

MAX_PACKET_SIZE = DEFAULT_LIMITS.max_chunk_frame + 1024
"""Protocol 1's largest payload (a chunk frame) plus room for its topic and headers."""

_PLACEHOLDER = "edgefleet-placeholder"


def password_hash(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """``$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>``, as ``mosquitto_passwd`` writes."""
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def acl_text(server_username: str = SERVER_USERNAME) -> str:
    """Per-device ``pattern`` lines (``%u`` = the authenticated username = device id)."""
    topics = DeviceTopics(_PLACEHOLDER)

    def pattern(access: str, topic: str) -> str:
        return f"pattern {access} {topic.replace(topics.base, f'{DEVICES}/%u', 1)}"

    lines = [pattern("write", t) for t in topics.device_publications]
    lines += [pattern("read", t) for t in topics.device_subscriptions]
    lines += ["", f"user {server_username}", f"topic readwrite {DEVICES}/#"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MosquittoFiles:
    """The three files of one Mosquitto configured for a fleet, in ``directory``."""

    directory: Path

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def password_file(self) -> Path:
        return self.directory / "edgefleet.passwd"

    @property
    def acl_file(self) -> Path:
        return self.directory / "edgefleet.acl"

    def write(self, *, port: int, server_password: str, host: str = "127.0.0.1",
              persistence: bool = False, max_queued_messages: int = 100000,
              max_queued_bytes: int = 64 * MiB, extra: str = "") -> None:
        """Write conf, ACL and a password file holding only the server's credentials."""
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = [f"listener {port} {host}", "allow_anonymous false",
                f"password_file {self.password_file}", f"acl_file {self.acl_file}",
                "use_username_as_clientid true",
                f"max_packet_size {MAX_PACKET_SIZE}",
                f"max_queued_messages {max_queued_messages}",
                f"max_queued_bytes {max_queued_bytes}",
                f"persistence {'true' if persistence else 'false'}"]
        if persistence:
            conf.append(f"persistence_location {self.directory}/")
        _write_atomic(self.conf, "\n".join(conf) + "\n" + extra)
        _write_atomic(self.acl_file, acl_text())
        _write_atomic(self.password_file, "")
        self.add_client(SERVER_USERNAME, server_password)

    def add_client(self, username: str, password: str) -> None:
        """Add or replace ``username``'s line (a device id, or the server's username)."""
        if username != SERVER_USERNAME:
            validate_device_id(username)
        lines = [ln for ln in self._lines() if ln.partition(":")[0] != username]
        lines.append(f"{username}:{password_hash(password)}")
        _write_atomic(self.password_file, "\n".join(lines) + "\n")

    def remove_client(self, username: str) -> None:
        lines = [ln for ln in self._lines() if ln.partition(":")[0] != username]
        _write_atomic(self.password_file, "\n".join(lines) + ("\n" if lines else ""))

    def usernames(self) -> list[str]:
        return [ln.partition(":")[0] for ln in self._lines()]

    def _lines(self) -> list[str]:
        if not self.password_file.exists():
            return []
        return [ln for ln in self.password_file.read_text().splitlines() if ln.strip()]


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
