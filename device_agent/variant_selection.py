"""Which (variant, delegate) pair serves a bundle: a pure policy and its record.

Policy (docs/delegates.md):

1. Candidates are every pair of a bundle variant and an available delegate that runs the
   variant's format, in the device's delegate preference order; for one delegate, the
   variants that list it in their ``delegates`` come first, then the manifest's order
   (a variant's ``delegates`` is its publisher's preference, not a restriction: the gate
   decides). A delegate left out is recorded once with the probe's reason; a pair left out
   for its format is recorded too. Only the delegates that could serve a pair are probed
   (``worth_probing``): probing imports the delegate's runtime (LiteRT alone is ~8 MiB of
   resident memory), so a device serving ONNX bundles never loads LiteRT.
2. An operator override (per device or group: ``variant`` and/or ``delegate``) moves the
   pairs it matches to the front; it is a preference, so if they all fail the policy
   continues with the rest, and the record says so.
3. Each candidate is opened and run on the bundle's golden inputs under the variant's
   tolerance; a failing pair is skipped with its measured error and the next one tried.
4. Of the pairs that pass, the agent keeps the override's pair if one passed, else the
   fastest (median golden-run latency). No pair passes: the install fails and the
   previous model keeps serving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from delegates.base import ProbeResult

__all__ = ["Candidate", "Outcome", "Override", "choose", "plan", "worth_probing"]


@dataclass(frozen=True)
class Override:
    """An operator's preference for one device or group; ``None`` fields match anything."""

    variant: str | None = None
    delegate: str | None = None

    def __post_init__(self) -> None:
        for name in ("variant", "delegate"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"override {name} must be a non-empty string or None")

    def describe(self) -> str:
        return "/".join(f"{k}={v}" for k, v in (("variant", self.variant),
                                                 ("delegate", self.delegate)) if v)

    def matches(self, variant: str, delegate: str) -> bool:
        return (self.variant in (None, variant)) and (self.delegate in (None, delegate))

    @classmethod
    def from_config(cls, obj: Mapping[str, Any] | None, device_id: str = "",
                    group: str = "") -> Override | None:
        """``{"devices": {id: {...}}, "groups": {name: {...}}}``: the device entry wins."""
        if not obj:
            return None
        for scope, key in (("devices", device_id), ("groups", group)):
            entry = (obj.get(scope) or {}).get(key) if key else None
            if entry:
                return cls(variant=entry.get("variant"), delegate=entry.get("delegate"))
        return None


@dataclass(frozen=True)
class Candidate:
    variant: str
    delegate: str
    preferred: bool = False  # matched the operator override


_TEXT = {"skipped": "skipped", "open-failed": "open failed", "fell-back": "fell back",
         "gate-failed": "golden gate failed", "passed": "passed"}


@dataclass(frozen=True)
class Outcome:
    """What happened to one pair: ``skipped``, ``open-failed``, ``fell-back`` (the runtime
    put the requested delegate's work elsewhere), ``gate-failed`` or ``passed``."""

    variant: str
    delegate: str
    result: str
    detail: str = ""
    max_abs_error: float | None = None
    latency_ms: float | None = None
    preferred: bool = False

    def __post_init__(self) -> None:
        if self.result not in _TEXT:
            raise ValueError(f"bad outcome {self.result!r}")

    def line(self) -> str:
        err = "" if self.max_abs_error is None else f", max abs error {self.max_abs_error:.3g}"
        ms = "" if self.latency_ms is None else f", {self.latency_ms:.3f} ms"
        who = self.delegate if self.variant == "*" else f"{self.variant}/{self.delegate}"
        return f"{who}: {_TEXT[self.result]} ({self.detail}{err}{ms})"

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "delegate": self.delegate, "result": self.result,
                "detail": self.detail, "max_abs_error": self.max_abs_error,
                "latency_ms": self.latency_ms}


def _names(preferred: Sequence[str], override: Override | None) -> list[str]:
    names = list(dict.fromkeys(preferred))
    if override and override.delegate and override.delegate not in names:
        names.insert(0, override.delegate)
    return names


def worth_probing(backends: Sequence[Any], preferred: Sequence[str], variants: Sequence[Any],
                  override: Override | None = None) -> list[Any]:
    """The backends ``plan`` may pick for these variants: named in the preference (or the
    override) and running at least one variant's format; the others need no probe."""
    names = set(_names(preferred, override))
    formats = {v.format for v in variants}
    return [b for b in backends if b.name in names and b.formats & formats]


def plan(
    variants: Sequence[Any],
    preferred: Sequence[str],
    probes: Sequence[ProbeResult],
    formats: Mapping[str, frozenset[str]],
    override: Override | None = None,
) -> tuple[list[Candidate], list[Outcome]]:
    """Order the candidate pairs; return them and the pairs left out with why (pure)."""
    by_name = {p.name: p for p in probes}
    ordered: list[Candidate] = []
    skipped: list[Outcome] = []
    for name in _names(preferred, override):
        probe = by_name.get(name)
        if name not in formats:
            skipped.append(Outcome("*", name, "skipped", "unknown delegate (no backend of that name)"))
            continue
        if probe is None and any(v.format in formats[name] for v in variants):
            skipped.append(Outcome("*", name, "skipped", "not probed"))
            continue
        if probe is not None and not probe.available:
            skipped.append(Outcome("*", name, "skipped", probe.reason))
            continue
        for v in sorted(variants, key=lambda v: name not in tuple(v.delegates)):
            if v.format not in formats[name]:
                skipped.append(Outcome(v.id, name, "skipped", f"does not run {v.format}"))
            else:
                ordered.append(Candidate(v.id, name, bool(override and override.matches(v.id, name))))
    ordered.sort(key=lambda c: not c.preferred)  # stable: override first, order kept
    return ordered, skipped


def _not_honoured(outcomes: Sequence[Outcome], override: Override) -> str:
    """Why no pair of ``override`` serves, from the record (first reason found)."""
    for o in outcomes:
        if o.preferred or (o.variant == "*" and o.delegate == override.delegate):
            return f"operator override {override.describe()} not honoured ({o.line()}); "
    return (f"operator override {override.describe()} not honoured (no candidate pair "
            "matches it); ")


def choose(outcomes: Sequence[Outcome], override: Override | None = None
           ) -> tuple[Outcome | None, str]:
    """Pick among the outcomes: a passing override pair, else the fastest passing pair.
    With an ``override`` that no passing pair matches, the reason says why it was not
    honoured (unavailable delegate, gate failure, fallback, unknown variant)."""
    passed = [o for o in outcomes if o.result == "passed"]
    if not passed:
        return None, "no (variant, delegate) pair passed the golden gate"
    pref = [o for o in passed if o.preferred]
    if pref:
        return pref[0], f"operator override {override.describe()}" if override else (
            "operator override")
    if override is not None:
        best, why = choose(passed)
        return best, _not_honoured(outcomes, override) + why
    timed = [o for o in passed if o.latency_ms is not None]
    if timed:
        best = min(timed, key=lambda o: o.latency_ms or 0.0)
        others = len(passed) - 1
        return best, (f"fastest passing pair ({best.latency_ms:.3f} ms"
                      f"{f', {others} other(s) passed' if others else ''})")
    return passed[0], "first passing pair in preference order (not timed)"
