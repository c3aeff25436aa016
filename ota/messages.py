"""JSON messages of protocol 1 (state, telemetry, events, chunk requests, shadow reports).

Each message is a frozen pydantic dataclass declared with the typed fields of ``ota.model``:
the declaration is the validation and the JSON Schema (``docs/schemas/``). ``to_bytes()``
writes canonical JSON with ``"protocol": 1``; ``from_bytes(b, limits)`` bounds the size,
checks the protocol number, validates every known key, ignores unknown keys, and raises
``ProtocolError`` with a one-line message naming the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic import dataclasses as pdc

from ota import payload as p
from ota.install import InstallState
from ota.limits import DEFAULT_LIMITS, PROTOCOL_VERSION, ProtocolLimits
from ota.model import (
    CONFIG,
    Bool,
    Count,
    Declared,
    DeviceId,
    Fraction,
    MaybeEmpty64,
    MaybeEmpty256,
    MaybeEmpty16384,
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
    load_message,
    null_as,
    omitted_when_none,
    protocol_error,
    protocol_model,
    validate,
)

SLOTS = ("a", "b")
STATUSES = ("online", "offline")
EVENT_KINDS = ("install", "agent", "error")
SHADOW_MAX_DRIFT_INPUTS = 256
"""Most inputs a ``ShadowReport.drift`` may describe (bounds the payload)."""


def _known_install_state(value: str) -> str:
    try:
        return str(InstallState(value).value)
    except ValueError:
        raise ValueError(f"is an unknown install state {value!r:.40}") from None


InstallStateName = Annotated[
    Text32, AfterValidator(_known_install_state),
    Field(json_schema_extra={"enum": [s.value for s in InstallState]}),
]


class _Message(Declared):
    """Shared ``to_bytes``/``from_bytes``/``from_dict`` for top-level messages."""

    WHAT: ClassVar[str]

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Self:
        return validate(cls, obj, cls.WHAT)

    def to_bytes(self) -> bytes:
        return p.dumps({"protocol": PROTOCOL_VERSION, **self.to_dict()})

    @classmethod
    def from_bytes(cls, b: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> Self:
        obj = load_message(b, max_size=limits.max_json_payload, what=cls.WHAT)
        return cls.from_dict(obj)


# ---- proof of execution (a plain dict, typed) ----------------------------------------------


@pdc.dataclass(frozen=True, config=CONFIG)
class ExecutionOverride:
    requested: Text256
    honoured: Bool


@pdc.dataclass(frozen=True, config=CONFIG)
class ExecutionProof:
    """The optional proof of execution in ``active.execution`` (docs/delegates.md).

    ``ActiveModel`` validates the object against this declaration and keeps the object
    itself (a dict, unknown keys included)."""

    requested: Text256
    delegate: Text256
    fallback: Bool
    fallback_reason: Text4096 | None = None
    variant: Text4096 | None = None
    choice: Text4096 | None = None
    providers: Annotated[tuple[Text256, ...], Field(max_length=32)] = ()
    node_counts: Annotated[dict[Text256, Count], Field(max_length=32)] = Field(
        default_factory=dict)
    override: ExecutionOverride | None = None


def _keep_the_object(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    handler(value)
    return value


if TYPE_CHECKING:
    ExecutionDict = dict[str, Any]
else:
    ExecutionDict = Annotated[ExecutionProof, WrapValidator(_keep_the_object),
                              PlainSerializer(dict)]
    """A dict validated as an ``ExecutionProof``."""


_EXECUTION = TypeAdapter(ExecutionProof)


def check_execution(e: Any, what: str) -> None:
    """Validate an optional proof-of-execution object (bounded, typed)."""
    try:
        _EXECUTION.validate_python(e)
    except ValidationError as err:
        raise protocol_error(err, what, quoted=False) from None


# ---- device state --------------------------------------------------------------------------


@protocol_model("active")
@pdc.dataclass(frozen=True, config=CONFIG)
class ActiveModel(Declared):
    """The model a device serves."""

    name: Text256
    version: Text256
    sha256: Sha256
    slot: Literal["a", "b"]
    delegate: Text256
    # Optional proof of execution (docs/mqtt-protocol.md, docs/delegates.md): requested,
    # delegate, providers, node_counts, fallback, fallback_reason, variant, choice.
    execution: Annotated[ExecutionDict | None, omitted_when_none()] = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "active") -> ActiveModel:
        return validate(cls, obj, what)


@protocol_model("install")
@pdc.dataclass(frozen=True, config=CONFIG)
class InstallStatus(Declared):
    """Where the latest install stands (``state`` is an ``InstallState`` value)."""

    seq: Count
    sha256: Sha256 | None
    state: InstallStateName
    error: Text8192 | None = None
    progress: Fraction = 0.0

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "install") -> InstallStatus:
        return validate(cls, obj, what)


@protocol_model("DeviceState")
@pdc.dataclass(frozen=True, config=CONFIG)
class DeviceState(_Message):
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


@protocol_model("latency_ms")
@pdc.dataclass(frozen=True, config=CONFIG)
class LatencySummary(Declared):
    """Latency percentiles of one telemetry window, in milliseconds."""

    p50: Number
    p95: Number
    p99: Number

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "latency_ms") -> LatencySummary:
        return validate(cls, obj, what)


@protocol_model("Telemetry")
@pdc.dataclass(frozen=True, config=CONFIG)
class Telemetry(_Message):
    """One telemetry window; the server stores each ``(device_id, seq)`` once."""

    WHAT: ClassVar[str] = "Telemetry"

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
    # Written only when set: older payloads keep their bytes.
    variant: Annotated[Text256 | None, omitted_when_none()] = None
    fallback: Annotated[Bool | None, omitted_when_none()] = None
    bundle_sha256: Annotated[Sha256 | None, omitted_when_none()] = None
    """The hash of ``bundle`` (the .efb the device was sent): what a signed report is bound
    to; required by the server whenever ``bundle`` is set."""


@protocol_model("Event")
@pdc.dataclass(frozen=True, config=CONFIG)
class Event(_Message):
    """A device event; ``kind`` is install (with ``state``), agent or error."""

    WHAT: ClassVar[str] = "Event"

    device_id: DeviceId
    seq: Count
    ts: Number
    kind: Literal["install", "agent", "error"]
    state: Text32 | None = None
    instruction_seq: Count | None = None
    sha256: Sha256 | None = None
    detail: Annotated[MaybeEmpty16384, null_as("", str)] = ""

    @model_validator(mode="after")
    def _install_event_has_a_known_state(self) -> Self:
        if self.kind == "install":
            if self.state is None:
                raise ValueError("an install event needs a state")
            try:
                _known_install_state(self.state)
            except ValueError as e:
                raise ValueError(f"state {e}") from None
        return self


# ---- chunk requests ------------------------------------------------------------------------


@protocol_model("ChunkRequest")
@pdc.dataclass(frozen=True, config=CONFIG)
class ChunkRequest(_Message):
    """A device asks for ``count`` chunks of bundle ``sha256`` starting at ``index``
    (``count`` is also bounded by ``ProtocolLimits.max_window`` when parsed)."""

    WHAT: ClassVar[str] = "ChunkRequest"

    device_id: DeviceId
    sha256: Sha256
    index: Count
    count: Annotated[PositiveCount, Field(
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


@protocol_model("drift")
@pdc.dataclass(frozen=True, config=CONFIG)
class InputDrift(Declared):
    """Drift of one model input against the bundle's reference statistics."""

    psi: Number
    ks_stat: Fraction
    ks_pvalue: Fraction
    drifted: Bool

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "drift") -> InputDrift:
        return validate(cls, obj, what)


