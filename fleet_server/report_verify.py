"""Verification of device-signed reports (docs/mqtt-protocol.md, "Signed reports").

Every state, telemetry window, event and shadow report arrives in a ``ReportEnvelope``
signed with the device key registered at enrolment. ``ReportVerifier.open`` returns the
report only when all of these hold, and otherwise raises ``ReportRejected`` naming the
reason (the label of ``edgefleet_reports_rejected_total``); nothing of a rejected report is
stored or confirmed:

- ``unknown_device``: the topic's device is not enrolled (or has no usable public key);
- ``unsigned``: a bare report, as agents before signed reports sent;
- ``bad_signature``: a malformed envelope, another key, or a signature that does not verify;
- ``wrong_device``: the signed report names another device than its topic;
- ``replayed``: an online state not newer than the last one kept (a retained state sent
  again is the same seq: ignored, not counted);
- ``wrong_bundle``: a telemetry window, shadow report or install event about a bundle the
  server never sent the device (or telemetry naming a bundle without its hash, or under
  another name@version than the hash's).

Report seqs are unique per device: a telemetry, event or shadow report whose seq is already
stored is a duplicate (confirmed again, never stored twice: ``Registry``/``RolloutStore``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable

from fleet_server.errors import NotFoundError
from fleet_server.registry import Registry
from fleet_server.report_book import ReportBook
from fleet_server.report_keys import SodiumKey
from model_bundles.errors import KeyFileError
from ota.messages import DeviceState, Event, ShadowReport, Telemetry
from ota.signed_report import ReportSignatureError, UnsignedReportError, open_report

__all__ = ["REJECT_REASONS", "SIGNED_KINDS", "RejectionLog", "ReportRejected", "ReportVerifier"]

log = logging.getLogger(__name__)

REJECT_REASONS = ("unknown_device", "unsigned", "bad_signature", "wrong_device", "replayed",
                  "wrong_bundle")

Report = DeviceState | Telemetry | Event | ShadowReport
SIGNED_KINDS: dict[str, type[Report]] = {
    "state": DeviceState, "telemetry": Telemetry, "events": Event, "shadow": ShadowReport}
"""Topic kind -> the message its signed payload must be."""


class ReportRejected(Exception):
    """A report the server refuses; ``reason`` is one of ``REJECT_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


KEY_TTL_S = 10.0
"""How long a device's public key is used from memory before the registry is read again."""
CACHE_MAX = 100_000


