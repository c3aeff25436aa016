"""The device's update path as a pure core: events in, actions out.

``UpdaterCore`` holds the device record (``record.py``) and the transfers under way
(``transfer.py``); it does no I/O and starts no thread. The agent (the shell) feeds it
events (an instruction arrived, the trust check answered, a chunk was stored, an HTTP
fetch returned, a transfer could not start, a tick) and executes the actions it returns in
order (persist the record, check trust, ask for chunks, fetch ranges, install, stage the
shadow candidate, report). Every ``now`` is wall-clock seconds (``time.time()``): the
instruction's expiry is wall-clock, and one clock keeps the backoffs comparable. The same ``Transfer`` and the same trust check serve the
instruction's bundle and its shadow candidate (docs/install-state-machine.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ota.chunks import request_ranges
from ota.delta import DeltaRef
from ota.install import IN_PROGRESS, InstallState, Journal
from ota.instructions import BundleRef, Instruction, verify_instruction
from ota.updater.record import DeviceRecord, ShadowRecord
from ota.updater.transfer import Role, Transfer

__all__ = [
    "DISK_RESERVE_BYTES", "Action", "CancelTransfer", "CheckTrust", "FetchRanges", "Finish",
    "OpenTransfer", "OverrideChanged", "Persist", "PublishState", "Refuse", "Report",
    "RequestChunks", "RetryPolicy", "ShadowRate", "StopShadow", "UpdaterCore",
]

S = InstallState
DISK_RESERVE_BYTES = 8 * 1024 * 1024
"""Free space kept beyond a transfer's needs (the part file and the extracted copy)."""


# -- actions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Persist:
    """Write ``record`` atomically; report the journal transition when it changed state."""
    record: DeviceRecord


@dataclass(frozen=True)
class Refuse:
    """The instruction is refused: count it and report ``detail`` (nothing else changes)."""
    detail: str


@dataclass(frozen=True)
class Report:
    """Report ``detail`` as an ``error`` event (the update path goes on)."""
    detail: str


@dataclass(frozen=True)
class CheckTrust:
    """Refresh trusted metadata and check that it lists every one of ``refs``; answer
    with ``UpdaterCore.on_trust``."""
    seq: int
    refs: tuple[BundleRef, ...]


@dataclass(frozen=True)
class OpenTransfer:
    """Open the part file of ``ref`` (resuming what is on disk) if ``need_bytes`` are free;
    answer with ``on_opened`` or ``on_transfer_failed``."""
    role: Role
    ref: BundleRef
    need_bytes: int


@dataclass(frozen=True)
class RequestChunks:
    role: Role
    sha256: str
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class FetchRanges:
    """Fetch the missing chunks over the HTTP range path; answer with ``on_fetched``."""
    role: Role
    sha256: str


@dataclass(frozen=True)
class Finish:
    """Every chunk is stored: finalize, then install (bundle) or stage (shadow)."""
    role: Role
    ref: BundleRef


@dataclass(frozen=True)
class CancelTransfer:
    """Discard the part file of ``role``'s transfer."""
    role: Role


@dataclass(frozen=True)
class StopShadow:
    """Stop running the candidate and remove everything staged for it."""


@dataclass(frozen=True)
class ShadowRate:
    rate: float
    pace: float | None = None
    """Samples per minute the stage asks for (None: the device's configured pace)."""


@dataclass(frozen=True)
class OverrideChanged:
    """The delegate override changed; ``reload`` the active model (it is the same bundle)."""
    reload: bool


@dataclass(frozen=True)
class PublishState:
    pass


