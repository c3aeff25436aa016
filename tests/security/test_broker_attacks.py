"""Attacks on the MQTT broker (issue 14, items 1-4), one test per attack, each run against
the embedded amqtt broker and a real Mosquitto configured by ``fleet_server.mosquitto_config``.

The bench (``broker_fleet`` in conftest.py, built in broker_fleet.py): a real fleet server with
``dev-a`` and ``dev-b`` enrolled and connected through the device agent's own ``MqttLink``;
``dev-b`` (the victim) holds a signed instruction. The attacker is a bare paho client, or
``dev-a``'s own live connection. Each test asserts that the attack fails AND that the victim
is unchanged: its state and telemetry in the registry, its connection, its subscription
(it receives the next instruction and nothing else) and the retained instruction.
"""

from __future__ import annotations

import hashlib
import inspect
import time

import amqtt
import pytest
from amqtt.broker import Broker

from fleet_server import broker_fixes
from fleet_server.broker_auth import SERVER_USERNAME
from ota.messages import DeviceState, Telemetry
from ota.signed_report import ReportSigner
from ota.topics import DEVICES, DeviceTopics
from tests.report_keys import KEYS

from .broker_fleet import BrokerFleet, wait_until

VICTIM, ATTACKER = "dev-b", "dev-a"


def _forged_state(device_id: str) -> bytes:
    return DeviceState(device_id=device_id, status="offline", ts=time.time(),
                       agent_version="forged", applied_seq=999).to_bytes()


def _forged_telemetry(device_id: str) -> bytes:
    return Telemetry(device_id=device_id, seq=424242, ts=time.time(), window_s=10.0,
                     bundle="forged@6.6.6", delegate=None, inferences=1, errors=0,
                     total_inferences=1, total_errors=0).to_bytes()


FORGED = {"state": _forged_state, "telemetry": _forged_telemetry,
          "desired": lambda d: b'{"payload": "forged", "key_id": "x", "signature": "x"}'}


class Victim:
    """What must not change for ``dev-b``: taken before the attack, checked after it."""

    def __init__(self, fleet: BrokerFleet) -> None:
        self.fleet = fleet
        self.dev = fleet.devices[VICTIM]
        self.first = fleet.instruction(VICTIM)
        assert self.dev.next_message() == (DeviceTopics(VICTIM).desired, self.first)
        self.view = fleet.device_view(VICTIM)
        self.telemetry = fleet.telemetry_seqs(VICTIM)
        self.connects = {d: dev.live.connects for d, dev in fleet.devices.items()}

    def assert_unchanged(self) -> None:
        fleet = self.fleet
        # a message through the server after the attack, so what the attack sent is in
        fleet.telemetry(ATTACKER)
        assert fleet.device_view(VICTIM) == self.view
        assert fleet.telemetry_seqs(VICTIM) == self.telemetry
        # no connection was taken over or closed
        assert {d: dev.live.connects for d, dev in fleet.devices.items()} == self.connects
        # the victim's session and subscription survive: the next instruction reaches it,
        # and nothing else did; the broker retains that instruction
        second = fleet.instruction(VICTIM)
        assert self.dev.next_message() == (DeviceTopics(VICTIM).desired, second)
        assert self.dev.messages() == []
        assert fleet.resubscribe_desired(VICTIM) == second
        assert self.dev.messages() == []


@pytest.mark.parametrize("target", ["state", "telemetry", "desired"])
def test_will_injection_by_unauthenticated_connect_is_not_published(
        broker_fleet: BrokerFleet, target: str) -> None:
    fleet = broker_fleet
    victim = Victim(fleet)
    topic = f"{DEVICES}/{VICTIM}/{target}"
    attacker = fleet.client(ATTACKER, ATTACKER, "wrong-password", clean_session=False,
                            will=(topic, FORGED[target](VICTIM)))
    try:
        assert attacker.wait_connack().is_failure
    finally:
        attacker.close()
    victim.assert_unchanged()


def test_will_aimed_at_another_device_is_refused_even_with_valid_credentials(
        broker_fleet: BrokerFleet) -> None:
    fleet = broker_fleet
    victim = Victim(fleet)
    dev_a = fleet.devices[ATTACKER]
    dev_a.stop()  # the attacker connects as itself, with its own secret
    attacker = fleet.client(ATTACKER, ATTACKER, dev_a.secret, clean_session=False,
                            will=(DeviceTopics(VICTIM).desired, FORGED["desired"](VICTIM)))
    try:
        refused = attacker.wait_connack().is_failure
        if not refused:  # Mosquitto accepts the CONNECT; its ACL must drop the will
            attacker.drop_connection()
    finally:
        attacker.close()
    assert refused == (fleet.kind == "embedded")
    if not refused:
        # the control: the same abnormal close does publish a will the client may send
        own = fleet.client(ATTACKER, ATTACKER, dev_a.secret, clean_session=False,
                           will=(DeviceTopics(ATTACKER).state,  # signed: its own report
                                 ReportSigner(KEYS[ATTACKER]).sign(_forged_state(ATTACKER))))
        assert not own.wait_connack().is_failure
        own.drop_connection()
        own.close()
        wait_until(lambda: fleet.device_view(ATTACKER)["state"]["agent_version"] == "forged",
                   "the control will")
    dev_a.start()
    victim.assert_unchanged()


