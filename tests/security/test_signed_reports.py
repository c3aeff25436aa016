"""Device-signed reports (issue 9): a real agent's reports verify and count in a rollout
gate; forged, tampered, replayed, unsigned and wrong-bundle reports are refused, counted by
reason, logged once, and change nothing stored and no gate number.

The server side is the real ingestion path (``MqttBridge.handle``, the one every broker
message goes through, on a real SQLite registry and rollout store); an attack delivered
there stands for a broker that let it through (the broker ACL is proved separately by
``test_broker_attacks.py``), so the signature check is what stops it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.agent import Agent
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.registry import Registry
from fleet_server.report_book import ReportBook
from fleet_server.report_verify import REJECT_REASONS
from fleet_server.rollout_store import RolloutStore
from fleet_server.rollouts.metrics import stage_metrics
from fleet_server.rollouts.plan import Plan
from fleet_server.rollouts.policy import StageMetrics
from model_bundles import keys as mb_keys
from ota.instructions import BundleRef, Instruction, sign_instruction
from ota.messages import DeviceState, LatencySummary, ShadowReport, Telemetry
from ota.model import replace
from ota.signed_report import ReportSigner
from ota.topics import DeviceTopics
from tests.device_agent.agent_dirs import served_agent_dir

A, B = "dev-a", "dev-b"
COHORT = [A, B]
V2 = hashlib.sha256(b"sample 2.0.0").hexdigest()  # the shadow candidate both were sent
V3 = hashlib.sha256(b"sample 3.0.0").hexdigest()  # stored, never sent to anyone
PLAN = Plan.from_dict({"stages": [
    {"name": "shadow", "kind": "shadow", "percent": 100, "deadline_s": 3600},
    {"name": "canary", "kind": "canary", "percent": 100, "deadline_s": 3600}]})
SHADOW, CANARY = PLAN.stages
FLEET_KEY = Ed25519PrivateKey.generate()


@dataclasses.dataclass
class Rig:
    registry: Registry
    store: RolloutStore
    bridge: MqttBridge
    agent_dir: Path
    v1: str  # the bundle the agent serves (its slot's hash)
    keys: dict[str, Ed25519PrivateKey]
    seq: int = 1000

    def signed(self, signer_of: str, report: Any) -> bytes:
        return ReportSigner(self.keys[signer_of]).sign(report.to_bytes())

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def telemetry(self, device: str, *, inferences: int = 10, sha: str | None = None,
                  bundle: str = "sample@1.0.0", seq: int | None = None) -> Telemetry:
        return Telemetry(device_id=device, seq=seq or self.next_seq(), ts=time.time(),
                         window_s=10.0, bundle=bundle, delegate="cpu", inferences=inferences,
                         errors=0, total_inferences=inferences, total_errors=0,
                         latency_ms=LatencySummary(1.0, 2.0, 3.0),
                         bundle_sha256=sha or self.v1)

    def shadow(self, device: str, *, candidate: str = V2, samples: int = 50) -> ShadowReport:
        return ShadowReport(
            device_id=device, seq=self.next_seq(), ts=time.time(), window_s=10.0,
            active="sample@1.0.0", candidate="sample@2.0.0", candidate_sha256=candidate,
            task="classifier", samples=samples, dropped=0, candidate_errors=0,
            top1_agreement=1.0, latency_ms_active=LatencySummary(1.0, 2.0, 3.0),
            latency_ms_candidate=LatencySummary(1.0, 2.0, 3.0), active_sha256=self.v1)

    def deliver(self, device_topic: str, kind: str, payload: bytes) -> tuple[str, int] | None:
        return self.bridge.handle(f"{DeviceTopics(device_topic).base}/{kind}", payload)

    def rejected(self) -> dict[str, float]:
        reg = self.bridge.metrics.registry
        return {r: reg.get_sample_value("edgefleet_reports_rejected_total", {"reason": r}) or 0.0
                for r in REJECT_REASONS}

    def gates(self) -> tuple[StageMetrics, StageMetrics]:
        now = time.time()
        return (stage_metrics(self.store, self.store.get_rollout(rollout_id="ro-shadow"),
                              SHADOW, COHORT, now),
                stage_metrics(self.store, self.store.get_rollout(rollout_id="ro-canary"),
                              CANARY, COHORT, now))

    def stored(self) -> dict[str, Any]:
        """Everything a report can change: telemetry, events and state of both devices,
        and the shadow reports of the candidate."""
        return {
            "telemetry": {d: self.registry.list_telemetry(device_id=d) for d in COHORT},
            "events": {d: self.registry.list_events(device_id=d) for d in COHORT},
            "state": {d: self.registry.get_device(device_id=d)["state"] for d in COHORT},
            "shadow": self.store.shadow_reports(candidate_sha256=V2, device_ids=COHORT,
                                                since=0.0),
        }


def _ref(sha: str, version: str) -> BundleRef:
    pem = mb_keys.public_key_pem(FLEET_KEY)
    return BundleRef(name="sample", version=version, sha256=sha, size=1, chunk_size=1,
                     chunk_hashes=("0" * 64,), publisher_key_id="0" * 64,
                     publisher_public_key=pem)


@pytest.fixture
def rig(tmp_path: Path, sample_onnx: Path) -> Iterator[Rig]:
    agent_dir = served_agent_dir(tmp_path / "agent", sample_onnx, device_id=A)
    (agent_dir / "keys").mkdir()  # as device-agent install leaves it: keys/device.key
    keys = {A: mb_keys.generate_private_key_file(agent_dir / "keys" / "device.key"),
            B: Ed25519PrivateKey.generate()}
    v1 = Agent(agent_dir).slots.current().sha256  # type: ignore[union-attr]
    registry = Registry(tmp_path / "registry.db")
    store = RolloutStore(tmp_path / "registry.db")
    book = ReportBook(tmp_path / "report_book.db")
    bridge = MqttBridge(registry=registry, bundle_path=lambda sha: tmp_path / sha,
                        host="127.0.0.1", port=1, password="x", shadow_store=store,
                        report_book=book)
    for sha, version in ((v1, "1.0.0"), (V2, "2.0.0"), (V3, "3.0.0")):
        registry.add_bundle(sha256=sha, name="sample", version=version, size=1,
                            publisher_key_id="0" * 64, manifest={}, chunk_size=1,
                            chunk_hashes=["0" * 64])
    now = time.time()
    for seq, device in enumerate(COHORT, start=1):
        registry.add_device(device_id=device, group="lab",
                            public_key=mb_keys.public_key_pem(keys[device]),
                            mqtt_secret_hash="0" * 64)
        instr = Instruction(device_id=device, seq=seq, issued_at=now, expires_at=now + 60,
                            deployment_id="ro-shadow.s0", bundle=_ref(v1, "1.0.0"),
                            shadow=_ref(V2, "2.0.0"), shadow_sample_rate=1.0)
        bridge.publish_instruction(device, sign_instruction(instr, FLEET_KEY))
    for rollout_id, sha, ref in (("ro-shadow", V2, "sample@2.0.0"),
                                 ("ro-canary", v1, "sample@1.0.0")):
        store.add_rollout(rollout_id=rollout_id, bundle_id=sha, bundle_ref=ref,
                          target_kind="devices", target_value=",".join(COHORT),
                          devices=COHORT, plan={"stages": []}, created_by="test", now=now - 1)
    rig = Rig(registry, store, bridge, agent_dir, v1, keys)
    # device B reports once, honestly: the numbers an attack on A must not change
    assert rig.deliver(B, "telemetry", rig.signed(B, rig.telemetry(B, inferences=7)))
    assert rig.deliver(B, "shadow", rig.signed(B, rig.shadow(B, samples=30)))
    yield rig
    for closing in (registry, store, book):
        closing.close()


def _run_agent_window(agent_dir: Path, rig: Rig, calls: int) -> list[int]:
    """A real agent (not started: no MQTT) serves ``calls`` predictions, reports a telemetry
    window, an event and its state; what it put in its outbox is delivered to the server
    and the server's answers confirmed back, as its MQTT link would."""
    agent = Agent(agent_dir)
    x = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 16)
    for _ in range(calls):
        agent.predict({"features": x})
    agent.send_telemetry()
    agent._event("agent", detail="window sent")
    stored = []
    for rec in agent.outbox.pending():
        kind = rec.topic.rsplit("/", 1)[-1]
        key = rig.deliver(A, kind, rec.payload)
        assert key is not None, f"the server refused the agent's {kind} report"
        stored.append(key[1])
        agent.outbox.confirm([key[1]])
    assert len(agent.outbox) == 0
    state = agent.device_state(seq=agent.store.next_state_seq())
    rig.deliver(A, "state", agent.signer.sign(state.to_bytes()))
    assert rig.registry.get_device(device_id=A)["state"]["seq"] == state.seq
    return stored


