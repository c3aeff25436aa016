"""JSON messages of protocol 1 (state, telemetry, events, chunk requests).

Each message is a frozen dataclass that validates itself. ``to_bytes()`` writes canonical
JSON with ``"protocol": 1``; ``from_bytes(b, limits)`` bounds the size, checks the protocol
number and the type of every known key, ignores unknown keys, and raises ``ProtocolError``
with a precise message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from ota import payload as p
from ota.errors import ProtocolError
from ota.install import parse_state
from ota.limits import DEFAULT_LIMITS, PROTOCOL_VERSION, ProtocolLimits
from ota.topics import validate_device_id

SLOTS = ("a", "b")
STATUSES = ("online", "offline")
EVENT_KINDS = ("install", "agent", "error")


class _Message:
    """Shared ``to_bytes``/``from_bytes`` for top-level messages."""

    WHAT: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Self:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return p.dumps({"protocol": PROTOCOL_VERSION, **self.to_dict()})

    @classmethod
    def from_bytes(cls, b: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> Self:
        obj = p.load_object(b, max_size=limits.max_json_payload, what=cls.WHAT)
        p.check_protocol(obj, cls.WHAT)
        return cls.from_dict(obj)


def check_execution(e: Any, what: str) -> None:
    """Validate an optional proof-of-execution object (bounded, typed)."""
    p.require(isinstance(e, dict), f"{what} must be an object")
    for key in ("requested", "delegate"):
        p.check_str(e.get(key), f"{what}.{key}", max_len=256)
    for key in ("fallback_reason", "variant", "choice"):
        p.check_opt_str(e.get(key), f"{what}.{key}", max_len=4096)
    p.require(isinstance(e.get("fallback"), bool), f"{what}.fallback must be a boolean")
    providers = e.get("providers", [])
    p.require(isinstance(providers, list) and len(providers) <= 32
              and all(isinstance(x, str) and len(x) <= 256 for x in providers),
              f"{what}.providers must be a list of at most 32 strings")
    counts = e.get("node_counts", {})
    p.require(isinstance(counts, dict) and len(counts) <= 32
              and all(isinstance(k, str) and len(k) <= 256 and type(v) is int and v >= 0
                      for k, v in counts.items()),
              f"{what}.node_counts must map provider names to counts >= 0")
    override = e.get("override")
    if override is not None:
        p.require(isinstance(override, dict), f"{what}.override must be an object")
        p.check_str(override.get("requested"), f"{what}.override.requested", max_len=256)
        p.require(isinstance(override.get("honoured"), bool),
                  f"{what}.override.honoured must be a boolean")


@dataclass(frozen=True)
class ActiveModel:
    """The model a device serves."""

    name: str
    version: str
    sha256: str
    slot: str
    delegate: str
    # Optional proof of execution (docs/mqtt-protocol.md, docs/delegates.md): requested,
    # delegate, providers, node_counts, fallback, fallback_reason, variant, choice.
    execution: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.execution is not None:
            check_execution(self.execution, "active.execution")
        p.check_str(self.name, "active.name", max_len=256)
        p.check_str(self.version, "active.version", max_len=256)
        p.check_sha256(self.sha256, "active.sha256")
        p.require(self.slot in SLOTS, f"active.slot must be 'a' or 'b', got {self.slot!r}")
        p.check_str(self.delegate, "active.delegate", max_len=256)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "slot": self.slot,
            "delegate": self.delegate,
            **({} if self.execution is None else {"execution": dict(self.execution)}),
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "active") -> ActiveModel:
        return cls(
            name=p.get_str(obj, "name", what),
            version=p.get_str(obj, "version", what),
            sha256=p.get_str(obj, "sha256", what),
            slot=p.get_str(obj, "slot", what),
            delegate=p.get_str(obj, "delegate", what),
            execution=p.get_obj(obj, "execution", what),
        )


@dataclass(frozen=True)
class InstallStatus:
    """Where the latest install stands (``state`` is an ``InstallState`` value)."""

    seq: int
    sha256: str | None
    state: str
    error: str | None = None
    progress: float = 0.0

    def __post_init__(self) -> None:
        p.check_int(self.seq, "install.seq")
        p.check_opt_sha256(self.sha256, "install.sha256")
        p.check_str(self.state, "install.state", max_len=32)
        object.__setattr__(self, "state", str(parse_state(self.state, "install").value))
        p.check_opt_str(self.error, "install.error", max_len=8192)
        p.check_number(self.progress, "install.progress")
        p.require(self.progress <= 1.0, f"install.progress must be <= 1.0, got {self.progress}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "sha256": self.sha256,
            "state": self.state,
            "error": self.error,
            "progress": self.progress,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "install") -> InstallStatus:
        return cls(
            seq=p.get_int(obj, "seq", what),
            sha256=p.get_opt_str(obj, "sha256", what),
            state=p.get_str(obj, "state", what),
            error=p.get_opt_str(obj, "error", what),
            progress=p.get_float(obj, "progress", what),
        )


@dataclass(frozen=True)
class DeviceState(_Message):
    """Retained on ``.../state``; the last will is ``DeviceState.offline(device_id)``."""

    WHAT: ClassVar[str] = "DeviceState"

    device_id: str
    status: str
    ts: float
    agent_version: str
    applied_seq: int
    active: ActiveModel | None = None
    install: InstallStatus | None = None

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        p.require(self.status in STATUSES, f"status must be 'online' or 'offline', got {self.status!r}")
        p.check_number(self.ts, "ts")
        p.check_str(self.agent_version, "agent_version", max_len=64, empty=True)
        p.check_int(self.applied_seq, "applied_seq")
        p.require(
            self.active is None or isinstance(self.active, ActiveModel),
            "active must be an ActiveModel or None",
        )
        p.require(
            self.install is None or isinstance(self.install, InstallStatus),
            "install must be an InstallStatus or None",
        )

    @classmethod
    def offline(cls, device_id: str, *, ts: float = 0.0, agent_version: str = "") -> DeviceState:
        """The last-will payload. It says only that the device is gone: a receiver keeps the
        device's other fields from its previous ``online`` state."""
        return cls(device_id, "offline", ts, agent_version, 0, None, None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "status": self.status,
            "ts": self.ts,
            "agent_version": self.agent_version,
            "applied_seq": self.applied_seq,
            "active": None if self.active is None else self.active.to_dict(),
            "install": None if self.install is None else self.install.to_dict(),
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> DeviceState:
        w = cls.WHAT
        active = p.get_obj(obj, "active", w)
        install = p.get_obj(obj, "install", w)
        return cls(
            device_id=p.get_str(obj, "device_id", w),
            status=p.get_str(obj, "status", w),
            ts=p.get_float(obj, "ts", w),
            agent_version=p.get_str(obj, "agent_version", w),
            applied_seq=p.get_int(obj, "applied_seq", w),
            active=None if active is None else ActiveModel.from_dict(active, f"{w}.active"),
            install=None if install is None else InstallStatus.from_dict(install, f"{w}.install"),
        )


@dataclass(frozen=True)
class LatencySummary:
    """Latency percentiles of one telemetry window, in milliseconds."""

    p50: float
    p95: float
    p99: float

    def __post_init__(self) -> None:
        for name in ("p50", "p95", "p99"):
            p.check_number(getattr(self, name), f"latency_ms.{name}")

    def to_dict(self) -> dict[str, Any]:
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99}

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "latency_ms") -> LatencySummary:
        return cls(
            p50=p.get_float(obj, "p50", what),
            p95=p.get_float(obj, "p95", what),
            p99=p.get_float(obj, "p99", what),
        )


