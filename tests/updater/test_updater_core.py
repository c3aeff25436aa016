"""The update path's pure core, driven with bytes: each test is a scenario, and asserts the
actions the core asks for and the device record it leaves."""

from __future__ import annotations

import os
import time

import pytest

from ota.install import InstallState, Journal
from ota.updater import core as uc
from ota.updater.record import DeviceRecord, ShadowRecord
from ota.updater.transfer import REREQUEST_AFTER_S, Role

from .core_helpers import Fleet, ref_of

S = InstallState
V1, V2, CAND = os.urandom(5000), os.urandom(3000), os.urandom(2500)
ACTIVE = ref_of(V1, "1.0.0").sha256


def kinds(actions: list[uc.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def persisted_states(actions: list[uc.Action], start: InstallState = S.IDLE) -> list[str]:
    """The journal states the actions persist, in order (from ``start``)."""
    out, last = [], start
    for a in actions:
        if isinstance(a, uc.Persist) and a.record.journal.state != last:
            last = a.record.journal.state
            out.append(last.value)
    return out


def test_instruction_naming_a_bundle_and_a_shadow_is_trust_checked_for_both_first() -> None:
    fleet = Fleet()
    core = fleet.core()
    bundle, cand = ref_of(V2, "2.0.0"), ref_of(CAND, "3.0.0")
    actions = core.on_instruction(fleet.instruction(bundle, shadow=cand, rate=0.5),
                                  now=time.time(), active_sha=ACTIVE)
    assert actions == [uc.CheckTrust(1, (bundle, cand))]
    assert core.record == DeviceRecord()  # nothing recorded before the trust check


def test_trusted_instruction_is_recorded_in_order_then_the_transfer_opens() -> None:
    fleet = Fleet()
    core = fleet.core()
    bundle = ref_of(V2, "2.0.0")
    core.on_instruction(fleet.instruction(bundle), now=time.time(), active_sha=ACTIVE)
    actions = core.on_trust(1, error=None, transient=False, now=time.time(), active_sha=ACTIVE)
    assert persisted_states(actions) == ["offered", "downloading"]
    # applied_seq is written after "offered" is on record, before "downloading"
    seqs = [(a.record.journal.state.value, a.record.applied_seq) for a in actions
            if isinstance(a, uc.Persist)]
    assert ("offered", 0) in seqs and seqs[-1] == ("downloading", 1)
    assert actions[-1] == uc.OpenTransfer(Role.BUNDLE, bundle,
                                          bundle.size * 2 + uc.DISK_RESERVE_BYTES)
    assert core.record.bundle == bundle and core.record.journal.sha256 == bundle.sha256


def test_chunks_are_asked_in_windows_and_the_transfer_finishes_once_all_are_stored() -> None:
    fleet = Fleet()
    core = fleet.core()
    bundle = ref_of(os.urandom(20 * 1024), "2.0.0")  # 20 chunks
    actions = core.on_opened(Role.BUNDLE, bundle, set(range(20)), now=0.0)
    assert actions == [uc.RequestChunks(Role.BUNDLE, bundle.sha256, ((0, 8),))]
    out: list[uc.Action] = []
    for i in range(8):
        out = core.on_chunk(Role.BUNDLE, i, now=1.0)
    assert out == [uc.RequestChunks(Role.BUNDLE, bundle.sha256, ((8, 8),))]
    for i in range(8, 20):
        out = core.on_chunk(Role.BUNDLE, i, now=2.0)
    assert out == [uc.Finish(Role.BUNDLE, bundle)]
    assert core.transfers == {}


def test_a_stalled_transfer_asks_again_on_the_tick() -> None:
    core = Fleet().core()
    bundle = ref_of(V2, "2.0.0")
    core.on_opened(Role.BUNDLE, bundle, {0, 1, 2}, now=100.0)
    assert core.on_tick(100.0 + REREQUEST_AFTER_S / 2) == []
    assert core.on_tick(101.0 + REREQUEST_AFTER_S) == [
        uc.RequestChunks(Role.BUNDLE, bundle.sha256, ((0, 3),))]


def test_a_large_bundle_goes_over_http_and_a_failed_fetch_is_fetched_again_later() -> None:
    core = Fleet().core(http_min_bytes=1000)
    bundle = ref_of(V2, "2.0.0")
    assert core.on_opened(Role.BUNDLE, bundle, {0, 1, 2}, now=0.0) == [
        uc.FetchRanges(Role.BUNDLE, bundle.sha256)]
    out = core.on_fetched(Role.BUNDLE, bundle.sha256, {2}, now=1.0, error="HTTP 503")
    assert out == [uc.Report("http download: HTTP 503")]
    assert core.on_tick(2.0 + REREQUEST_AFTER_S) == [uc.FetchRanges(Role.BUNDLE, bundle.sha256)]
    assert core.on_fetched(Role.BUNDLE, bundle.sha256, set(), now=9.0, error=None) == [
        uc.Finish(Role.BUNDLE, bundle)]


def test_a_transient_trust_failure_is_retried_with_backoff_without_a_new_instruction() -> None:
    fleet = Fleet()
    core = fleet.core()
    bundle = ref_of(V2, "2.0.0")
    core.on_instruction(fleet.instruction(bundle), now=time.time(), active_sha=ACTIVE)
    t0 = time.time()
    out = core.on_trust(1, error="GET timestamp.json: connection refused", transient=True,
                        now=t0, active_sha=ACTIVE)
    assert kinds(out) == ["Report"] and "retry 1" in out[0].detail  # type: ignore[union-attr]
    assert core.record == DeviceRecord()  # waiting changes nothing
    assert core.on_tick(t0 + 1.0) == []  # before the backoff
    assert core.on_tick(t0 + 2.0) == [uc.CheckTrust(1, (bundle,))]
    out = core.on_trust(1, error="again", transient=True, now=t0 + 2.0, active_sha=ACTIVE)
    assert core.on_tick(t0 + 5.0) == []  # the second wait is longer (4 s)
    assert core.on_tick(t0 + 6.0) == [uc.CheckTrust(1, (bundle,))]
    out = core.on_trust(1, error=None, transient=False, now=t0 + 6.0, active_sha=ACTIVE)
    assert persisted_states(out) == ["offered", "downloading"]
    assert core.record.applied_seq == 1 and core.pending is None


def test_a_trust_refusal_refuses_the_instruction_and_changes_nothing() -> None:
    fleet = Fleet()
    core = fleet.core()
    core.on_instruction(fleet.instruction(ref_of(V2, "2.0.0")), now=time.time(),
                        active_sha=ACTIVE)
    out = core.on_trust(1, error="bundles/x.efb is not a trusted target", transient=False,
                        now=time.time(), active_sha=ACTIVE)
    assert out == [uc.Refuse("instruction refused: bundles/x.efb is not a trusted target")]
    assert core.record == DeviceRecord() and core.on_tick(time.time() + 999) == []


def test_a_newer_instruction_supersedes_one_waiting_for_its_trust_check() -> None:
    fleet = Fleet()
    core = fleet.core()
    core.on_instruction(fleet.instruction(ref_of(V2, "2.0.0")), now=time.time(),
                        active_sha=ACTIVE)
    core.on_instruction(fleet.instruction(None), now=time.time(), active_sha=ACTIVE)
    assert core.on_trust(1, error=None, transient=False, now=time.time(),
                         active_sha=ACTIVE) == []
    assert core.record.applied_seq == 2


def test_a_forged_instruction_is_refused_and_the_record_is_unchanged() -> None:
    fleet, forger = Fleet(), Fleet()
    core = fleet.core()
    out = core.on_instruction(forger.instruction(ref_of(V2, "2.0.0")), now=time.time(),
                              active_sha=ACTIVE)
    assert kinds(out) == ["Refuse"] and "expected fleet key" in out[0].detail  # type: ignore[union-attr]
    assert core.record == DeviceRecord() and core.pending is None


def test_the_shadow_candidate_gets_the_same_transfer_and_disk_check() -> None:
    fleet = Fleet()
    core = fleet.core()
    cand = ref_of(CAND, "3.0.0")
    core.on_instruction(fleet.instruction(None, shadow=cand, rate=0.25), now=time.time(),
                        active_sha=ACTIVE)
    out = core.on_trust(1, error=None, transient=False, now=time.time(), active_sha=ACTIVE)
    assert uc.OpenTransfer(Role.SHADOW, cand, cand.size * 2 + uc.DISK_RESERVE_BYTES) in out
    assert core.record.shadow == ShadowRecord(cand, 0.25)
    out = core.on_transfer_failed(Role.SHADOW, "not enough disk space")
    assert kinds(out) == ["StopShadow", "Persist", "Report"]
    assert core.record.shadow == ShadowRecord(cand, 0.25, "not enough disk space")
    assert core.record.journal == Journal()  # the install state is not the shadow's


def test_the_same_shadow_candidate_again_only_changes_its_rate() -> None:
    fleet = Fleet()
    cand = ref_of(CAND, "3.0.0")
    core = fleet.core(DeviceRecord(shadow=ShadowRecord(cand, 0.5)))
    core.on_instruction(fleet.instruction(None, shadow=cand, rate=0.1), now=time.time(),
                        active_sha=ACTIVE)
    out = core.on_trust(1, error=None, transient=False, now=time.time(), active_sha=ACTIVE)
    assert uc.ShadowRate(0.1) in out and not any(isinstance(a, uc.OpenTransfer) for a in out)
    assert core.record.shadow == ShadowRecord(cand, 0.1)


def test_not_enough_disk_fails_the_install_and_discards_the_part() -> None:
    fleet = Fleet()
    core = fleet.core()
    core.on_instruction(fleet.instruction(ref_of(V2, "2.0.0")), now=time.time(),
                        active_sha=ACTIVE)
    core.on_trust(1, error=None, transient=False, now=time.time(), active_sha=ACTIVE)
    out = core.on_transfer_failed(Role.BUNDLE, "not enough disk space: 10 bytes free")
    assert out[0] == uc.CancelTransfer(Role.BUNDLE)
    assert core.record.journal.state is S.FAILED
    assert core.record.journal.error == "not enough disk space: 10 bytes free"


def test_an_instruction_without_bundle_cancels_the_transfer_under_way() -> None:
    fleet = Fleet()
    core = fleet.core()
    bundle = ref_of(V2, "2.0.0")
    core.on_instruction(fleet.instruction(bundle), now=time.time(), active_sha=ACTIVE)
    core.on_trust(1, error=None, transient=False, now=time.time(), active_sha=ACTIVE)
    core.on_opened(Role.BUNDLE, bundle, {0, 1, 2}, now=0.0)
    out = core.on_instruction(fleet.instruction(None), now=time.time(), active_sha=ACTIVE)
    assert uc.CancelTransfer(Role.BUNDLE) in out and uc.PublishState() in out
    assert core.record.journal.state is S.FAILED
    assert core.record.journal.error == "cancelled by instruction 2"
    assert core.record.applied_seq == 2 and core.transfers == {}


def test_a_superseding_bundle_fails_the_install_under_way_and_starts_its_own() -> None:
    fleet = Fleet()
    core = fleet.core()
    v2, v3 = ref_of(V2, "2.0.0"), ref_of(CAND, "3.0.0")
    core.on_instruction(fleet.instruction(v2), now=time.time(), active_sha=ACTIVE)
    core.on_trust(1, error=None, transient=False, now=time.time(), active_sha=ACTIVE)
    core.on_opened(Role.BUNDLE, v2, {0, 1, 2}, now=0.0)
    core.on_instruction(fleet.instruction(v3), now=time.time(), active_sha=ACTIVE)
    out = core.on_trust(2, error=None, transient=False, now=time.time(), active_sha=ACTIVE)
    assert persisted_states(out, S.DOWNLOADING) == ["failed", "offered", "downloading"]
    assert uc.CancelTransfer(Role.BUNDLE) in out
    assert core.record.bundle == v3 and core.record.journal.sha256 == v3.sha256


def test_the_redelivered_instruction_of_a_resumed_install_only_records_its_seq() -> None:
    """A crash came after "offered" was recorded and before applied_seq was."""
    fleet = Fleet()
    bundle = ref_of(V2, "2.0.0")
    envelope = fleet.instruction(bundle)
    j = Journal().with_state(S.OFFERED, instruction_seq=1, sha256=bundle.sha256,
                             name="sample", version="2.0.0")
    core = fleet.core(DeviceRecord(journal=j, bundle=bundle))
    core.on_instruction(envelope, now=time.time(), active_sha=ACTIVE)
    out = core.on_trust(1, error=None, transient=False, now=time.time(), active_sha=ACTIVE)
    assert kinds(out) == ["Persist"]
    assert core.record == DeviceRecord(journal=j, bundle=bundle, applied_seq=1)


@pytest.mark.parametrize("state", [s for s in S if s not in (S.OFFERED, S.DOWNLOADING)])
def test_the_record_round_trips_in_every_journal_state(state: InstallState) -> None:
    bundle, cand = ref_of(V2, "2.0.0"), ref_of(CAND, "3.0.0")
    j = Journal(state=state, instruction_seq=4, sha256=bundle.sha256, name="sample",
                version="2.0.0", target_slot="b", previous_slot="a", updated_at=1.5)
    rec = DeviceRecord(journal=j, applied_seq=4, bundle=bundle,
                       shadow=ShadowRecord(cand, 0.5, None), delegate_override={"delegate": "cpu"})
    assert DeviceRecord.from_bytes(rec.to_bytes()) == rec
