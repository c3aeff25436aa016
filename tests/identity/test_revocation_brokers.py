"""Revocation of a connected device, on the embedded broker and on a real Mosquitto
configured by ``fleet-server mosquitto-config`` (dynamic-security plugin loaded): the
revoke call returns once the broker has closed the device's connection; a reconnect is
refused (embedded: at CONNECT; Mosquitto: every publish and subscription denied until
its reload rereads the CRL, then the handshake is refused); a report sent after the
revocation is not stored where a gate reads it. Another device stays connected
throughout. How fast the connection closes is measured in ``bench/revocation.py``."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from ota.messages import LatencySummary, ShadowReport
from ota.signed_report import sign_report
from ota.topics import DeviceTopics
from tests.identity.revocation_rig import Fleet, run_fleet
from tests.security.broker_fleet import wait_until
from tests.security.tls_certs import ClientCert

ACTIVE = hashlib.sha256(b"sample 1.0.0").hexdigest()
CANDIDATE = hashlib.sha256(b"sample 2.0.0").hexdigest()


def shadow_report(device_id: str, cert: ClientCert, seq: int) -> bytes:
    report = ShadowReport(
        device_id=device_id, seq=seq, ts=time.time(), window_s=10.0, active="sample@1.0.0",
        candidate="sample@2.0.0", candidate_sha256=CANDIDATE, task="classifier", samples=50,
        dropped=0, candidate_errors=0, top1_agreement=1.0,
        latency_ms_active=LatencySummary(1.0, 2.0, 3.0),
        latency_ms_candidate=LatencySummary(1.0, 2.0, 3.0), active_sha256=ACTIVE)
    return sign_report(report.to_bytes(), cert.private_key)


def gate_rows(fleet: Fleet) -> list[tuple[str, int]]:
    """The candidate's shadow reports, as the shadow gate reads them."""
    rows = fleet.server.services.rollout_store.shadow_reports(
        candidate_sha256=CANDIDATE, device_ids=["dev-r", "dev-k"], since=0)
    return [(r["device_id"], r["seq"]) for r in rows]


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_revoked_device_is_disconnected_refused_and_its_later_reports_do_not_count(
        kind: str, tmp_path: Path) -> None:
    with run_fleet(kind, tmp_path) as fleet:
        services = fleet.server.services
        revoked, kept = fleet.enrol("dev-r"), fleet.enrol("dev-k")
        services.report_book.record_sent([(d, h) for d in ("dev-r", "dev-k")
                                          for h in (ACTIVE, CANDIDATE)])
        bridge = services.bridge
        assert bridge is not None
        topics = DeviceTopics("dev-r")
        conn, other = fleet.connect("dev-r", revoked), fleet.connect("dev-k", kept)
        try:
            assert conn.outcome() == "accepted" and other.outcome() == "accepted"
            # before: its signed report counts
            conn.publish(topics.shadow, shadow_report("dev-r", revoked, 1))
            wait_until(lambda: gate_rows(fleet) == [("dev-r", 1)], "the report stored")

            answer = fleet.revoke("dev-r")
            assert answer["disconnected"] is True and answer["broker_error"] is None
            # closed by the broker before the revoke call answered (the bound: bench)
            assert conn.closed.wait(5), "the broker did not close the revoked connection"
            assert other.accepted.is_set() and not other.ended.is_set()
        finally:
            conn.close()

        again = fleet.connect("dev-r", revoked)
        try:
            if kind == "embedded":
                assert again.outcome().startswith("CONNACK")  # refused at CONNECT
            else:
                # until Mosquitto rereads the CRL the handshake passes, but the revoked
                # role denies everything: no subscription, publishes dropped
                assert again.outcome() == "accepted"
                assert [r.is_failure for r in again.subscribe(topics.desired)] == [True]
                again.publish(topics.shadow, shadow_report("dev-r", revoked, 2))
                assert fleet.mosquitto is not None
                wait_until(lambda: "Denied PUBLISH from dev-r" in fleet.mosquitto.text(),
                           "mosquitto to log the denied publish")
        finally:
            again.close()

        if fleet.mosquitto is not None:  # the operator's reload: the CRL refuses the handshake
            fleet.mosquitto.reload()
            last = fleet.connect("dev-r", revoked)
            try:
                assert last.outcome() != "accepted"
            finally:
                last.close()
            # Mosquitto writes its log line after the client has already seen the refusal
            wait_until(lambda: "certificate verify failed" in fleet.mosquitto.text(),
                       "mosquitto to log the refused handshake")

        # a report that reached the server after the revocation (queued before it):
        # dropped before parsing, counted, not stored where the gate reads
        before = bridge.stats["dropped_revoked"]
        assert bridge.handle(topics.shadow, shadow_report("dev-r", revoked, 3)) is None
        assert bridge.stats["dropped_revoked"] == before + 1
        assert gate_rows(fleet) == [("dev-r", 1)]
        # the other device still reports and counts
        other.publish(DeviceTopics("dev-k").shadow, shadow_report("dev-k", kept, 1))
        wait_until(lambda: ("dev-k", 1) in gate_rows(fleet), "the other device's report")
        other.close()
        # revoking again changes nothing, and still tells the broker
        answer = fleet.revoke("dev-r")
        assert answer["already_revoked"] is True and answer["broker_error"] is None
        assert [r.device_id for r in services.revocations.all()] == ["dev-r"]