Action = (Persist | Refuse | Report | CheckTrust | OpenTransfer | RequestChunks | FetchRanges
          | Finish | CancelTransfer | StopShadow | ShadowRate | OverrideChanged | PublishState)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for a trust check that failed for a transient reason (network, HTTP 5xx):
    ``base_s * 2**attempt`` capped at ``max_s``; the instruction waits meanwhile."""
    base_s: float = 2.0
    max_s: float = 300.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * 2.0 ** min(attempt, 30))


@dataclass
class _Pending:
    instr: Instruction
    attempts: int = 0
    retry_at: float | None = None


def delta_as_ref(delta: DeltaRef, bundle: BundleRef) -> BundleRef:
    """The delta file as a transfer target: its hash, size and chunk hashes under the
    bundle's name (a ``Transfer`` and a ``ChunkAssembler`` need nothing else)."""
    return BundleRef(name=bundle.name, version=bundle.version, sha256=delta.sha256,
                     size=delta.size, chunk_size=delta.chunk_size,
                     chunk_hashes=delta.chunk_hashes, publisher_key_id=bundle.publisher_key_id,
                     publisher_public_key=bundle.publisher_public_key)


class UpdaterCore:
    def __init__(self, record: DeviceRecord, *, fleet_key: Any, device_id: str,
                 http_min_bytes: int, retry: RetryPolicy | None = None) -> None:
        self.record = record
        self.fleet_key = fleet_key
        self.device_id = device_id
        self.http_min_bytes = http_min_bytes
        self.retry = retry or RetryPolicy()
        self.transfers: dict[Role, Transfer] = {}
        self.pending: _Pending | None = None

    # -- record helpers ------------------------------------------------------------------------

    @property
    def journal(self) -> Journal:
        return self.record.journal

    def _set(self, **changes: Any) -> Persist:
        self.record = self.record.replace(**changes)
        return Persist(self.record)

    def _move(self, new: InstallState, **changes: Any) -> Persist:
        return self._set(journal=self.record.journal.with_state(new, **changes))

    def transfer_for(self, sha256: str) -> Transfer | None:
        return next((t for t in self.transfers.values() if t.sha256 == sha256), None)

    # -- instructions --------------------------------------------------------------------------

    def on_instruction(self, envelope: bytes, *, now: float, active_sha: str | None
                       ) -> list[Action]:
        """A ``desired`` message: verify it (signature, device, replay, expiry); then the
        trust check of every bundle it names, or its effect at once when it names none."""
        try:
            instr = verify_instruction(envelope, self.fleet_key, device_id=self.device_id,
                                       last_seq=self.record.applied_seq, now=now)
        except Exception as e:
            return [Refuse(f"instruction refused: {e}")]
        refs = tuple(r for r in (instr.bundle, instr.shadow) if r is not None)
        if not refs:
            self.pending = None
            return self._apply(instr, active_sha)
        self.pending = _Pending(instr)
        return [CheckTrust(instr.seq, refs)]

    def on_trust(self, seq: int, *, error: str | None, transient: bool, now: float,
                 active_sha: str | None) -> list[Action]:
        """The trust check's answer for instruction ``seq``: apply it, refuse it, or (a
        transient failure) retry after a backoff, without a new instruction."""
        pend = self.pending
        if pend is None or pend.instr.seq != seq:
            return []  # superseded meanwhile
        if error is None:
            self.pending = None
            return self._apply(pend.instr, active_sha)
        if transient and now < pend.instr.expires_at:
            delay = self.retry.delay(pend.attempts)
            pend.attempts += 1
            pend.retry_at = now + delay
            return [Report(f"trust check of instruction {seq} failed ({error}); "
                           f"retry {pend.attempts} in {delay:.0f} s")]
        self.pending = None
        return [Refuse(f"instruction refused: {error}")]

    def _apply(self, instr: Instruction, active_sha: str | None) -> list[Action]:
        ref, j = instr.bundle, self.record.journal
        if (ref is not None and j.state in IN_PROGRESS and j.instruction_seq == instr.seq
                and j.sha256 == ref.sha256):
            # This very instruction's install is on record and resumed: a crash came
            # between recording it and recording applied_seq.
            return [self._set(applied_seq=instr.seq)]
        out: list[Action] = self._apply_shadow(instr.shadow, instr.shadow_sample_rate or 0.0,
                                                instr.shadow_samples_per_minute)
        override = None if instr.delegate_override is None else (
            instr.delegate_override.to_dict() or None)
        if ref is not None and override != self.record.delegate_override:
            out += [self._set(delegate_override=override),
                    OverrideChanged(reload=active_sha == ref.sha256)]
        if ref is None or active_sha == ref.sha256:  # no model change: also cancels
            why = "cancelled" if ref is None else "superseded"
            out += self._cancel(f"{why} by instruction {instr.seq}")
            out += [self._set(applied_seq=instr.seq), PublishState()]
            return out
        if j.state in IN_PROGRESS:
            out.append(self._move(S.FAILED, error=f"superseded by instruction {instr.seq}"))
            old = self.transfers.get(Role.BUNDLE)
            if old is not None and old.sha256 != ref.sha256:
                out.append(CancelTransfer(Role.BUNDLE))
            self.transfers.pop(Role.BUNDLE, None)
            out += self._drop_delta()
        # The delta only when the device serves its base (docs/mqtt-protocol.md, "Deltas").
        delta = instr.delta if instr.delta is not None and (
            instr.delta.base_sha256 == active_sha) else None
        out.append(self._set(bundle=ref, delta=delta))
        out.append(self._move(S.OFFERED, instruction_seq=instr.seq, sha256=ref.sha256,
                              name=ref.name, version=ref.version, error=None,
                              target_slot=None, previous_slot=None))
        # applied_seq only after the install is on record: a crash in between must leave
        # the instruction acceptable again (docs/install-state-machine.md, "ordering").
        out.append(self._set(applied_seq=instr.seq))
        out.append(self._move(S.DOWNLOADING))
        out.append(self._open_install(ref, need=True))
        return out

    def _open_install(self, ref: BundleRef, *, need: bool) -> OpenTransfer:
        """The install's transfer: the record's delta when it has one, else the bundle."""
        d = self.record.delta
        if d is None:
            return OpenTransfer(Role.BUNDLE, ref, ref.size * 2 + DISK_RESERVE_BYTES if need else 0)
        return OpenTransfer(Role.DELTA, delta_as_ref(d, ref),
                            d.size + ref.size * 2 + DISK_RESERVE_BYTES if need else 0)

    def _drop_delta(self) -> list[Action]:
        if self.transfers.pop(Role.DELTA, None) is None and self.record.delta is None:
            return []
        return [CancelTransfer(Role.DELTA), self._set(delta=None)]

    def on_delta_failed(self, error: str) -> list[Action]:
        """The delta could not be fetched, was refused, or did not rebuild the bundle
        exactly: drop it and fetch the bundle itself (the reason is reported)."""
        ref, out = self.record.bundle, self._drop_delta()
        if ref is None or self.record.journal.state not in IN_PROGRESS:
            return out
        return [*out, Report(f"delta update of {ref.name}@{ref.version} failed ({error}); "
                             "fetching the full bundle"),
                OpenTransfer(Role.BUNDLE, ref, ref.size * 2 + DISK_RESERVE_BYTES)]

    def on_delta_rebuilt(self) -> list[Action]:
        """The bundle was rebuilt from the delta (its file is in place): forget the delta,
        so a restart installs that file instead of fetching the delta again."""
        return [self._set(delta=None)] if self.record.delta is not None else []

    def _apply_shadow(self, ref: BundleRef | None, rate: float,
                      pace: float | None = None) -> list[Action]:
        cur = self.record.shadow
        if ref is None:
            self.transfers.pop(Role.SHADOW, None)
            return [StopShadow(), *([self._set(shadow=None)] if cur is not None else [])]
        if cur is not None and cur.ref.sha256 == ref.sha256:
            return [self._set(shadow=ShadowRecord(cur.ref, rate, cur.failed, pace)),
                    ShadowRate(rate, pace)]
        self.transfers.pop(Role.SHADOW, None)
        return [StopShadow(), self._set(shadow=ShadowRecord(ref, rate, pace=pace)),
                OpenTransfer(Role.SHADOW, ref, ref.size * 2 + DISK_RESERVE_BYTES)]

    def _cancel(self, why: str) -> list[Action]:
        """Stop a transfer under way (the only install state an instruction can meet)."""
        if self.record.journal.state not in IN_PROGRESS:
            return []
        self.transfers.pop(Role.BUNDLE, None)
        return [CancelTransfer(Role.BUNDLE), *self._drop_delta(),
                self._move(S.FAILED, error=why)]

    # -- transfers -------------------------------------------------------------------------------

    def resume(self, role: Role, ref: BundleRef) -> list[Action]:
        """After a restart: pick the transfer up from its part file (no disk check: the
        space was found when it began). The install resumes its delta if it had one."""
        if role is Role.BUNDLE:
            return [self._open_install(ref, need=False)]
        return [OpenTransfer(role, ref, 0)]

    def on_opened(self, role: Role, ref: BundleRef, missing: set[int], *, now: float
                  ) -> list[Action]:
        t = Transfer(role, ref, set(missing), http=ref.size >= self.http_min_bytes,
                     last_progress=now)
        self.transfers[role] = t
        if t.complete:
            del self.transfers[role]
            return [Finish(role, ref)]
        return self._request(t)

    def on_transfer_failed(self, role: Role, error: str) -> list[Action]:
        """The transfer could not start or finish (disk space, a bad assembled file)."""
        self.transfers.pop(role, None)
        if role is Role.SHADOW:
            return self.shadow_refused(error)
        if role is Role.DELTA:
            return self.on_delta_failed(error)
        if self.record.journal.state not in IN_PROGRESS:
            return []
        return [CancelTransfer(Role.BUNDLE), self._move(S.FAILED, error=error)]

    def shadow_refused(self, detail: str) -> list[Action]:
        cur = self.record.shadow
        out: list[Action] = [StopShadow()]
        if cur is not None:
            out.append(self._set(shadow=ShadowRecord(cur.ref, cur.rate, detail, cur.pace)))
        return [*out, Report(detail)]

    def _request(self, t: Transfer) -> list[Action]:
        if t.http:
            return [FetchRanges(t.role, t.sha256)]
        return [RequestChunks(t.role, t.sha256,
                              tuple(request_ranges(t.next_window())))]

    def on_chunk(self, role: Role, index: int, *, now: float) -> list[Action]:
        """Chunk ``index`` of ``role``'s transfer was checked and stored."""
        t = self.transfers.get(role)
        if t is None:
            return []
        t.received(index, now)
        if t.complete:
            del self.transfers[role]
            return [Finish(role, t.ref)]
        return [] if t.outstanding or t.http else self._request(t)

    def on_fetched(self, role: Role, sha256: str, missing: set[int], *, now: float,
                   error: str | None) -> list[Action]:
        """An HTTP fetch returned (done, yielded to a waiting instruction, or failed: the
        tick fetches again after ``REREQUEST_AFTER_S``)."""
        t = self.transfers.get(role)
        if t is None or t.sha256 != sha256:
            return []
        t.reset_missing(missing, now)
        if t.complete:
            del self.transfers[role]
            return [Finish(role, t.ref)]
        return [Report(f"http download: {error}")] if error else []

    def on_rerequest(self) -> list[Action]:
        """The link (re)connected, or a fetch yielded: ask for every transfer again."""
        out: list[Action] = []
        for t in list(self.transfers.values()):
            out += self._request(t)
        return out

    def on_tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for t in list(self.transfers.values()):
            if t.stalled(now):
                t.last_progress = now
                out += self._request(t)
        pend = self.pending
        if pend is not None and pend.retry_at is not None and now >= pend.retry_at:
            pend.retry_at = None
            out.append(CheckTrust(pend.instr.seq, tuple(
                r for r in (pend.instr.bundle, pend.instr.shadow) if r is not None)))
        return out
