"""Everything one running server holds: data dir, registry, broker, bridge, deployer."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from fleet_server.audit import AuditLog
from fleet_server.broker import EmbeddedBroker
from fleet_server.broker_auth import BrokerAuthority
from fleet_server.broker_limits import BrokerLimits
from fleet_server.bundle_store import BundleStore
from fleet_server.ca import FleetCA
from fleet_server.config import ServerSettings
from fleet_server.datadir import DataDir, open_data_dir
from fleet_server.db import open_database
from fleet_server.delta_store import DeltaStore
from fleet_server.deployments import Deployer
from fleet_server.leader import Lease, holder_name
from fleet_server.metrics import ServerMetrics
from fleet_server.mosquitto_config import SHARE_GROUP, replica_username
from fleet_server.mqtt_bridge import MqttBridge, bridge_client_id
from fleet_server.registry import Registry
from fleet_server.report_book import ReportBook
from fleet_server.revocations import RevocationList
from fleet_server.rollout_store import RolloutStore
from fleet_server.rollouts.driver import RolloutDriver
from fleet_server.sessions import ConsoleSessions, LoginLimiter, Session
from fleet_server.tls import INSECURE_WARNING, ServerTls, fleet_server_tls
from fleet_server.tls_refresh import TlsRefresher
from fleet_server.tuf_repo import TufRepo, open_tuf_repo
from fleet_server.users import IdentityStore, Principal

log = logging.getLogger(__name__)

EMBEDDED_REPLICA_WARNING = (
    "--replica-id needs an external MQTT v5 broker (--broker mqtts://...) shared by the "
    "replicas: the embedded amqtt broker speaks MQTT 3.1.1, has no shared subscriptions and "
    "serves only this process's devices, so this server runs as a single server")


class FleetServices:
    """Built synchronously (data dir, registry); broker and bridge start in the app lifespan."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.data_dir: DataDir = open_data_dir(settings.data_dir)
        self.ca = FleetCA.load_or_create(self.data_dir.root)  # device certificates
        self.db = open_database(settings.db_url or self.data_dir.registry_path)  # schema checked
        self.revocations = RevocationList(self.db)  # revoked devices and keys (shared)
        self.revocations.import_legacy(self.data_dir.root)  # DATA/ca/revoked.json, once
        self.revocations.write_crl(self.ca)  # fresh crl.pem (Mosquitto's crlfile) each start
        self.registry = Registry(self.db)
        self.trust: TufRepo = open_tuf_repo(self.data_dir.root)  # TUF metadata (trust)
        self.bundles = BundleStore(data_dir=self.data_dir, registry=self.registry,
                                   max_bytes=settings.max_upload_bytes)
        self.sessions = ConsoleSessions(max_s=settings.session_ttl_s,
                                        idle_s=settings.session_idle_s)
        self.login_limiter = LoginLimiter(per_address=settings.login_max_per_address,
                                          per_user=settings.login_max_per_user,
                                          window_s=settings.login_window_s)
        self.identity = IdentityStore(self.db)  # users, API tokens
        self.audit = AuditLog(self.db)
        self.metrics = ServerMetrics()
        self.report_book = ReportBook(self.db)  # signed reports' bookkeeping (shared)
        self.report_book.import_legacy(self.data_dir.root)  # DATA/report_book.db, once
        self.broker: EmbeddedBroker | None = None
        self.bridge: MqttBridge | None = None
        self.deltas = DeltaStore(root=self.data_dir.bundles_dir / "deltas",
                                 bundle_path=self.data_dir.bundle_path,
                                 key=self.data_dir.fleet_key)  # docs/mqtt-protocol.md, "Deltas"
        self.deployer = Deployer(registry=self.registry, data_dir=self.data_dir,
                                 publish=self._publish, ttl_s=settings.instruction_ttl_s,
                                 deltas=self.deltas)
        self.rollout_store = RolloutStore(self.db)
        self.replica_warning: str | None = None
        if settings.replica_id is not None and settings.broker_url is None:
            self.replica_warning = EMBEDDED_REPLICA_WARNING
        # with replicas, one leader runs the periodic jobs (fleet_server.leader)
        self.lease: Lease | None = None if settings.replica_id is None else Lease(
            self.db, holder=holder_name(settings.replica_id), ttl_s=settings.lease_ttl_s,
            renew_s=settings.lease_renew_s, on_acquired=self._on_leader)
        self.rollouts = RolloutDriver(registry=self.registry, store=self.rollout_store,
                                      deployer=self.deployer, lease=self.lease)
        self.mqtt_port: int | None = None
        self.mqtt_host: str = settings.host
        self.tls: ServerTls | None = None if settings.insecure else server_tls(settings)
        # listeners pick up a re-issued certificate or a CA rollover without a restart
        self.tls_refresher = None if self.tls is None else TlsRefresher(
            lambda: server_tls(settings))

    def session_principal(self, session: Session) -> Principal | None:
        """Who a console session acts as now: a user's current role, None once disabled."""
        if session.principal.kind != "user":
            return session.principal
        return self.identity.user_principal(session.principal.name)

    def _publish(self, device_id: str, envelope: bytes) -> None:
        if self.bridge is None:
            log.warning("no MQTT bridge: instruction for %s kept for the next connect",
                        device_id)
            return
        self.bridge.publish_instruction(device_id, envelope)

    def _on_leader(self, epoch: int) -> None:
        """This replica took the lease: re-publish every current instruction (retained; a
        replica's bridge does not on connect) and have the rollout driver tick at once."""
        if self.bridge is not None:
            self.bridge.republish_current()
        self.rollouts.kick()

    def is_leader(self) -> bool:
        return self.lease is None or self.lease.is_leader()

    async def start(self) -> None:
        if self.tls is None:
            log.warning(INSECURE_WARNING)
        if self.replica_warning:
            log.warning(self.replica_warning)
        external = self.settings.external_broker
        if external is None:
            self.broker = EmbeddedBroker(
                host=self.settings.host, port=self.settings.mqtt_port,
                authority=BrokerAuthority(
                    self.registry, self.data_dir.mqtt_secret,
                    require_cert=self.tls is not None,
                    server_cert_sha256=self.tls.client_cert_sha256() if self.tls else None,
                    revoked=self.revocations.is_revoked),
                limits=BrokerLimits.for_telemetry(self.settings.telemetry),
                metrics=self.metrics, tls=self.tls)
            await self.broker.start()
            if self.broker.port is None:
                raise RuntimeError("the MQTT broker started without a port")
            host, port = _connect_host(self.settings.host), self.broker.port
            password = self.data_dir.mqtt_secret
            username = None
        else:
            host, port = external.host, external.port
            password = external.password or self.data_dir.mqtt_secret
            username = external.username
        self.mqtt_host, self.mqtt_port = host, port
        replica = self.settings.replica_id if external is not None else None
        if replica is not None and username is None:
            username = replica_username(replica)  # the TLS CN too (server_tls)
        login: dict[str, Any] = {"username": username} if username else {}
        bridge = MqttBridge(registry=self.registry, bundle_path=self.data_dir.bundle_path,
                            delta_file=self.deltas.file,
                            host=host, port=port, password=password,
                            max_window=self.settings.max_chunk_window,
                            shadow_store=self.rollout_store,
                            limits=self.settings.telemetry, metrics=self.metrics,
                            tls=self.tls, report_book=self.report_book,
                            share_group=SHARE_GROUP if replica else None,
                            client_id=bridge_client_id(password, replica), **login)
        bridge.revoked = self.revocations.is_revoked  # fleet_server/revoke.py
        bridge.is_leader = self.is_leader  # retention runs on the leader only
        await asyncio.to_thread(bridge.start)
        self.bridge = bridge
        if self.lease is not None:
            await asyncio.to_thread(self.lease.try_acquire)
            self.lease.start()
        self.rollouts.start(self.settings.rollout_tick_s)
        if self.tls_refresher is not None:
            await asyncio.to_thread(self.tls_refresher.start)
        if self.lease is not None and self.lease.is_leader():
            await asyncio.to_thread(self._on_leader, self.lease.epoch or 0)

    async def stop(self) -> None:
        if self.tls_refresher is not None:
            await asyncio.to_thread(self.tls_refresher.stop)
        await asyncio.to_thread(self.rollouts.stop)
        if self.lease is not None:
            await asyncio.to_thread(self.lease.stop)  # released: the next replica takes it
        if self.bridge is not None:
            bridge, self.bridge = self.bridge, None
            await asyncio.to_thread(bridge.stop)
        if self.broker is not None:
            broker, self.broker = self.broker, None
            await broker.stop()
        self.rollout_store.close()
        self.identity.close()
        self.audit.close()
        self.registry.close()
        self.db.close()
        self.report_book.close()

    def mqtt_url_for(self, hostname: str | None) -> str:
        """The broker URL to hand a device that reached us as ``hostname``."""
        external = self.settings.external_broker
        if external is not None:
            return external.public_url()
        host = self.mqtt_host
        if hostname and self.settings.host in ("0.0.0.0", "::"):  # noqa: S104 - a comparison, not a bind
            host = hostname
        return f"{'mqtt' if self.tls is None else 'mqtts'}://{host}:{self.mqtt_port}"


def server_tls(settings: ServerSettings) -> ServerTls:
    """The server's TLS files from the fleet CA in the data directory (made on first start,
    renewed when close to expiry), for the bind host, localhost and ``tls_hostnames``."""
    replica = settings.replica_id if settings.broker_url else None  # external broker only
    return fleet_server_tls(settings.data_dir, tls_names(settings), replica)


def tls_names(settings: ServerSettings) -> tuple[str, ...]:
    names = [_connect_host(settings.host), "127.0.0.1", "localhost", *settings.tls_hostnames]
    if settings.host in ("0.0.0.0", "::"):  # noqa: S104 - a comparison, not a bind
        names.append(socket.gethostname())
    return tuple(dict.fromkeys(n for n in names if n))


def _connect_host(bind_host: str) -> str:
    return "127.0.0.1" if bind_host in ("0.0.0.0", "", "::") else bind_host  # noqa: S104 - a comparison, not a bind
