"""The configuration an external Mosquitto (2.x) needs to enforce the embedded broker's rules.

With TLS (the default, ``fleet-server mosquitto-config --out DIR``), ``MosquittoFiles.write``
with ``tls`` writes into one directory:

- ``mosquitto.conf``: a TLS listener (``cafile`` = the fleet CA bundle, the server's
  ``certfile``/``keyfile``), ``require_certificate true`` (a client without a certificate
  that chains to the fleet CA, or with an expired one, fails the handshake),
  ``use_identity_as_username true`` (a client's username is its certificate's CN, the
  device id) and ``use_username_as_clientid true`` (its client id becomes that CN too, so a
  device that names another's client id gets its own session, never the other's);
- ``ca.pem``, ``server.crt``, ``server.key``: copies of the fleet's files, readable by the
  broker's user; ``crlfile`` names the fleet CA's ``crl.pem`` in the data directory itself
  (not a copy), so a revocation takes effect at Mosquitto's next reload (SIGHUP);
- ``plugin`` Mosquitto's dynamic-security plugin (when installed: ``find_dynsec_plugin``)
  with ``dynamic-security.json`` (written only if absent: the broker saves its changes
  there) holding the role a revoked device gets; the server's control identity publishes
  to ``$CONTROL/dynamic-security/v1`` to close a revoked device's open connection
  (``fleet_server/broker_control.py``);
- ``edgefleet.acl``: as below.

Without ``tls`` (``--insecure``), it writes:

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
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet_server.broker_auth import SERVER_USERNAME
from fleet_server.broker_control import CONTROL_TOPIC, RESPONSE_TOPIC, revoked_role
from fleet_server.ca import CONTROL_CN
from ota.limits import DEFAULT_LIMITS, MiB
from ota.topics import DEVICES, DeviceTopics, validate_device_id

PBKDF2_ITERATIONS = 101
"""What ``mosquitto_passwd`` of Mosquitto 2.0 uses for its ``$7$`` hashes."""

MAX_PACKET_SIZE = DEFAULT_LIMITS.max_chunk_frame + 1024
"""Protocol 1's largest payload (a chunk frame) plus room for its topic and headers."""

_PLACEHOLDER = "edgefleet-placeholder"

DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
DYNSEC_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
               "/usr/lib/arm-linux-gnueabihf", "/usr/lib/mosquitto", "/usr/local/lib",
               "/usr/lib", "/usr/lib64")
"""Where Debian, Ubuntu, Alpine, Fedora and a source build put the plugin."""


def find_dynsec_plugin() -> Path | None:
    """The installed dynamic-security plugin (``EDGEFLEET_DYNSEC_PLUGIN`` first), or None."""
    env = os.environ.get("EDGEFLEET_DYNSEC_PLUGIN")
    for d in ([] if env else list(DYNSEC_DIRS)):
        if (Path(d) / DYNSEC_PLUGIN).is_file():
            return Path(d) / DYNSEC_PLUGIN
    return Path(env) if env else None


def dynsec_config() -> dict[str, object]:
    """The plugin's first configuration: no clients (a device not in it is left to the ACL
    file), every default access deferred to the ACL file, and the revoked role."""
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                                 "subscribe": False, "unsubscribe": False},
            "clients": [], "groups": [], "roles": [revoked_role()]}