@dataclass(frozen=True)
class Telemetry(_Message):
    """One telemetry window; the server stores each ``(device_id, seq)`` once."""

    WHAT: ClassVar[str] = "Telemetry"

    device_id: str
    seq: int
    ts: float
    window_s: float
    bundle: str | None
    delegate: str | None
    inferences: int
    errors: int
    total_inferences: int
    total_errors: int
    latency_ms: LatencySummary | None = None
    # Optional execution summary (docs/delegates.md): the variant served in this window and
    # whether its requested delegate fell back, so "silent fallback" is visible per window.
    # Written only when set: older payloads keep their bytes.
    variant: str | None = None
    fallback: bool | None = None

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        p.check_int(self.seq, "seq")
        p.check_number(self.ts, "ts")
        p.check_number(self.window_s, "window_s")
        p.check_opt_str(self.variant, "variant", max_len=256)
        p.require(self.fallback is None or isinstance(self.fallback, bool),
                  "fallback must be a boolean or null")
        p.check_opt_str(self.bundle, "bundle", max_len=512)
        p.check_opt_str(self.delegate, "delegate", max_len=256)
        for name in ("inferences", "errors", "total_inferences", "total_errors"):
            p.check_int(getattr(self, name), name)
        p.require(
            self.latency_ms is None or isinstance(self.latency_ms, LatencySummary),
            "latency_ms must be a LatencySummary or None",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": self.ts,
            "window_s": self.window_s,
            "bundle": self.bundle,
            "delegate": self.delegate,
            "inferences": self.inferences,
            "errors": self.errors,
            "total_inferences": self.total_inferences,
            "total_errors": self.total_errors,
            "latency_ms": None if self.latency_ms is None else self.latency_ms.to_dict(),
            **({} if self.variant is None else {"variant": self.variant}),
            **({} if self.fallback is None else {"fallback": self.fallback}),
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Telemetry:
        w = cls.WHAT
        latency = p.get_obj(obj, "latency_ms", w)
        return cls(
            device_id=p.get_str(obj, "device_id", w),
            seq=p.get_int(obj, "seq", w),
            ts=p.get_float(obj, "ts", w),
            window_s=p.get_float(obj, "window_s", w),
            bundle=p.get_opt_str(obj, "bundle", w),
            delegate=p.get_opt_str(obj, "delegate", w),
            inferences=p.get_int(obj, "inferences", w),
            errors=p.get_int(obj, "errors", w),
            total_inferences=p.get_int(obj, "total_inferences", w),
            total_errors=p.get_int(obj, "total_errors", w),
            latency_ms=None if latency is None else LatencySummary.from_dict(latency, f"{w}.latency_ms"),
            variant=p.get_opt_str(obj, "variant", w),
            fallback=obj.get("fallback"),
        )


@dataclass(frozen=True)
class Event(_Message):
    """A device event; ``kind`` is install (with ``state``), agent or error."""

    WHAT: ClassVar[str] = "Event"

    device_id: str
    seq: int
    ts: float
    kind: str
    state: str | None = None
    instruction_seq: int | None = None
    sha256: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        p.check_int(self.seq, "seq")
        p.check_number(self.ts, "ts")
        p.require(self.kind in EVENT_KINDS, f"kind must be one of {EVENT_KINDS}, got {self.kind!r}")
        if self.state is not None:
            p.check_str(self.state, "state", max_len=32)
        if self.kind == "install":
            p.require(self.state is not None, "an install event needs a state")
            parse_state(self.state or "", "Event")
        if self.instruction_seq is not None:
            p.check_int(self.instruction_seq, "instruction_seq")
        p.check_opt_sha256(self.sha256, "sha256")
        p.check_str(self.detail, "detail", max_len=16384, empty=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "state": self.state,
            "instruction_seq": self.instruction_seq,
            "sha256": self.sha256,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Event:
        w = cls.WHAT
        detail = obj.get("detail")
        return cls(
            device_id=p.get_str(obj, "device_id", w),
            seq=p.get_int(obj, "seq", w),
            ts=p.get_float(obj, "ts", w),
            kind=p.get_str(obj, "kind", w),
            state=p.get_opt_str(obj, "state", w),
            instruction_seq=p.get_opt_int(obj, "instruction_seq", w),
            sha256=p.get_opt_str(obj, "sha256", w),
            detail="" if detail is None else p.get_str(obj, "detail", w),
        )


@dataclass(frozen=True)
class ChunkRequest(_Message):
    """A device asks for ``count`` chunks of bundle ``sha256`` starting at ``index``."""

    WHAT: ClassVar[str] = "ChunkRequest"

    device_id: str
    sha256: str
    index: int
    count: int

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        p.check_sha256(self.sha256, "sha256")
        p.check_int(self.index, "index")
        p.check_int(self.count, "count", minimum=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "sha256": self.sha256,
            "index": self.index,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ChunkRequest:
        w = cls.WHAT
        return cls(
            device_id=p.get_str(obj, "device_id", w),
            sha256=p.get_str(obj, "sha256", w),
            index=p.get_int(obj, "index", w),
            count=p.get_int(obj, "count", w),
        )

    @classmethod
    def from_bytes(cls, b: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> ChunkRequest:
        req = super().from_bytes(b, limits)
        p.require(
            req.count <= limits.max_window,
            f"ChunkRequest: count {req.count} exceeds window limit {limits.max_window}",
        )
        return req


SHADOW_MAX_DRIFT_INPUTS = 256
"""Most inputs a ``ShadowReport.drift`` may describe (bounds the payload)."""


def _get_bool(obj: dict[str, Any], key: str, what: str) -> bool:
    if key not in obj:
        raise ProtocolError(f"{what}: missing '{key}'")
    value = obj[key]
    if type(value) is not bool:
        raise ProtocolError(f"{what}: '{key}' must be a boolean, got {type(value).__name__}")
    return value


def _get_opt_float(obj: dict[str, Any], key: str, what: str) -> float | None:
    return None if obj.get(key) is None else p.get_float(obj, key, what)


def _check_opt_signed(value: Any, name: str) -> None:
    if value is not None:
        p.check_number(value, name, minimum=None)


@dataclass(frozen=True)
class InputDrift:
    """Drift of one model input against the bundle's reference statistics."""

    psi: float
    ks_stat: float
    ks_pvalue: float
    drifted: bool

    def __post_init__(self) -> None:
        p.check_number(self.psi, "drift.psi")
        p.check_number(self.ks_stat, "drift.ks_stat")
        p.require(self.ks_stat <= 1.0, f"drift.ks_stat must be <= 1, got {self.ks_stat}")
        p.check_number(self.ks_pvalue, "drift.ks_pvalue")
        p.require(self.ks_pvalue <= 1.0, f"drift.ks_pvalue must be <= 1, got {self.ks_pvalue}")
        p.require(type(self.drifted) is bool, "drift.drifted must be a boolean")

    def to_dict(self) -> dict[str, Any]:
        return {"psi": self.psi, "ks_stat": self.ks_stat, "ks_pvalue": self.ks_pvalue,
                "drifted": self.drifted}

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "drift") -> InputDrift:
        return cls(
            psi=p.get_float(obj, "psi", what),
            ks_stat=p.get_float(obj, "ks_stat", what),
            ks_pvalue=p.get_float(obj, "ks_pvalue", what),
            drifted=_get_bool(obj, "drifted", what),
        )


@dataclass(frozen=True)
class ShadowReport(_Message):
    """One shadow window: the candidate compared with the active model on live inputs.

    Published on ``.../shadow`` (QoS 1, not retained) every telemetry interval while a
    shadow candidate runs. ``seq`` shares the device's telemetry sequence. Comparison
    fields are ``null`` when they do not apply to ``task`` or when no sample was compared.
    """

    WHAT: ClassVar[str] = "ShadowReport"

    device_id: str
    seq: int
    ts: float
    window_s: float
    active: str
    candidate: str
    candidate_sha256: str
    task: str
    samples: int
    dropped: int
    candidate_errors: int
    top1_agreement: float | None = None
    score_delta_mean: float | None = None
    mae: float | None = None
    max_abs_error: float | None = None
    cosine: float | None = None
    latency_ms_active: LatencySummary | None = None
    latency_ms_candidate: LatencySummary | None = None
    candidate_delegate: str = ""
    candidate_fallback: bool = False
    drift: dict[str, InputDrift] | None = None

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        p.check_int(self.seq, "seq")
        p.check_number(self.ts, "ts")
        p.check_number(self.window_s, "window_s")
        p.check_str(self.active, "active", max_len=512)
        p.check_str(self.candidate, "candidate", max_len=512)
        p.check_sha256(self.candidate_sha256, "candidate_sha256")
        p.check_str(self.task, "task", max_len=64)
        for name in ("samples", "dropped", "candidate_errors"):
            p.check_int(getattr(self, name), name)
        if self.top1_agreement is not None:
            p.check_number(self.top1_agreement, "top1_agreement")
            p.require(self.top1_agreement <= 1.0, "top1_agreement must be <= 1")
        _check_opt_signed(self.score_delta_mean, "score_delta_mean")
        if self.mae is not None:
            p.check_number(self.mae, "mae")
        if self.max_abs_error is not None:
            p.check_number(self.max_abs_error, "max_abs_error")
        if self.cosine is not None:
            p.check_number(self.cosine, "cosine", minimum=-1.0)
            p.require(self.cosine <= 1.0, "cosine must be <= 1")
        for name in ("latency_ms_active", "latency_ms_candidate"):
            value = getattr(self, name)
            p.require(value is None or isinstance(value, LatencySummary),
                      f"{name} must be a LatencySummary or None")
        p.check_str(self.candidate_delegate, "candidate_delegate", max_len=256, empty=True)
        p.require(type(self.candidate_fallback) is bool, "candidate_fallback must be a boolean")
        drift = {} if self.drift is None else dict(self.drift)
        p.require(len(drift) <= SHADOW_MAX_DRIFT_INPUTS,
                  f"drift describes {len(drift)} inputs, limit {SHADOW_MAX_DRIFT_INPUTS}")
        for key, value in drift.items():
            p.check_str(key, "drift key", max_len=256)
            p.require(isinstance(value, InputDrift), f"drift[{key!r}] must be an InputDrift")
        object.__setattr__(self, "drift", drift)

    def to_dict(self) -> dict[str, Any]:
        def lat(v: LatencySummary | None) -> dict[str, Any] | None:
            return None if v is None else v.to_dict()

        return {
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": self.ts,
            "window_s": self.window_s,
            "active": self.active,
            "candidate": self.candidate,
            "candidate_sha256": self.candidate_sha256,
            "task": self.task,
            "samples": self.samples,
            "dropped": self.dropped,
            "candidate_errors": self.candidate_errors,
            "top1_agreement": self.top1_agreement,
            "score_delta_mean": self.score_delta_mean,
            "mae": self.mae,
            "max_abs_error": self.max_abs_error,
            "cosine": self.cosine,
            "latency_ms_active": lat(self.latency_ms_active),
            "latency_ms_candidate": lat(self.latency_ms_candidate),
            "candidate_delegate": self.candidate_delegate,
            "candidate_fallback": self.candidate_fallback,
            "drift": {k: v.to_dict() for k, v in sorted((self.drift or {}).items())},
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ShadowReport:
        w = cls.WHAT
        lat_a = p.get_obj(obj, "latency_ms_active", w)
        lat_c = p.get_obj(obj, "latency_ms_candidate", w)
        drift_obj = p.get_obj(obj, "drift", w) or {}
        p.require(len(drift_obj) <= SHADOW_MAX_DRIFT_INPUTS,
                  f"{w}: drift describes {len(drift_obj)} inputs, limit {SHADOW_MAX_DRIFT_INPUTS}")
        drift: dict[str, InputDrift] = {}
        for key in drift_obj:
            item = p.get_obj(drift_obj, key, f"{w}.drift")
            p.require(item is not None, f"{w}.drift[{key!r}] must be an object")
            drift[key] = InputDrift.from_dict(item or {}, f"{w}.drift[{key!r}]")
        fallback = obj.get("candidate_fallback")
        return cls(
            device_id=p.get_str(obj, "device_id", w),
            seq=p.get_int(obj, "seq", w),
            ts=p.get_float(obj, "ts", w),
            window_s=p.get_float(obj, "window_s", w),
            active=p.get_str(obj, "active", w),
            candidate=p.get_str(obj, "candidate", w),
            candidate_sha256=p.get_str(obj, "candidate_sha256", w),
            task=p.get_str(obj, "task", w),
            samples=p.get_int(obj, "samples", w),
            dropped=p.get_int(obj, "dropped", w),
            candidate_errors=p.get_int(obj, "candidate_errors", w),
            top1_agreement=_get_opt_float(obj, "top1_agreement", w),
            score_delta_mean=_get_opt_float(obj, "score_delta_mean", w),
            mae=_get_opt_float(obj, "mae", w),
            max_abs_error=_get_opt_float(obj, "max_abs_error", w),
            cosine=_get_opt_float(obj, "cosine", w),
            latency_ms_active=None if lat_a is None else LatencySummary.from_dict(
                lat_a, f"{w}.latency_ms_active"),
            latency_ms_candidate=None if lat_c is None else LatencySummary.from_dict(
                lat_c, f"{w}.latency_ms_candidate"),
            candidate_delegate=p.get_opt_str(obj, "candidate_delegate", w) or "",
            candidate_fallback=False if fallback is None else _get_bool(
                obj, "candidate_fallback", w),
            drift=drift,
        )
