"""Server settings: every bound and port in one frozen, self-validating object."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fleet_server.telemetry_limits import TelemetryLimits

KIB = 1024
MIB = 1024**2
GIB = 1024**3
REPLICA_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class SettingsError(ValueError):
    """A server setting is out of range or malformed."""


@dataclass(frozen=True)
class BrokerUrl:
    """An external broker address: ``mqtts://host:port`` (TLS, client certificates) or
    ``mqtt://[user:pass@]host:port`` (plain, ``--insecure`` only)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parts.hostname:
            raise SettingsError(
                f"broker URL must look like mqtts://host:port or mqtt://host:port, got {url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as e:
            raise SettingsError(f"bad port in broker URL {url!r}") from e
        return cls(parts.hostname, port, parts.username, parts.password, tls)

    def public_url(self) -> str:
        """The URL without credentials (what devices are told)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerSettings:
    """What ``fleet-server serve`` is configured with."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    mqtt_port: int = 1883
    broker_url: str | None = None
    instruction_ttl_s: float = 7 * 24 * 3600.0
    telemetry_interval_s: float = 10.0
    max_upload_bytes: int = 2 * GIB
    """Largest bundle upload (``POST /api/v1/bundles``, streamed to disk)."""
    max_body_bytes: int = 64 * KIB
    """Largest body of every other request (JSON and console forms), refused before parsing."""
    max_rollout_body_bytes: int = 4 * MIB
    """Largest ``POST /api/v1/rollouts`` body (an explicit device list may be long)."""
    public_bundle_urls: bool = False
    """Serve ``GET /api/v1/bundles/by-hash/{sha256}.efb`` without credentials and with
    ``Cache-Control: public`` so a CDN or shared cache can serve bundle bytes; devices asking
    the authenticated download route are redirected there (``--public-bundle-urls``;
    the trade-off is in docs/security.md)."""
    bundle_base_url: str | None = None
    """Origin (``https://cdn.example``) devices are redirected to for bundle bytes when
    ``public_bundle_urls`` is on; unset: the server's own origin (``--bundle-base-url``)."""
    behind_tls_proxy: bool = False
    """Set when a TLS-terminating proxy fronts the server: the console cookie is then
    ``Secure`` and same-origin checks expect ``https://`` origins."""
    max_chunk_window: int = 8
    console_refresh_s: int = 5
    session_ttl_s: int = 12 * 3600
    """A console session's absolute lifetime (``--session-max``)."""
    session_idle_s: int = 30 * 60
    """A console session ends after this long without a request (``--session-idle``)."""
    login_max_per_address: int = 20
    """Console login attempts one client address may make per ``login_window_s``."""
    login_max_per_user: int = 5
    """Failed console logins one username may take per ``login_window_s``."""
    login_window_s: int = 300
    max_enrolment_ttl_s: int = 30 * 24 * 3600
    telemetry: TelemetryLimits = field(default_factory=TelemetryLimits)
    """Per-device report rate limits, ingest queue bound and retention (docs/operations.md)."""
    rollout_tick_s: float = 5.0
    """How often the rollout driver re-reads rollouts and evaluates their gates."""
    db_url: str | None = None
    """The registry database (``--db``): ``postgresql://...`` or ``sqlite:///PATH``; None is
    the SQLite file in the data directory (``registry.db``)."""
    insecure: bool = False
    """Plain HTTP and plain MQTT with passwords (``--insecure``); the default is HTTPS and
    MQTT over TLS with client certificates from the fleet CA (docs/security.md)."""
    tls_hostnames: tuple[str, ...] = ()
    """Extra names (DNS or IP) the server certificate carries besides the bind host,
    ``localhost`` and ``127.0.0.1`` (``--tls-hostname``): the names devices reach it by."""

    replica_id: str | None = None
    """This process's name among several replicas sharing one database and one MQTT v5
    broker (``--replica-id``, docs/scaling.md "Replicas"): its bridge client id and broker
    username end in it, and it consumes device reports through shared subscriptions."""
    lease_ttl_s: float = 6.0
    """How long the leader's lease (rollout driver, retention) lasts unless renewed
    (``--lease-ttl``); a killed leader is replaced within ``lease_ttl_s + lease_renew_s``."""
    lease_renew_s: float = 2.0
    """How often the leader renews its lease and the others try to take it (``--lease-renew``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.replica_id is not None and REPLICA_ID_RE.fullmatch(self.replica_id) is None:
            raise SettingsError(f"replica id must match [a-z0-9][a-z0-9-]{{0,31}}, "
                                f"got {self.replica_id[:40]!r}")
        if not 0 < self.lease_renew_s < self.lease_ttl_s:
            raise SettingsError("the lease renew interval must be positive and shorter than "
                                f"its TTL, got renew {self.lease_renew_s} s, "
                                f"TTL {self.lease_ttl_s} s")
        for name in ("port", "mqtt_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise SettingsError(f"{name} must be 0..65535, got {value}")
        if self.instruction_ttl_s <= 0:
            raise SettingsError("instruction_ttl_s must be positive")
        for name in ("max_upload_bytes", "max_body_bytes", "max_rollout_body_bytes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        if not 1 <= self.max_chunk_window <= 64:
            raise SettingsError("max_chunk_window must be 1..64")
        if self.broker_url is not None and BrokerUrl.parse(self.broker_url).tls == self.insecure:
            raise SettingsError(
                f"broker URL {self.broker_url!r}: use mqtts:// with TLS (the default) and "
                "mqtt:// only with --insecure")
        object.__setattr__(self, "tls_hostnames", tuple(self.tls_hostnames))
        if self.bundle_base_url is not None and (
                urlsplit(self.bundle_base_url).scheme not in ("http", "https")
                or not urlsplit(self.bundle_base_url).netloc):
            raise SettingsError(
                f"bundle_base_url must look like https://host[:port], got {self.bundle_base_url!r}")
        for name in ("session_ttl_s", "session_idle_s", "login_max_per_address",
                     "login_max_per_user", "login_window_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")

    @property
    def external_broker(self) -> BrokerUrl | None:
        return BrokerUrl.parse(self.broker_url) if self.broker_url else None
