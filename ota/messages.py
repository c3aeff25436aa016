"""JSON messages of protocol 1 (state, telemetry, events, chunk requests, shadow reports).

Each message is a frozen ``msgspec.Struct`` (``ota.model.Model``) declared with the typed
fields of ``ota.model``: the declaration is the validation and the JSON Schema
(``docs/schemas/``). ``to_bytes()`` writes canonical JSON with ``"protocol": 1``;
``from_bytes(b, limits)`` bounds the size, checks the protocol number, validates every known
key, ignores unknown keys, and raises ``ProtocolError`` with a one-line message naming the
field.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

import msgspec
from msgspec import Meta

from ota import payload as p
from ota.errors import ProtocolError
from ota.install import InstallState
from ota.limits import DEFAULT_LIMITS, PROTOCOL_VERSION, ProtocolLimits
from ota.model import (
    Bool,
    Count,
    DeviceId,
    Fraction,
    MaybeEmpty64,
    MaybeEmpty256,
    MaybeEmpty16384,
    Model,
    Number,
    PositiveCount,
    Sha256,
    SignedNumber,
    Text32,
    Text64,
    Text256,
    Text512,
    Text4096,
    Text8192,
    check_as,
    describe,
    describe_nested,
    field_error,
    load_typed,
    validate,
)

SLOTS = ("a", "b")
STATUSES = ("online", "offline")
EVENT_KINDS = ("install", "agent", "error")
SHADOW_MAX_DRIFT_INPUTS = 256
"""Most inputs a ``ShadowReport.drift`` may describe (bounds the payload)."""
INSTALL_STATES = tuple(s.value for s in InstallState)


def _known_install_state(value: str) -> str:
    if value not in INSTALL_STATES:
        raise ValueError(f"is an unknown install state {value!r:.40}")
    return value


InstallStateName = Annotated[str, Meta(min_length=1, max_length=32,
                                        extra_json_schema={"enum": list(INSTALL_STATES)})]


class _Message(Model, frozen=True):
    """Shared ``to_bytes``/``from_bytes``/``from_dict`` for top-level messages."""

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Self:
        return validate(cls, obj, cls.WHAT)

    def to_bytes(self) -> bytes:
        return p.dumps({"protocol": PROTOCOL_VERSION, **self.to_dict()})

    @classmethod
    def from_bytes(cls, b: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> Self:
        return load_typed(cls, b, max_size=limits.max_json_payload, what=cls.WHAT)


class _Part(Model, frozen=True):
    """A value nested in a message, with ``from_dict(obj, what)``."""

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str | None = None) -> Self:
        return validate(cls, obj, what or cls.WHAT)


# ---- proof of execution (a plain dict, typed) ----------------------------------------------


class ExecutionOverride(msgspec.Struct, frozen=True):
    requested: Text256
    honoured: Bool


class ExecutionProof(msgspec.Struct, frozen=True):
    """The optional proof of execution in ``active.execution`` (docs/delegates.md).

    ``ActiveModel`` validates the object against this declaration and keeps the object
    itself (a dict, unknown keys included)."""

    requested: Text256
    delegate: Text256
    fallback: Bool
    fallback_reason: Text4096 | None = None
    variant: Text4096 | None = None
    choice: Text4096 | None = None
    providers: Annotated[tuple[Text256, ...], Meta(max_length=32)] = ()
    node_counts: Annotated[dict[Text256, Count], Meta(max_length=32)] = {}
    override: ExecutionOverride | None = None


ExecutionDict = Annotated[dict[str, Any], Meta(
    description="a proof of execution: an object valid as ExecutionProof (docs/delegates.md)",
    extra_json_schema={"properties": {f: {} for f in ExecutionProof.__struct_fields__},
                       "required": ["requested", "delegate", "fallback"]})]
"""A dict validated as an ``ExecutionProof`` (kept as the dict, unknown keys included)."""


def check_execution(e: Any, what: str) -> None:
    """Validate an optional proof-of-execution object (bounded, typed)."""
    try:
        check_as(ExecutionProof, e)
    except msgspec.ValidationError as err:
        raise ProtocolError(describe(err, e, ExecutionProof, what, quoted=False)) from None


# ---- device state --------------------------------------------------------------------------


class ActiveModel(_Part, frozen=True):
    """The model a device serves."""

    WHAT: ClassVar[str] = "active"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"execution"})

    name: Text256
    version: Text256
    sha256: Sha256
    slot: Literal["a", "b"]
    delegate: Text256
    # Optional proof of execution (docs/mqtt-protocol.md, docs/delegates.md): requested,
    # delegate, providers, node_counts, fallback, fallback_reason, variant, choice.
    execution: ExecutionDict | None = None

    def check(self) -> None:
        if self.execution is not None:
            try:
                check_as(ExecutionProof, self.execution)
            except msgspec.ValidationError as e:
                raise describe_nested(e, self.execution, ExecutionProof, "execution") from None


class InstallStatus(_Part, frozen=True):
    """Where the latest install stands (``state`` is an ``InstallState`` value)."""

    WHAT: ClassVar[str] = "install"

    seq: Count
    sha256: Sha256 | None
    state: InstallStateName
    error: Text8192 | None = None
    progress: Fraction = 0.0

    def check(self) -> None:
        if self.state not in INSTALL_STATES:
            raise field_error("state", f"is an unknown install state {self.state!r:.40}")


class DeviceState(_Message, frozen=True):
    """Retained on ``.../state``; the last will is ``DeviceState.offline(device_id)``."""

    WHAT: ClassVar[str] = "DeviceState"

    device_id: DeviceId
    status: Literal["online", "offline"]
    ts: Number
    agent_version: MaybeEmpty64
    applied_seq: Count
    active: ActiveModel | None = None
    install: InstallStatus | None = None
    seq: Count = 0
    """The device's state sequence (its own, persisted on the device): the server keeps a
    signed online state only when its seq is above the last one it kept."""

    @classmethod
    def offline(cls, device_id: str, *, ts: float = 0.0, agent_version: str = "",
                seq: int = 0) -> DeviceState:
        """The last-will payload. It says only that the device is gone: a receiver keeps the
        device's other fields from its previous ``online`` state."""
        return cls(device_id, "offline", ts, agent_version, 0, None, None, seq)