def test_session_of_connected_device_survives_wrong_password_connect(
        broker_fleet: BrokerFleet) -> None:
    fleet = broker_fleet
    victim = Victim(fleet)
    attacker = fleet.client(VICTIM, VICTIM, "wrong-password", clean_session=True)
    try:
        assert attacker.wait_connack().is_failure
    finally:
        attacker.close()
    victim.assert_unchanged()


def test_device_receives_no_retained_message_of_another_device(broker_fleet: BrokerFleet) -> None:
    fleet = broker_fleet
    victim = Victim(fleet)
    own = fleet.instruction(ATTACKER)
    dev_a = fleet.devices[ATTACKER]
    assert dev_a.next_message() == (DeviceTopics(ATTACKER).desired, own)
    dev_a.stop()
    # every device's retained state and the victim's instruction are on the broker now
    attacker = fleet.client(ATTACKER, ATTACKER, dev_a.secret, clean_session=True)
    try:
        assert not attacker.wait_connack().is_failure
        # anything retained pushed at connect arrives before the SUBACK and our own instruction
        attacker.subscribe(DeviceTopics(ATTACKER).desired)
        first = attacker.messages.get(timeout=10)
        assert first == (DeviceTopics(ATTACKER).desired, own)
        assert attacker.received() == []
    finally:
        attacker.close()
    dev_a.start()
    victim.assert_unchanged()


def test_failed_connect_under_server_username_does_not_widen_acl(broker_fleet: BrokerFleet) -> None:
    fleet = broker_fleet
    victim = Victim(fleet)
    dev_a = fleet.devices[ATTACKER]
    attacker = fleet.client(ATTACKER, SERVER_USERNAME, "wrong-password", clean_session=False)
    try:
        assert attacker.wait_connack().is_failure
    finally:
        attacker.close()
    # dev-a's own live connection now tries to speak for dev-b
    topics = DeviceTopics(VICTIM)
    dev_a.live.client.publish(topics.state, _forged_state(VICTIM), qos=1, retain=True)
    dev_a.live.client.publish(topics.telemetry, _forged_telemetry(VICTIM), qos=1)
    dev_a.live.client.publish(topics.desired, FORGED["desired"](VICTIM), qos=1, retain=True)
    victim.assert_unchanged()


def test_device_cannot_read_or_write_another_devices_topics(broker_fleet: BrokerFleet) -> None:
    fleet = broker_fleet
    victim = Victim(fleet)
    dev_a = fleet.devices[ATTACKER]
    dev_a.stop()
    attacker = fleet.client(ATTACKER, ATTACKER, dev_a.secret, clean_session=True)
    try:
        assert not attacker.wait_connack().is_failure
        for topic in (DeviceTopics(VICTIM).desired, f"{DEVICES}/+/desired", "#"):
            attacker.subscribe(topic)
        attacker.subscribe(DeviceTopics(ATTACKER).desired)
        for topic, payload in ((DeviceTopics(VICTIM).state, _forged_state(VICTIM)),
                               (DeviceTopics(VICTIM).telemetry, _forged_telemetry(VICTIM))):
            attacker.client.publish(topic, payload, qos=1).wait_for_publish(10)
        second = fleet.instruction(VICTIM)
        assert victim.dev.next_message() == (DeviceTopics(VICTIM).desired, second)
        # the attacker's own instruction comes after anything of the victim's it was sent
        own = fleet.instruction(ATTACKER)
        assert attacker.messages.get(timeout=10) == (DeviceTopics(ATTACKER).desired, own)
        assert attacker.received() == []
    finally:
        attacker.close()
    dev_a.start()
    victim.assert_unchanged()


def test_device_cannot_connect_under_another_devices_client_id(broker_fleet: BrokerFleet) -> None:
    fleet = broker_fleet
    victim = Victim(fleet)
    dev_a = fleet.devices[ATTACKER]
    dev_a.stop()
    # dev-a's own valid secret, the victim's client id, a clean session
    attacker = fleet.client(VICTIM, ATTACKER, dev_a.secret, clean_session=True)
    try:
        refused = attacker.wait_connack().is_failure
    finally:
        attacker.close()
    # embedded: refused (client id must equal username); Mosquitto: the id becomes "dev-a"
    assert refused == (fleet.kind == "embedded")
    dev_a.start()
    victim.assert_unchanged()


# -- the embedded broker's fixes are checked against the amqtt they patch ------------------

REPLACED_SOURCE_SHA256 = {
    "_initialize_client_session":
        "5dd89158bbe46266c62cc3ba6dedc0fcfbc197b6cfdd03d089ad3ba2a4422806",
    "_publish_retained_messages_for_subscription":
        "d6ad257821ba29ef79721bccdbff97ef6bb34e41cbf54e875cc3f726cf17b0d7",
    "stream_connected": "d1c68240cb49f94a431455e63b0277a27c92a482c4512a8e2de975e13025720e",
}


def test_amqtt_is_the_release_the_broker_fixes_were_checked_against() -> None:
    """A new amqtt must be read again before the fixes are trusted on it (ADR 0002)."""
    assert amqtt.__version__ == broker_fixes.CHECKED_AMQTT_VERSION
    sources = {name: hashlib.sha256(inspect.getsource(getattr(Broker, name)).encode()).hexdigest()
               for name in broker_fixes.REPLACED}
    assert sources == REPLACED_SOURCE_SHA256