def test_real_agents_signed_reports_verify_and_count_in_the_gate(rig: Rig) -> None:
    _, canary_before = rig.gates()
    first = _run_agent_window(rig.agent_dir, rig, calls=5)
    _, canary = rig.gates()
    assert canary.samples == canary_before.samples + 5
    assert canary.reporting == 2  # A now counts beside B
    [row] = rig.registry.list_telemetry(device_id=A)
    assert row["data"]["bundle_sha256"] == rig.v1 and row["data"]["inferences"] == 5
    assert rig.registry.list_events(device_id=A)[0]["data"]["detail"] == "window sent"
    # a restarted agent (a new process on the same directory) continues its sequence
    second = _run_agent_window(rig.agent_dir, rig, calls=3)
    assert min(second) > max(first)
    assert rig.gates()[1].samples == canary_before.samples + 8
    assert set(rig.rejected().values()) == {0.0}


def _assert_refused(rig: Rig, reason: str, attack: Any) -> None:
    """``attack()`` delivers something that must be refused for ``reason``: counted once,
    not confirmed, and nothing stored or measured changes."""
    before, gates, counts = rig.stored(), rig.gates(), rig.rejected()
    assert attack() is None, "a refused report must not be confirmed"
    assert rig.rejected() == {**counts, reason: counts[reason] + 1}
    assert rig.stored() == before
    assert rig.gates() == gates


