"""MQTT over TLS with client certificates, on the embedded broker and on a real Mosquitto
configured by ``fleet-server mosquitto-config`` (docs/security.md, "Transport").

A client is who its certificate says. Each attack below is refused and changes nothing the
server shows of the devices it aims at; the cross-device matrix runs every ordered pair.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.mqtt_link import LinkTls
from fleet_server.ca import FleetCA
from ota.messages import Telemetry
from ota.topics import DeviceTopics

from .broker_fleet import MOSQUITTO, wait_until
from .tls_certs import expired, issue
from .tls_fleet import DEVICES, TlsFleet, _link, online_state, run_tls_fleet, signed


@pytest.fixture(scope="module", params=["embedded", "mosquitto"])
def tls_fleet(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFleet]:
    if request.param == "mosquitto" and not Path(MOSQUITTO).exists():
        if os.environ.get("CI"):
            pytest.fail("Mosquitto is required in CI (scripts/install-system-deps.sh installs it)")
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    with run_tls_fleet(request.param, tmp_path_factory.mktemp(f"tls-{request.param}")) as f:
        yield f


def _snapshot(fleet: TlsFleet) -> dict[str, object]:
    return {d: (fleet.device_row(d), len(fleet.registry.list_telemetry(device_id=d)))
            for d in DEVICES}


def _agent_version(fleet: TlsFleet, device_id: str) -> str | None:
    state = fleet.registry.get_device(device_id=device_id)["state"] or {}
    return state.get("agent_version")


def _all_connected(fleet: TlsFleet) -> bool:
    return all(dev.link.connected.is_set() for dev in fleet.devices.values())


def test_devices_with_fleet_certificates_connect_and_report_online(tls_fleet: TlsFleet) -> None:
    assert tls_fleet.server.mqtt_url.startswith("mqtts://")
    for d in DEVICES:
        assert tls_fleet.registry.get_device(device_id=d)["online"]
        assert tls_fleet.devices[d].link.last_error is None


@pytest.mark.parametrize("attack", ["no_certificate", "other_fleet_ca", "expired",
                                    "cn_differs_from_client_id"])
def test_bad_client_certificate_is_refused_and_changes_nothing(
        tls_fleet: TlsFleet, attack: str, tmp_path: Path) -> None:
    before = _snapshot(tls_fleet)
    victim = "dev-b"
    if attack == "no_certificate":
        client = tls_fleet.raw(victim, None)
    elif attack == "other_fleet_ca":
        other = FleetCA.load_or_create(tmp_path / "other-fleet")
        client = tls_fleet.raw(victim, issue(other, tmp_path, victim))
    elif attack == "expired":
        client = tls_fleet.raw(victim, expired(tls_fleet.ca, tmp_path, victim))
    else:  # dev-a's own valid certificate, connecting under dev-b's client id
        client = tls_fleet.raw(victim, tls_fleet.devices["dev-a"].cert)
    try:
        outcome = client.outcome()
        if attack == "cn_differs_from_client_id" and tls_fleet.kind == "mosquitto":
            # Mosquitto renames the client to its certificate's CN (use_username_as_clientid)
            # instead of refusing it: it gets dev-a's identity, never dev-b's session. The
            # real dev-a, reconnecting, may take that client id back first (the broker then
            # closes this connection before its SUBACK): it never held dev-b's either.
            if client.subscribe(DeviceTopics(victim).desired, may_be_dropped=True):
                assert client.messages.empty()
            wait_until(lambda: tls_fleet.devices[victim].link.connected.is_set(),
                       "dev-b stays connected")
        else:
            assert outcome != "accepted", f"{attack}: the broker accepted it"
    finally:
        client.close()
    wait_until(lambda: _all_connected(tls_fleet), "every real device connected again")
    after = _snapshot(tls_fleet)
    assert after[victim] == before[victim]


def test_device_cannot_read_publish_or_forge_for_another_device(
        tls_fleet: TlsFleet, caplog: pytest.LogCaptureFixture) -> None:
    """Every ordered pair (A, B): A subscribes to B's topics and publishes forged state
    and telemetry on them. Zero successes: A receives nothing, the server shows B as it was,
    and each refusal is logged by the broker (Mosquitto: its log)."""
    caplog.set_level(logging.WARNING, logger="fleet_server.broker")
    before = _snapshot(tls_fleet)
    attempts = 0
    for a, b in itertools.permutations(DEVICES, 2):
        attacker = tls_fleet.devices[a]
        topics_b = DeviceTopics(b)
        for topic in topics_b.device_subscriptions + (topics_b.state, topics_b.telemetry):
            attacker.link.client.subscribe(topic, qos=1)
        # signed with A's own key: all an attacker holding A has
        forged_state = signed(attacker.cert, online_state(b, "forged", applied_seq=999))
        forged_report = signed(attacker.cert, Telemetry(
            device_id=b, seq=10**6, ts=time.time(), window_s=10.0, bundle=None,
            delegate=None, inferences=1, errors=1000, total_inferences=1,
            total_errors=1000).to_bytes())
        attacker.link.client.publish(topics_b.state, forged_state, qos=1, retain=True)
        attacker.link.client.publish(topics_b.telemetry, forged_report, qos=1)
        attempts += 1
    # a message each device is allowed to send, after the forgeries: once the server has
    # it, the forgeries (sent earlier on the same connections) have been handled
    for dev in tls_fleet.devices.values():
        dev.link.publish_retained(DeviceTopics(dev.device_id).state,
                                  signed(dev.cert, online_state(dev.device_id, "probe")))
    wait_until(lambda: all(_agent_version(tls_fleet, d) == "probe" for d in DEVICES),
               "every device's own state stored")
    assert attempts == len(DEVICES) * (len(DEVICES) - 1)
    for dev in tls_fleet.devices.values():
        foreign = [t for t, _ in list(dev.received.queue)
                   if not t.startswith(DeviceTopics(dev.device_id).base)]
        assert foreign == [], f"{dev.device_id} received another device's messages"
    after = _snapshot(tls_fleet)
    for d in DEVICES:
        assert after[d][1] == before[d][1], f"forged telemetry counted for {d}"
        assert _agent_version(tls_fleet, d) == "probe", f"forged state stored for {d}"
    if tls_fleet.kind == "embedded":
        refused = [r.getMessage() for r in caplog.records if "MQTT ACL refused" in r.getMessage()]
    else:
        assert tls_fleet.broker_log is not None
        refused = [ln for ln in tls_fleet.broker_log.read_text(errors="replace").splitlines()
                   if "Denied PUBLISH" in ln]
    for a, b in itertools.permutations(DEVICES, 2):
        for kind in ("state", "telemetry"):
            topic = getattr(DeviceTopics(b), kind)
            assert any(a in line and topic in line for line in refused), (a, topic)


def test_agent_refuses_a_broker_whose_certificate_does_not_chain_to_the_pinned_ca(
        tls_fleet: TlsFleet, tmp_path: Path) -> None:
    other = FleetCA.load_or_create(tmp_path / "other-fleet")
    dev = tls_fleet.devices["dev-a"]
    link = _link("dev-a", dev.cert, other.trust_bundle_path(), tls_fleet.host,
                 tls_fleet.port, tmp_path / "outbox", dev.received)
    assert isinstance(link.tls, LinkTls)
    link.start()
    try:
        wait_until(lambda: link.last_error is not None, "the refused connect")
        assert not link.connected.is_set()
        assert "does not chain to the pinned fleet CA" in link.last_error
        assert str(other.trust_bundle_path()) in link.last_error
    finally:
        link.stop()
    assert dev.link.connected.is_set()