class ReportVerifier:
    """The checks, over one registry and one ``ReportBook``. Device keys are cached for
    ``KEY_TTL_S`` (a report costs no registry read; ``preload`` reads a batch's missing keys
    in one query), bundle refs and the (device, bundle) pairs found sent for good (neither
    ever changes). Signatures are checked by libsodium (``fleet_server.report_keys``)."""

    def __init__(self, *, registry: Registry, book: ReportBook,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry, self._book, self._clock = registry, book, clock
        self._keys: dict[str, tuple[float, SodiumKey]] = {}  # device -> (read at, key)
        self._refs: dict[str, str] = {}  # bundle sha256 -> name@version
        self._sent_pairs: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def open(self, device_id: str, kind: str, envelope: bytes) -> Report | None:
        """The verified report from ``device_id``'s ``kind`` topic; ``None`` for a state the
        server already holds. ``ReportRejected`` for a refused one, ``ProtocolError`` for
        bytes that are no protocol message at all (or a signed payload that does not parse)."""
        key = self._device_key(device_id)
        try:
            payload = open_report(envelope, key)
        except UnsignedReportError as e:
            raise ReportRejected("unsigned", str(e)) from None
        except ReportSignatureError as e:
            raise ReportRejected("bad_signature", str(e)) from None
        report = SIGNED_KINDS[kind].from_bytes(payload)
        if report.device_id != device_id:
            raise ReportRejected("wrong_device", f"signed report names device "
                                 f"{report.device_id!r} but arrived on {device_id!r}")
        if isinstance(report, DeviceState):
            return self._fresh_state(report)
        self._check_bundles(report)
        return report

    def state_kept(self, state: DeviceState) -> None:
        """Record that an online ``state`` was stored (its seq is the new floor)."""
        if state.status == "online":
            self._book.set_state_seq(device_id=state.device_id, seq=state.seq)

    def preload(self, device_ids: Iterable[str]) -> int:
        """Read the keys of ``device_ids`` not cached (or cached for ``KEY_TTL_S``) in one
        registry query, before their reports are opened (the ingest worker, per batch);
        how many were read. A device without a usable key is left to ``open``, which
        refuses its report naming why."""
        now = self._clock()
        with self._lock:
            missing = sorted({d for d in device_ids
                              if (c := self._keys.get(d)) is None or now - c[0] >= KEY_TTL_S})
        if not missing:
            return 0
        loaded: dict[str, tuple[float, SodiumKey]] = {}
        for device_id, pem in self._registry.public_keys(device_ids=missing).items():
            try:
                loaded[device_id] = (now, _parse_key(device_id, pem))
            except ReportRejected:
                continue
        self._remember(loaded)
        return len(loaded)

    # -- checks -------------------------------------------------------------------------
    def _device_key(self, device_id: str) -> SodiumKey:
        now = self._clock()
        with self._lock:
            cached = self._keys.get(device_id)
        if cached is not None and now - cached[0] < KEY_TTL_S:
            return cached[1]
        try:
            pem = self._registry.get_device(device_id=device_id).get("public_key")
        except NotFoundError:
            raise ReportRejected("unknown_device", f"no device {device_id!r}") from None
        key = _parse_key(device_id, pem)
        self._remember({device_id: (now, key)})
        return key

    def _remember(self, keys: dict[str, tuple[float, SodiumKey]]) -> None:
        with self._lock:
            if len(self._keys) + len(keys) > CACHE_MAX:
                self._keys.clear()
            self._keys.update(keys)

    def _fresh_state(self, state: DeviceState) -> DeviceState | None:
        """An offline state (the last will, signed at connect) only marks the device offline
        and is taken whatever its seq; an online one must be newer than the last kept."""
        if state.status == "offline":
            return state
        last = self._book.state_seq(device_id=state.device_id)
        if state.seq == last:
            return None  # the retained state delivered again
        if state.seq < last:
            raise ReportRejected("replayed", f"state seq {state.seq} is older than the last "
                                 f"state kept ({last})")
        return state

    def _check_bundles(self, report: Telemetry | Event | ShadowReport) -> None:
        device = report.device_id
        if isinstance(report, Telemetry):
            if report.bundle is None:
                return
            if report.bundle_sha256 is None:
                raise ReportRejected("wrong_bundle", f"telemetry names {report.bundle!r} "
                                     "without its bundle_sha256")
            self._sent(device, report.bundle_sha256)
            ref = self._ref(report.bundle_sha256)
            if ref != report.bundle:
                raise ReportRejected("wrong_bundle", f"telemetry names {report.bundle!r} but "
                                     f"hash {report.bundle_sha256[:12]} is {ref!r}")
        elif isinstance(report, ShadowReport):
            if report.active_sha256 is None:
                raise ReportRejected("wrong_bundle", "shadow report without active_sha256")
            self._sent(device, report.active_sha256)
            self._sent(device, report.candidate_sha256)
        elif report.kind == "install" and report.sha256 is not None:
            self._sent(device, report.sha256)

    def _sent(self, device_id: str, sha256: str) -> None:
        if (device_id, sha256) in self._sent_pairs:
            return
        if not self._book.was_sent(device_id=device_id, sha256=sha256):
            raise ReportRejected("wrong_bundle", f"bundle {sha256[:12]} was never sent to "
                                 f"{device_id!r}")
        with self._lock:
            if len(self._sent_pairs) > CACHE_MAX:
                self._sent_pairs.clear()
            self._sent_pairs.add((device_id, sha256))

    def _ref(self, sha256: str) -> str | None:
        ref = self._refs.get(sha256)
        if ref is None:
            try:
                ref = str(self._registry.find_bundle(key=sha256)["ref"])
            except NotFoundError:
                return None
            self._refs[sha256] = ref
        return ref


def _parse_key(device_id: str, pem: str | None) -> SodiumKey:
    pem = str(pem or "")
    try:
        if not pem.startswith("-----BEGIN PUBLIC KEY-----"):  # never read as a file path
            raise ValueError("not a PEM public key")
        return SodiumKey.from_pem(pem)
    except (KeyFileError, ValueError) as e:
        raise ReportRejected("unknown_device",
                             f"device {device_id!r} has no usable public key: {e}") from None


class RejectionLog:
    """One warning per (device, reason) per ``window_s``; the rest only counted."""

    def __init__(self, window_s: float = 60.0, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window, self._max, self._clock = window_s, max_keys, clock
        self._last: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def should_log(self, device_id: str, reason: str) -> bool:
        now, key = self._clock(), (device_id, reason)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._window:
                return False
            self._last[key] = now
            self._last.move_to_end(key)
            while len(self._last) > self._max:
                self._last.popitem(last=False)
            return True