def test_device_b_report_delivered_on_device_as_topic_is_refused(rig: Rig) -> None:
    forged = rig.signed(B, rig.telemetry(A, inferences=10_000))  # B's key, A's name
    _assert_refused(rig, "bad_signature", lambda: rig.deliver(A, "telemetry", forged))
    shadow = rig.signed(B, rig.shadow(A, samples=10_000))
    _assert_refused(rig, "bad_signature", lambda: rig.deliver(A, "shadow", shadow))


def test_device_b_signing_a_report_that_names_device_a_is_refused(rig: Rig) -> None:
    claim = rig.signed(B, rig.telemetry(A, inferences=10_000))  # on B's own topic
    _assert_refused(rig, "wrong_device", lambda: rig.deliver(B, "telemetry", claim))
    state = DeviceState(device_id=A, status="online", ts=time.time(), agent_version="x",
                        applied_seq=99, seq=rig.next_seq())
    _assert_refused(rig, "wrong_device",
                    lambda: rig.deliver(B, "state", rig.signed(B, state)))


def test_replayed_report_is_stored_and_counted_once(rig: Rig) -> None:
    report = rig.signed(A, rig.telemetry(A, inferences=11))
    assert rig.deliver(A, "telemetry", report) == (A, rig.seq)
    before, gates = rig.stored(), rig.gates()
    dupes = rig.bridge.metrics.duplicates.labels("telemetry")._value.get()
    for _ in range(3):  # confirmed again (a genuine re-send must be released), never stored
        assert rig.deliver(A, "telemetry", report) == (A, rig.seq)
    assert rig.stored() == before and rig.gates() == gates
    assert rig.bridge.metrics.duplicates.labels("telemetry")._value.get() == dupes + 3


def test_replayed_older_state_is_refused(rig: Rig) -> None:
    def state(seq: int, applied: int) -> bytes:
        return rig.signed(A, DeviceState(device_id=A, status="online", ts=time.time(),
                                         agent_version="x", applied_seq=applied, seq=seq))
    old, new = state(rig.next_seq(), 1), state(rig.next_seq(), 2)
    rig.deliver(A, "state", old)
    rig.deliver(A, "state", new)
    assert rig.registry.get_device(device_id=A)["state"]["applied_seq"] == 2
    _assert_refused(rig, "replayed", lambda: rig.deliver(A, "state", old))
    rig.deliver(A, "state", new)  # the retained state delivered again: ignored, not counted
    assert rig.rejected()["replayed"] == 1


