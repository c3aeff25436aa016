"""The device's install state machine (pure core: states, allowed transitions, journal).

The agent persists ``Journal.to_bytes()`` atomically before acting on a new state; after a
restart ``resume_action(journal)`` says what to do next (docs/install-state-machine.md).
Asking for a transition the table forbids is a bug and raises ``RuntimeError``; a journal
file that does not parse is bad data and raises ``ProtocolError``.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, ClassVar, Literal

from ota import payload as p
from ota.errors import ProtocolError
from ota.model import (
    Count,
    Model,
    Number,
    Sha256,
    Text256,
    Text8192,
    load_json,
    replace,
    validate,
)


class InstallState(StrEnum):
    IDLE = "idle"
    OFFERED = "offered"
    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    STAGED = "staged"
    TRIAL = "trial"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


S = InstallState

TERMINAL: frozenset[InstallState] = frozenset({S.COMMITTED, S.ROLLED_BACK, S.FAILED})
"""States that end an install: the device serves what ``current.json`` names."""

IN_PROGRESS: frozenset[InstallState] = frozenset(
    {S.OFFERED, S.DOWNLOADING, S.VERIFIED, S.STAGED, S.TRIAL}
)
"""States with an install under way (a new instruction must first fail this one)."""

ALLOWED: dict[InstallState, frozenset[InstallState]] = {
    S.IDLE: frozenset({S.OFFERED, S.FAILED}),
    S.OFFERED: frozenset({S.DOWNLOADING, S.FAILED}),
    S.DOWNLOADING: frozenset({S.VERIFIED, S.FAILED}),
    S.VERIFIED: frozenset({S.STAGED, S.FAILED}),
    S.STAGED: frozenset({S.TRIAL, S.FAILED}),
    S.TRIAL: frozenset({S.COMMITTED, S.ROLLED_BACK, S.FAILED}),
    S.COMMITTED: frozenset({S.OFFERED, S.ROLLED_BACK, S.FAILED}),
    S.ROLLED_BACK: frozenset({S.OFFERED, S.FAILED}),
    S.FAILED: frozenset({S.OFFERED}),
}
"""Allowed transitions: the happy path, any state to failed, trial to rolled_back, committed
to rolled_back (the committed model crash-looped the agent), and a new instruction (offered)
from idle or any terminal state."""


def advance(current: InstallState, new: InstallState) -> InstallState:
    """Return ``new`` if ``current -> new`` is allowed; ``RuntimeError`` (a bug) otherwise."""
    current, new = InstallState(current), InstallState(new)
    if new not in ALLOWED[current]:
        raise RuntimeError(f"install transition {current.value} -> {new.value} is not allowed")
    return new


class ResumeAction(StrEnum):
    """What the agent does at start, given the journal's state."""

    SERVE = "serve"  # idle / committed / rolled_back / failed: serve current.json
    START_DOWNLOAD = "start_download"  # offered: instruction accepted, nothing fetched yet
    RESUME_DOWNLOAD = "resume_download"  # downloading: from the first missing chunk (.have)
    STAGE = "stage"  # verified: extract into the inactive slot again (idempotent)
    TRIAL = "trial"  # staged, or trial killed fewer than the limit times: run the gate again
    ROLL_BACK = "roll_back"  # trial: the candidate crashed the agent ``crash_limit`` times


_RESUME: dict[InstallState, ResumeAction] = {
    S.IDLE: ResumeAction.SERVE,
    S.OFFERED: ResumeAction.START_DOWNLOAD,
    S.DOWNLOADING: ResumeAction.RESUME_DOWNLOAD,
    S.VERIFIED: ResumeAction.STAGE,
    S.STAGED: ResumeAction.TRIAL,
    S.TRIAL: ResumeAction.TRIAL,
    S.COMMITTED: ResumeAction.SERVE,
    S.ROLLED_BACK: ResumeAction.SERVE,
    S.FAILED: ResumeAction.SERVE,
}


CRASH_LOOP_LIMIT = 2
"""Loads of one slot that may die with the agent before it is rolled back."""


def resume_action(journal: Journal, load_crashes: int = CRASH_LOOP_LIMIT,
                  crash_limit: int = CRASH_LOOP_LIMIT) -> ResumeAction:
    """What to do on restart for the journal's state (table in install-state-machine.md).

    offered -> start_download; downloading -> resume_download; verified -> stage;
    staged -> trial; trial -> trial again while the candidate has killed the agent fewer
    than ``crash_limit`` times while loading (``load_crashes``, counted across restarts),
    else roll_back; idle, committed, rolled_back, failed -> serve (``current.json``).
    Without a crash count a trial is rolled back (the conservative choice).
    """
    if journal.state is S.TRIAL and load_crashes >= crash_limit:
        return ResumeAction.ROLL_BACK
    return _RESUME[journal.state]


JOURNAL_FORMAT = 1
SLOTS = ("a", "b")


class Journal(Model, frozen=True):
    """The persisted install state of one device."""

    WHAT: ClassVar[str] = "journal"

    state: InstallState = S.IDLE
    instruction_seq: Count = 0
    sha256: Sha256 | None = None
    name: Text256 | None = None
    version: Text256 | None = None
    target_slot: Literal["a", "b"] | None = None
    previous_slot: Literal["a", "b"] | None = None
    error: Text8192 | None = None
    updated_at: Number = 0.0

    def with_state(self, new: InstallState, **changes: Any) -> Journal:
        """A copy in state ``new`` (checked by ``advance``) with ``changes`` applied;
        ``updated_at`` defaults to now."""
        changes.setdefault("updated_at", time.time())
        return replace(self, state=advance(self.state, new), **changes)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "format_version": JOURNAL_FORMAT}

    def to_bytes(self) -> bytes:
        return p.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Journal:
        what = "journal"
        obj = load_json(data, max_size=64 * 1024, what=what)
        if not isinstance(obj, dict) or obj.get("format_version") != JOURNAL_FORMAT:
            version = obj.get("format_version") if isinstance(obj, dict) else None
            raise ProtocolError(f"journal: unsupported format_version {version!r}")
        missing = [name for name in cls.__struct_fields__ if name not in obj]
        if missing:  # the file always carries every field
            raise ProtocolError(f"journal: missing {missing[0]!r}")
        return validate(cls, obj, what)


def parse_state(value: str, what: str) -> InstallState:
    """The ``InstallState`` named ``value``; ``ProtocolError`` for an unknown name."""
    try:
        return InstallState(value)
    except ValueError as e:
        raise ProtocolError(f"{what}: unknown install state {value!r}") from e
