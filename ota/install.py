"""The device's install state machine (pure core: states, allowed transitions, journal).

The agent persists ``Journal.to_bytes()`` atomically before acting on a new state; after a
restart ``resume_action(journal)`` says what to do next (docs/install-state-machine.md).
Asking for a transition the table forbids is a bug and raises ``RuntimeError``; a journal
file that does not parse is bad data and raises ``ProtocolError``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ota import payload as p
from ota.errors import ProtocolError


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


@dataclass(frozen=True)
class Journal:
    """The persisted install state of one device."""

    state: InstallState = S.IDLE
    instruction_seq: int = 0
    sha256: str | None = None
    name: str | None = None
    version: str | None = None
    target_slot: str | None = None
    previous_slot: str | None = None
    error: str | None = None
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", parse_state(self.state, "journal"))
        p.check_int(self.instruction_seq, "journal.instruction_seq")
        p.check_opt_sha256(self.sha256, "journal.sha256")
        p.check_opt_str(self.name, "journal.name", max_len=256)
        p.check_opt_str(self.version, "journal.version", max_len=256)
        for name in ("target_slot", "previous_slot"):
            value = getattr(self, name)
            p.require(value is None or value in SLOTS, f"journal.{name} must be 'a', 'b' or null")
        p.check_opt_str(self.error, "journal.error", max_len=8192)
        p.check_number(self.updated_at, "journal.updated_at")

    def with_state(self, new: InstallState, **changes: Any) -> Journal:
        """A copy in state ``new`` (checked by ``advance``) with ``changes`` applied;
        ``updated_at`` defaults to now."""
        changes.setdefault("updated_at", time.time())
        return dataclasses.replace(self, state=advance(self.state, new), **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        d["format_version"] = JOURNAL_FORMAT
        return d

    def to_bytes(self) -> bytes:
        return p.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Journal:
        what = "journal"
        obj = p.load_object(data, max_size=64 * 1024, what=what)
        if obj.get("format_version") != JOURNAL_FORMAT:
            raise ProtocolError(f"journal: unsupported format_version {obj.get('format_version')!r}")
        return cls(
            state=parse_state(p.get_str(obj, "state", what), what),
            instruction_seq=p.get_int(obj, "instruction_seq", what),
            sha256=p.get_opt_str(obj, "sha256", what),
            name=p.get_opt_str(obj, "name", what),
            version=p.get_opt_str(obj, "version", what),
            target_slot=p.get_opt_str(obj, "target_slot", what),
            previous_slot=p.get_opt_str(obj, "previous_slot", what),
            error=p.get_opt_str(obj, "error", what),
            updated_at=p.get_float(obj, "updated_at", what),
        )


def parse_state(value: str, what: str) -> InstallState:
    """The ``InstallState`` named ``value``; ``ProtocolError`` for an unknown name."""
    try:
        return InstallState(value)
    except ValueError as e:
        raise ProtocolError(f"{what}: unknown install state {value!r}") from e
