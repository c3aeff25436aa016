"""Install state machine: the allowed table, forbidden transitions as bugs, the journal."""

from __future__ import annotations

import pytest

from ota.errors import ProtocolError
from ota.install import (
    ALLOWED,
    TERMINAL,
    InstallState,
    Journal,
    ResumeAction,
    advance,
    resume_action,
)

S = InstallState
HAPPY = [S.IDLE, S.OFFERED, S.DOWNLOADING, S.VERIFIED, S.STAGED, S.TRIAL, S.COMMITTED]


def test_happy_path_walks_from_idle_to_committed() -> None:
    state = S.IDLE
    for nxt in HAPPY[1:]:
        state = advance(state, nxt)
    assert state is S.COMMITTED


def test_any_state_may_fail_and_only_trial_or_a_crash_looping_commit_may_roll_back() -> None:
    for s in S:
        if s is not S.FAILED:
            assert advance(s, S.FAILED) is S.FAILED
    for s in S:
        if s in (S.TRIAL, S.COMMITTED):
            assert advance(s, S.ROLLED_BACK) is S.ROLLED_BACK
        else:
            with pytest.raises(RuntimeError):
                advance(s, S.ROLLED_BACK)


def test_a_new_instruction_is_offered_only_from_idle_or_a_finished_install() -> None:
    allowed_from = {s for s in S if S.OFFERED in ALLOWED[s]}
    assert allowed_from == {S.IDLE} | TERMINAL
    with pytest.raises(RuntimeError, match="downloading -> offered"):
        advance(S.DOWNLOADING, S.OFFERED)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.IDLE, S.DOWNLOADING),
        (S.OFFERED, S.VERIFIED),
        (S.DOWNLOADING, S.STAGED),
        (S.STAGED, S.COMMITTED),
        (S.VERIFIED, S.TRIAL),
        (S.COMMITTED, S.TRIAL),
        (S.TRIAL, S.TRIAL),
    ],
)
def test_skipping_a_step_is_a_bug(current: InstallState, new: InstallState) -> None:
    with pytest.raises(RuntimeError):
        advance(current, new)


def test_journal_round_trips_through_bytes() -> None:
    j = Journal().with_state(
        S.OFFERED,
        instruction_seq=8,
        sha256="ab" * 32,
        name="digits",
        version="1.0.0",
        target_slot="b",
        previous_slot="a",
        updated_at=1764384000.0,
    )
    j = j.with_state(S.DOWNLOADING, updated_at=1764384001.5)
    again = Journal.from_bytes(j.to_bytes())
    assert again == j
    assert again.state is S.DOWNLOADING
    assert again.instruction_seq == 8 and again.target_slot == "b"


def test_journal_with_state_refuses_a_forbidden_transition_and_leaves_the_original() -> None:
    j = Journal(state=S.STAGED, instruction_seq=3, updated_at=1.0)
    with pytest.raises(RuntimeError):
        j.with_state(S.COMMITTED)
    assert j.state is S.STAGED


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"format_version": 1, "state": "exploded", "instruction_seq": 0, "updated_at": 0}',
        b'{"format_version": 2, "state": "idle", "instruction_seq": 0, "updated_at": 0}',
        b'{"format_version": 1, "state": "idle", "instruction_seq": "0", "updated_at": 0}',
        b'{"format_version": 1, "state": "idle", "instruction_seq": 0, "updated_at": 0,'
        b' "target_slot": "c"}',
    ],
)
def test_corrupt_journal_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        Journal.from_bytes(raw)


def test_resume_action_matches_the_documented_table() -> None:
    expected = {
        S.IDLE: ResumeAction.SERVE,
        S.OFFERED: ResumeAction.START_DOWNLOAD,
        S.DOWNLOADING: ResumeAction.RESUME_DOWNLOAD,
        S.VERIFIED: ResumeAction.STAGE,
        S.STAGED: ResumeAction.TRIAL,
        S.TRIAL: ResumeAction.ROLL_BACK,
        S.COMMITTED: ResumeAction.SERVE,
        S.ROLLED_BACK: ResumeAction.SERVE,
        S.FAILED: ResumeAction.SERVE,
    }
    for state, action in expected.items():
        assert resume_action(Journal(state=state)) == action