def test_tampered_payload_is_refused(rig: Rig) -> None:
    genuine = rig.signed(A, rig.telemetry(A, inferences=10))
    tampered = genuine.replace(
        _b64_field(genuine), _b64(rig.telemetry(A, inferences=10_000, seq=rig.seq).to_bytes()))
    assert tampered != genuine
    _assert_refused(rig, "bad_signature", lambda: rig.deliver(A, "telemetry", tampered))
    garbled = genuine.replace(b'"signature":"', b'"signature":"AAAA')
    _assert_refused(rig, "bad_signature", lambda: rig.deliver(A, "telemetry", garbled))
    assert rig.deliver(A, "telemetry", genuine) == (A, rig.seq)  # the genuine one still counts


def test_report_about_a_bundle_never_sent_is_refused(rig: Rig) -> None:
    unsent = rig.signed(A, rig.telemetry(A, sha=V3, bundle="sample@3.0.0"))
    _assert_refused(rig, "wrong_bundle", lambda: rig.deliver(A, "telemetry", unsent))
    misnamed = rig.signed(A, rig.telemetry(A, bundle="sample@2.0.0"))  # v1's hash, v2's name
    _assert_refused(rig, "wrong_bundle", lambda: rig.deliver(A, "telemetry", misnamed))
    candidate = rig.signed(A, rig.shadow(A, candidate=V3))
    _assert_refused(rig, "wrong_bundle", lambda: rig.deliver(A, "shadow", candidate))
    hashless = rig.signed(A, replace(rig.telemetry(A), bundle_sha256=None))
    _assert_refused(rig, "wrong_bundle", lambda: rig.deliver(A, "telemetry", hashless))


def test_unsigned_and_unknown_device_reports_are_refused_and_logged_once(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fleet_server.mqtt_bridge")
    for _ in range(3):
        bare = rig.telemetry(A, inferences=10_000).to_bytes()
        _assert_refused(rig, "unsigned", lambda b=bare: rig.deliver(A, "telemetry", b))
    stranger = rig.signed(B, rig.telemetry("dev-x"))
    _assert_refused(rig, "unknown_device", lambda: rig.deliver("dev-x", "telemetry", stranger))
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len([m for m in lines if "unsigned" in m]) == 1, lines  # once per device and reason
    assert len([m for m in lines if "unknown_device" in m]) == 1, lines


def _b64(data: bytes) -> bytes:
    import base64

    return base64.b64encode(data)


def _b64_field(envelope: bytes) -> bytes:
    import json

    return str(json.loads(envelope)["payload"]).encode()


def test_server_upgraded_to_signed_reports_learns_the_bundles_deployments_sent(
        rig: Rig, tmp_path: Path) -> None:
    """A report book new to an existing registry: bundles sent before it existed (here V3,
    deployed to A only) are learnt from the deployments, once, when the bridge starts."""
    rig.registry.add_deployment(deployment_id="dep-old", bundle_ref="sample@3.0.0",
                                bundle_id=V3, target_kind="device", target_value=A,
                                created_by="test")
    rig.registry.add_deployment_target(deployment_id="dep-old", device_id=A,
                                       instruction_seq=1)
    book = ReportBook(tmp_path / "new_book.db")
    rig.bridge = MqttBridge(registry=rig.registry, bundle_path=lambda sha: tmp_path / sha,
                            host="127.0.0.1", port=1, password="x", shadow_store=rig.store,
                            report_book=book)
    rig.bridge.backfill_sent()
    try:
        on_v3 = rig.signed(A, rig.telemetry(A, sha=V3, bundle="sample@3.0.0"))
        assert rig.deliver(A, "telemetry", on_v3) == (A, rig.seq)
        b_on_v3 = rig.signed(B, rig.telemetry(B, sha=V3, bundle="sample@3.0.0"))
        _assert_refused(rig, "wrong_bundle", lambda: rig.deliver(B, "telemetry", b_on_v3))
    finally:
        book.close()