# ---- telemetry and events ------------------------------------------------------------------


class LatencySummary(_Part, frozen=True):
    """Latency percentiles of one telemetry window, in milliseconds."""

    WHAT: ClassVar[str] = "latency_ms"

    p50: Number
    p95: Number
    p99: Number


class Telemetry(_Message, frozen=True):
    """One telemetry window; the server stores each ``(device_id, seq)`` once."""

    WHAT: ClassVar[str] = "Telemetry"
    # The optional execution summary and the bundle's hash are written only when set:
    # older payloads keep their bytes.
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"variant", "fallback", "bundle_sha256"})

    device_id: DeviceId
    seq: Count
    ts: Number
    window_s: Number
    bundle: Text512 | None
    delegate: Text256 | None
    inferences: Count
    errors: Count
    total_inferences: Count
    total_errors: Count
    latency_ms: LatencySummary | None = None
    # Optional execution summary (docs/delegates.md): the variant served in this window and
    # whether its requested delegate fell back, so "silent fallback" is visible per window.
    variant: Text256 | None = None
    fallback: Bool | None = None
    bundle_sha256: Sha256 | None = None
    """The hash of ``bundle`` (the .efb the device was sent): what a signed report is bound
    to; required by the server whenever ``bundle`` is set."""


class Event(_Message, frozen=True):
    """A device event; ``kind`` is install (with ``state``), agent or error."""

    WHAT: ClassVar[str] = "Event"
    NULL_AS: ClassVar[dict[str, Any]] = {"detail": str}

    device_id: DeviceId
    seq: Count
    ts: Number
    kind: Literal["install", "agent", "error"]
    state: Text32 | None = None
    instruction_seq: Count | None = None
    sha256: Sha256 | None = None
    detail: MaybeEmpty16384 | None = ""
    """Free text; a JSON ``null`` reads as ``""``."""

    def check(self) -> None:
        if self.kind == "install":
            if self.state is None:
                raise ValueError("an install event needs a state")
            try:
                _known_install_state(self.state)
            except ValueError as e:
                raise ValueError(f"state {e}") from None


# ---- chunk requests ------------------------------------------------------------------------


class ChunkRequest(_Message, frozen=True):
    """A device asks for ``count`` chunks of bundle ``sha256`` starting at ``index``
    (``count`` is also bounded by ``ProtocolLimits.max_window`` when parsed)."""

    WHAT: ClassVar[str] = "ChunkRequest"

    device_id: DeviceId
    sha256: Sha256
    index: Count
    count: Annotated[PositiveCount, Meta(
        description=f"at most ProtocolLimits.max_window (default {DEFAULT_LIMITS.max_window})")]

    @classmethod
    def from_bytes(cls, b: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> ChunkRequest:
        req = super().from_bytes(b, limits)
        p.require(
            req.count <= limits.max_window,
            f"ChunkRequest: count {req.count} exceeds window limit {limits.max_window}",
        )
        return req


# ---- shadow reports ------------------------------------------------------------------------


class InputDrift(_Part, frozen=True):
    """Drift of one model input against the bundle's reference statistics."""

    WHAT: ClassVar[str] = "drift"

    psi: Number
    ks_stat: Fraction
    ks_pvalue: Fraction
    drifted: Bool


Cosine = Annotated[float, Meta(ge=-1.0, le=1.0)]
DriftMap = Annotated[dict[Text256, InputDrift], Meta(max_length=SHADOW_MAX_DRIFT_INPUTS)]


class ShadowReport(_Message, frozen=True):
    """One shadow window: the candidate compared with the active model on live inputs.

    Published on ``.../shadow`` (QoS 1, not retained) every telemetry interval while a
    shadow candidate runs. ``seq`` shares the device's telemetry sequence. Comparison
    fields are ``null`` when they do not apply to ``task`` or when no sample was compared.
    """

    WHAT: ClassVar[str] = "ShadowReport"
    NULL_AS: ClassVar[dict[str, Any]] = {"candidate_delegate": str, "candidate_fallback": bool,
                                         "drift": dict}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"active_sha256"})

    device_id: DeviceId
    seq: Count
    ts: Number
    window_s: Number
    active: Text512
    candidate: Text512
    candidate_sha256: Sha256
    task: Text64
    samples: Count
    dropped: Count
    candidate_errors: Count
    top1_agreement: Fraction | None = None
    score_delta_mean: SignedNumber | None = None
    mae: Number | None = None
    max_abs_error: Number | None = None
    cosine: Cosine | None = None
    latency_ms_active: LatencySummary | None = None
    latency_ms_candidate: LatencySummary | None = None
    candidate_delegate: MaybeEmpty256 | None = ""
    candidate_fallback: Bool | None = False
    drift: DriftMap | None = {}
    active_sha256: Sha256 | None = None
    """The hash of ``active`` (beside ``candidate_sha256``): both bundles the report
    compares, each one the device was sent; required by the server."""