Cosine = Annotated[float, Field(strict=True, ge=-1.0, le=1.0)]
DriftMap = Annotated[
    dict[Text256, InputDrift],
    BeforeValidator(lambda v: {} if v is None else v,
                    json_schema_input_type=dict[str, InputDrift] | None),
    Field(max_length=SHADOW_MAX_DRIFT_INPUTS),
]


@protocol_model("ShadowReport")
@pdc.dataclass(frozen=True, config=CONFIG)
class ShadowReport(_Message):
    """One shadow window: the candidate compared with the active model on live inputs.

    Published on ``.../shadow`` (QoS 1, not retained) every telemetry interval while a
    shadow candidate runs. ``seq`` shares the device's telemetry sequence. Comparison
    fields are ``null`` when they do not apply to ``task`` or when no sample was compared.
    """

    WHAT: ClassVar[str] = "ShadowReport"

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
    candidate_delegate: Annotated[MaybeEmpty256, null_as("", str)] = ""
    candidate_fallback: Annotated[Bool, null_as(False, bool)] = False
    drift: DriftMap = Field(default_factory=dict)
    active_sha256: Annotated[Sha256 | None, omitted_when_none()] = None
    """The hash of ``active`` (beside ``candidate_sha256``): both bundles the report
    compares, each one the device was sent; required by the server."""