def password_hash(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """``$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>``, as ``mosquitto_passwd`` writes."""
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


SHARE_GROUP = "edgefleet"
"""The shared-subscription group every server replica's bridge subscribes in
(``$share/edgefleet/devices/+/telemetry``, ...): the broker hands each device report to one
replica of the group (docs/mqtt-protocol.md, "Shared subscriptions")."""


def replica_username(replica: str) -> str:
    """The broker username (and TLS CN) of server replica ``replica``."""
    return f"{SERVER_USERNAME}.{replica}"


def acl_text(server_username: str = SERVER_USERNAME, replicas: tuple[str, ...] = ()) -> str:
    """Per-device ``pattern`` lines (``%u`` = the authenticated username = device id), then
    the server's username and each replica's (``edgefleet-server.REPLICA``): every device
    topic, also through the ``$share/edgefleet/`` shared-subscription form."""
    topics = DeviceTopics(_PLACEHOLDER)

    def pattern(access: str, topic: str) -> str:
        return f"pattern {access} {topic.replace(topics.base, f'{DEVICES}/%u', 1)}"

    lines = [pattern("write", t) for t in topics.device_publications]
    lines += [pattern("read", t) for t in topics.device_subscriptions]
    lines += ["", f"user {CONTROL_CN}", f"topic write {CONTROL_TOPIC}",
              f"topic read {RESPONSE_TOPIC}"]
    for user in (server_username, *(replica_username(r) for r in replicas)):
        lines += ["", f"user {user}", f"topic readwrite {DEVICES}/#",
                  f"topic read $share/{SHARE_GROUP}/{DEVICES}/#"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MosquittoTls:
    """The fleet's files Mosquitto serves TLS with (PEM): CA bundle, certificate, key, and
    the fleet CA's live revocation list (``crlfile``, read in place: the server rewrites it
    at every revocation, Mosquitto rereads it on SIGHUP)."""

    ca_bundle: Path
    cert: Path
    key: Path
    crl: Path | None = None
    dynsec_plugin: Path | None = None


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

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "server.key"

    @property
    def dynsec_file(self) -> Path:
        return self.directory / "dynamic-security.json"

    def write(self, *, port: int, server_password: str | None = None, host: str = "127.0.0.1",
              persistence: bool = False, max_queued_messages: int = 100000,
              max_queued_bytes: int = 64 * MiB, extra: str = "",
              tls: MosquittoTls | None = None, replicas: tuple[str, ...] = ()) -> None:
        """Write conf and ACL; with ``tls`` the fleet's CA, certificate and key, without it a
        password file holding only the server's credentials (``server_password``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = [f"listener {port} {host}", "allow_anonymous false"]
        if tls is not None and tls.dynsec_plugin is not None:
            conf = [f"plugin {tls.dynsec_plugin}",
                    f"plugin_opt_config_file {self.dynsec_file}", *conf]
            if not self.dynsec_file.exists():
                _write_atomic(self.dynsec_file, json.dumps(dynsec_config(), indent=1))
        if tls is not None:
            for src, dst in ((tls.ca_bundle, self.ca_file), (tls.cert, self.cert_file),
                             (tls.key, self.key_file)):
                _write_atomic(dst, Path(src).read_text(encoding="utf-8"))
            conf += [f"cafile {self.ca_file}", f"certfile {self.cert_file}",
                     f"keyfile {self.key_file}", "tls_version tlsv1.2",
                     "require_certificate true", "use_identity_as_username true"]
            if tls.crl is not None:
                conf.append(f"crlfile {Path(tls.crl).resolve()}")
        else:
            if server_password is None:
                raise ValueError("a plain (insecure) listener needs the server's password")
            conf.append(f"password_file {self.password_file}")
        conf += [f"acl_file {self.acl_file}",
                "use_username_as_clientid true",
                f"max_packet_size {MAX_PACKET_SIZE}",
                f"max_queued_messages {max_queued_messages}",
                f"max_queued_bytes {max_queued_bytes}",
                f"persistence {'true' if persistence else 'false'}"]
        if persistence:
            conf.append(f"persistence_location {self.directory}/")
        _write_atomic(self.conf, "\n".join(conf) + "\n" + extra)
        _write_atomic(self.acl_file, acl_text(replicas=replicas))
        if tls is None and server_password is not None:
            _write_atomic(self.password_file, "")
            for user in (SERVER_USERNAME, *(replica_username(r) for r in replicas)):
                self.add_client(user, server_password)

    def add_client(self, username: str, password: str) -> None:
        """Add or replace ``username``'s line (a device id, or the server's username)."""
        if username != SERVER_USERNAME and not username.startswith(SERVER_USERNAME + "."):
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


def write_fleet_config(*, data_dir: Path, out: Path, port: int = 8883, host: str = "0.0.0.0",  # noqa: S104 - the broker's default bind, written to its config
                       hostnames: tuple[str, ...] = (), extra: str = "",
                       replicas: tuple[str, ...] = ()) -> MosquittoFiles:
    """``fleet-server mosquitto-config``: a TLS Mosquitto for the fleet of ``data_dir``
    (its CA is created there if the server has not started yet), with a server certificate
    for ``hostnames`` (default: localhost, 127.0.0.1 and this machine's name)."""
    from fleet_server.ca import FleetCA, default_hostnames

    ca = FleetCA.load_or_create(data_dir)
    names = list(dict.fromkeys([*hostnames, *default_hostnames()]))
    # its own server certificate files ("broker" ones would be a second set to renew):
    # the same CA, the names devices reach the broker by
    cert, key = ca.server_cert_files(names)
    files = MosquittoFiles(Path(out))
    files.write(port=port, host=host, extra=extra, replicas=replicas,
                tls=MosquittoTls(ca_bundle=ca.trust_bundle_path(), cert=cert, key=key,
                                 crl=ca.crl_path(), dynsec_plugin=find_dynsec_plugin()))
    return files
