"""The bundle manifest (format_version 1, minor 0..1): frozen dataclasses, strict parsing
and canonical encoding. See docs/bundle-format.md (and its "Evolution" section: unknown
optional top-level keys are kept and ignored).

``Manifest.from_bytes`` accepts exactly the canonical encoding that ``Manifest.to_bytes``
produces, so ``Manifest.from_bytes(b).to_bytes() == b`` for every accepted ``b``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

from .errors import ManifestError, UnsafePathError

FORMAT_VERSION = 1
FORMAT_MINOR = 1
"""The newest minor format this reader knows. A minor version only adds optional
top-level keys; a reader keeps (and ignores) keys it does not know, so it reads every
minor of its major (docs/bundle-format.md, "Evolution")."""
_EXTRA_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_EXTRA_KEYS = 64

DTYPES = frozenset(
    {"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}
)
TASKS = ("classifier", "regressor", "embedding", "generic")

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION_RE = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)" rf"(?:-{_IDENT}(?:\.{_IDENT})*)?"
)
_MAX_VERSION_LEN = 64
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_CREATED_AT_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")
MAX_PATH_BYTES = 255
MAX_TENSOR_NAME_BYTES = 1024


# --------------------------------------------------------------------------- encoding


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON: UTF-8, sorted keys, separators ``,`` ``:``, no NaN/Infinity."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except ValueError as exc:
        raise ManifestError(f"cannot encode canonical JSON: {exc}") from exc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_canonical_json(data: bytes, what: str = "manifest") -> Any:
    """Parse ``data`` and insist that it is exactly its own canonical encoding."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ManifestError(f"{what} must be bytes")
    data = bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what} is not UTF-8") from exc
    try:
        obj = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ManifestError(f"{what} is not valid JSON ({first})") from exc
    try:
        canonical = canonical_json(obj)
    except ManifestError:
        raise ManifestError(f"{what} is not canonical JSON") from None
    if canonical != data:
        raise ManifestError(
            f"{what} is not canonical JSON (sorted keys, separators ',' ':', UTF-8, no spaces)"
        )
    return obj


# --------------------------------------------------------------------------- validators


def validate_name(name: Any) -> str:
    """A bundle name: ``[a-z0-9][a-z0-9._-]{0,63}``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ManifestError(f"bad name {name!r} (want [a-z0-9][a-z0-9._-]{{0,63}})")
    return name


def validate_version(version: Any) -> str:
    """A version: semver core ``X.Y.Z`` with an optional ``-prerelease``."""
    if (
        not isinstance(version, str)
        or len(version) > _MAX_VERSION_LEN
        or not _VERSION_RE.fullmatch(version)
    ):
        raise ManifestError(f"bad version {version!r} (want X.Y.Z or X.Y.Z-prerelease)")
    return version


def validate_created_at(value: Any) -> str:
    if not isinstance(value, str) or not _CREATED_AT_RE.fullmatch(value):
        raise ManifestError(f"bad created_at {value!r} (want YYYY-MM-DDTHH:MM:SSZ)")
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ManifestError(f"bad created_at {value!r} (not a valid date/time)") from None
    return value


def validate_key_id(value: Any, what: str = "publisher_key_id") -> str:
    if not isinstance(value, str) or not _HEX64_RE.fullmatch(value):
        raise ManifestError(f"bad {what} {value!r} (want 64 lower-case hex digits)")
    return value


def check_safe_path(path: Any, what: str = "path") -> str:
    """Check a relative POSIX path: no ``..``, no leading ``/``, no backslash, no empty or
    ``.`` segments, no NUL/control characters, at most 255 UTF-8 bytes.

    Raises :class:`UnsafePathError`."""
    if not isinstance(path, str):
        raise UnsafePathError(f"{what} is not a string: {path!r}")
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError(f"{what} is not valid UTF-8: {path!r}") from None
    if not path:
        raise UnsafePathError(f"empty {what}")
    if len(raw) > MAX_PATH_BYTES:
        raise UnsafePathError(f"{what} longer than {MAX_PATH_BYTES} bytes: {path[:40]!r}...")
    if path.startswith("/"):
        raise UnsafePathError(f"absolute {what} {path!r}")
    if "\\" in path:
        raise UnsafePathError(f"backslash in {what} {path!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise UnsafePathError(f"control character in {what} {path!r}")
    for segment in path.split("/"):
        if segment == "..":
            raise UnsafePathError(f"'..' in {what} {path!r}")
        if segment in ("", "."):
            raise UnsafePathError(f"empty or '.' segment in {what} {path!r}")
    return path


def _safe_path_for_manifest(path: Any, what: str) -> str:
    try:
        return check_safe_path(path, what)
    except UnsafePathError as exc:
        raise ManifestError(str(exc)) from None


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _expect_dict(obj: Any, what: str, required: Iterable[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} must be an object")
    required = tuple(required)
    unknown = sorted(set(obj) - set(required))
    if unknown:
        raise ManifestError(f"unknown key {unknown[0]!r} in {what}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ManifestError(f"missing key {missing[0]!r} in {what}")
    return obj


def _expect_list(obj: Any, what: str, *, nonempty: bool = False) -> list[Any]:
    if not isinstance(obj, list | tuple):
        raise ManifestError(f"{what} must be a list")
    if nonempty and not obj:
        raise ManifestError(f"{what} must not be empty")
    return list(obj)


# --------------------------------------------------------------------------- dataclasses


Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, numpy dtype name, shape (int | str | None per dim)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "shape", tuple(self.shape) if isinstance(self.shape, list | tuple) else self.shape
        )
        what = f"tensor {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ManifestError(f"tensor name must be a non-empty string, got {self.name!r}")
        if len(self.name.encode("utf-8", "surrogatepass")) > MAX_TENSOR_NAME_BYTES:
            raise ManifestError(f"tensor name longer than {MAX_TENSOR_NAME_BYTES} bytes")
        if self.dtype not in DTYPES:
            raise ManifestError(f"{what}: unsupported dtype {self.dtype!r}")
        if not isinstance(self.shape, tuple):
            raise ManifestError(f"{what}: shape must be a list")
        for dim in self.shape:
            if dim is None:
                continue
            if _is_int(dim):
                if dim < 0:
                    raise ManifestError(f"{what}: negative dimension {dim}")
            elif isinstance(dim, str):
                if not dim or len(dim) > 256:
                    raise ManifestError(f"{what}: bad symbolic dimension {dim!r}")
            else:
                raise ManifestError(f"{what}: bad dimension {dim!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, obj: Any, what: str = "tensor") -> TensorSpec:
        d = _expect_dict(obj, what, ("name", "dtype", "shape"))
        return cls(
            name=d["name"], dtype=d["dtype"], shape=tuple(_expect_list(d["shape"], f"{what}.shape"))
        )

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype} [{dims}]"


@dataclass(frozen=True)
class FileEntry:
    """A file carried by the bundle (archive member ``files/<path>``)."""

    path: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _safe_path_for_manifest(self.path, "file path")
        if not isinstance(self.sha256, str) or not _HEX64_RE.fullmatch(self.sha256):
            raise ManifestError(f"file {self.path!r}: sha256 must be 64 lower-case hex digits")
        if not _is_int(self.size) or self.size < 0:
            raise ManifestError(f"file {self.path!r}: size must be a non-negative integer")

    @property
    def member(self) -> str:
        """The archive member name."""
        return "files/" + self.path

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, obj: Any, what: str = "file") -> FileEntry:
        d = _expect_dict(obj, what, ("path", "sha256", "size"))
        return cls(path=d["path"], sha256=d["sha256"], size=d["size"])


@dataclass(frozen=True)
class Tolerance:
    """Golden gate: ``|actual - expected| <= atol + rtol * |expected|`` elementwise."""

    atol: float = 1e-4
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ManifestError(f"tolerance {name} must be a finite number >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol}

    @classmethod
    def from_dict(cls, obj: Any, what: str = "tolerance") -> Tolerance:
        d = _expect_dict(obj, what, ("atol", "rtol"))
        return cls(atol=d["atol"], rtol=d["rtol"])


@dataclass(frozen=True)
class Variant:
    """A runnable artefact of the model (format_version 1 builds one ONNX variant)."""

    id: str
    file: str
    format: str
    precision: str
    delegates: tuple[str, ...]
    tolerance: Tolerance

    def __post_init__(self) -> None:
        if isinstance(self.delegates, list):
            object.__setattr__(self, "delegates", tuple(self.delegates))
        if not isinstance(self.id, str) or not _NAME_RE.fullmatch(self.id):
            raise ManifestError(f"bad variant id {self.id!r} (want [a-z0-9][a-z0-9._-]{{0,63}})")
        _safe_path_for_manifest(self.file, f"variant {self.id!r} file")
        for name in ("format", "precision"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
                raise ManifestError(f"variant {self.id!r}: bad {name} {value!r}")
        if not isinstance(self.delegates, tuple):
            raise ManifestError(f"variant {self.id!r}: delegates must be a list")
        for delegate in self.delegates:
            if not isinstance(delegate, str) or not _TOKEN_RE.fullmatch(delegate):
                raise ManifestError(f"variant {self.id!r}: bad delegate {delegate!r}")
        if len(set(self.delegates)) != len(self.delegates):
            raise ManifestError(f"variant {self.id!r}: duplicate delegate")
        if not isinstance(self.tolerance, Tolerance):
            raise ManifestError(f"variant {self.id!r}: tolerance must be a Tolerance")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "file": self.file,
            "format": self.format,
            "precision": self.precision,
            "delegates": list(self.delegates),
            "tolerance": self.tolerance.to_dict(),
        }

    @classmethod
    def from_dict(cls, obj: Any, what: str = "variant") -> Variant:
        d = _expect_dict(obj, what, ("id", "file", "format", "precision", "delegates", "tolerance"))
        return cls(
            id=d["id"],
            file=d["file"],
            format=d["format"],
            precision=d["precision"],
            delegates=tuple(_expect_list(d["delegates"], f"{what}.delegates")),
            tolerance=Tolerance.from_dict(d["tolerance"], f"{what}.tolerance"),
        )


@dataclass(frozen=True)
class Golden:
    """The golden vectors: ``file`` (an npz listed in ``files``), ``count`` (rows along the
    leading axis of ``in_0``, 1 for a scalar input) and ``dims`` (values used for symbolic
    dimensions, and ``"<input>:<axis>"`` for unnamed dynamic ones)."""

    file: str
    count: int
    dims: Mapping[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _safe_path_for_manifest(self.file, "golden file")
        if not _is_int(self.count) or self.count < 1:
            raise ManifestError(f"golden count must be a positive integer, got {self.count!r}")
        if not isinstance(self.dims, Mapping):
            raise ManifestError("golden dims must be an object")
        object.__setattr__(self, "dims", dict(self.dims))
        for key, value in self.dims.items():
            if not isinstance(key, str) or not key:
                raise ManifestError(f"bad golden dim name {key!r}")
            if not _is_int(value) or value < 0:
                raise ManifestError(f"golden dim {key!r} must be a non-negative integer")

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "count": self.count, "dims": dict(self.dims)}

    @classmethod
    def from_dict(cls, obj: Any, what: str = "golden") -> Golden:
        d = _expect_dict(obj, what, ("file", "count", "dims"))
        if not isinstance(d["dims"], dict):
            raise ManifestError("golden dims must be an object")
        return cls(file=d["file"], count=d["count"], dims=d["dims"])


_TOP_KEYS = (
    "format_version",
    "name",
    "version",
    "created_at",
    "task",
    "inputs",
    "outputs",
    "files",
    "variants",
    "golden",
    "latency_budget_ms",
    "publisher_key_id",
)


_OPTIONAL_KEYS = ("input_stats", "format_minor")


def _check_extra(extra: Any) -> None:
    if not isinstance(extra, Mapping):
        raise ManifestError("manifest extra must be a mapping")
    if len(extra) > MAX_EXTRA_KEYS:
        raise ManifestError(f"manifest has {len(extra)} unknown keys (at most "
                            f"{MAX_EXTRA_KEYS})")
    for key in extra:
        if key in _TOP_KEYS or key in _OPTIONAL_KEYS:
            raise ManifestError(f"manifest extra repeats the known key {key!r}")
        if not isinstance(key, str) or not _EXTRA_KEY_RE.fullmatch(key):
            raise ManifestError(f"unknown manifest key {key!r} is not a valid key name "
                                "([a-z][a-z0-9_]{0,63})")


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. Construction validates; invalid values raise ManifestError.

    ``golden`` may be ``None`` (JSON ``null``) for bundles without golden vectors; the
    builder always writes one."""

    name: str
    version: str
    created_at: str
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: tuple[FileEntry, ...]
    variants: tuple[Variant, ...]
    golden: Golden | None
    publisher_key_id: str
    latency_budget_ms: float | None = None
    format_version: int = FORMAT_VERSION
    input_stats: str | None = None
    """Optional path (in ``files``) of the reference input statistics (``input_stats.py``)."""
    format_minor: int = 0
    """Minor format version (absent in the bytes when 0)."""
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Top-level keys this reader does not know (from a newer minor): kept so the
    manifest re-encodes to the signed bytes, otherwise ignored."""

    def __post_init__(self) -> None:
        for name in ("inputs", "outputs", "files", "variants"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if not _is_int(self.format_version) or self.format_version != FORMAT_VERSION:
            raise ManifestError(f"unsupported format_version {self.format_version!r}")
        if not _is_int(self.format_minor) or self.format_minor < 0:
            raise ManifestError(f"format_minor must be an integer >= 0, not "
                                f"{self.format_minor!r}")
        _check_extra(self.extra)
        validate_name(self.name)
        validate_version(self.version)
        validate_created_at(self.created_at)
        if self.task not in TASKS:
            raise ManifestError(f"bad task {self.task!r} (want one of {', '.join(TASKS)})")
        for group in ("inputs", "outputs"):
            specs = getattr(self, group)
            if not isinstance(specs, tuple) or not specs:
                raise ManifestError(f"{group} must be a non-empty list")
            if not all(isinstance(s, TensorSpec) for s in specs):
                raise ManifestError(f"{group} must hold TensorSpec entries")
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ManifestError(f"duplicate tensor name in {group}")
        if not isinstance(self.files, tuple) or not self.files:
            raise ManifestError("files must be a non-empty list")
        if not all(isinstance(f, FileEntry) for f in self.files):
            raise ManifestError("files must hold FileEntry entries")
        paths = [f.path for f in self.files]
        folded: set[str] = set()
        for path in paths:
            key = path.casefold()
            if key in folded:
                raise ManifestError(f"duplicate file path {path!r} (names are case-insensitive)")
            folded.add(key)
        for path in paths:
            parts = path.split("/")
            for i in range(1, len(parts)):
                prefix = "/".join(parts[:i]).casefold()
                if prefix in folded:
                    raise ManifestError(f"file path {path!r} is below another file")
        if not isinstance(self.variants, tuple) or not self.variants:
            raise ManifestError("variants must be a non-empty list")
        if not all(isinstance(v, Variant) for v in self.variants):
            raise ManifestError("variants must hold Variant entries")
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ManifestError("duplicate variant id")
        path_set = set(paths)
        for variant in self.variants:
            if variant.file not in path_set and not any(
                p.startswith(variant.file + "/") for p in paths
            ):
                raise ManifestError(
                    f"variant {variant.id!r} names {variant.file!r}, which is not in files"
                )
        if self.golden is not None:
            if not isinstance(self.golden, Golden):
                raise ManifestError("golden must be a Golden or null")
            if self.golden.file not in path_set:
                raise ManifestError(f"golden file {self.golden.file!r} is not in files")
        if self.latency_budget_ms is not None and (
            not _is_number(self.latency_budget_ms) or self.latency_budget_ms <= 0
        ):
            raise ManifestError("latency_budget_ms must be null or a positive number")
        if self.input_stats is not None:
            _safe_path_for_manifest(self.input_stats, "input_stats file")
            if self.input_stats not in path_set:
                raise ManifestError(f"input_stats file {self.input_stats!r} is not in files")
        validate_key_id(self.publisher_key_id)

    # ------------------------------------------------------------------ accessors

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def variant(self, variant_id: str) -> Variant:
        for variant in self.variants:
            if variant.id == variant_id:
                return variant
        raise KeyError(variant_id)

    @property
    def total_file_bytes(self) -> int:
        return sum(f.size for f in self.files)

    # ------------------------------------------------------------------ encoding

    def to_dict(self) -> dict[str, Any]:
        d = self._to_dict()
        if self.input_stats is not None:  # optional key: absent in bundles without it
            d["input_stats"] = self.input_stats
        if self.format_minor:
            d["format_minor"] = self.format_minor
        d.update(self.extra)
        return d

    def _to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "task": self.task,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "files": [f.to_dict() for f in self.files],
            "variants": [v.to_dict() for v in self.variants],
            "golden": None if self.golden is None else self.golden.to_dict(),
            "latency_budget_ms": self.latency_budget_ms,
            "publisher_key_id": self.publisher_key_id,
        }

    def to_bytes(self) -> bytes:
        """The canonical JSON encoding (what is stored as ``manifest.json`` and signed)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Any) -> Manifest:
        """Validate a decoded manifest object. Unknown top-level keys (a newer minor
        format's optional fields) are kept in ``extra`` and ignored; unknown keys inside
        the known objects are refused."""
        if not isinstance(obj, dict):
            raise ManifestError("manifest must be an object")
        input_stats = obj.get("input_stats")
        format_minor = obj.get("format_minor", 0)
        if "format_minor" in obj and format_minor == 0:
            raise ManifestError("format_minor 0 is written by leaving the key out")
        extra = {k: v for k, v in obj.items() if k not in _TOP_KEYS and k not in _OPTIONAL_KEYS}
        obj = {k: v for k, v in obj.items() if k in _TOP_KEYS}
        d = _expect_dict(obj, "manifest", _TOP_KEYS)
        if not _is_int(d["format_version"]) or d["format_version"] != FORMAT_VERSION:
            raise ManifestError(f"unsupported format_version {d['format_version']!r}")
        inputs = [
            TensorSpec.from_dict(x, f"inputs[{i}]")
            for i, x in enumerate(_expect_list(d["inputs"], "inputs", nonempty=True))
        ]
        outputs = [
            TensorSpec.from_dict(x, f"outputs[{i}]")
            for i, x in enumerate(_expect_list(d["outputs"], "outputs", nonempty=True))
        ]
        files = [
            FileEntry.from_dict(x, f"files[{i}]")
            for i, x in enumerate(_expect_list(d["files"], "files", nonempty=True))
        ]
        variants = [
            Variant.from_dict(x, f"variants[{i}]")
            for i, x in enumerate(_expect_list(d["variants"], "variants", nonempty=True))
        ]
        golden = None if d["golden"] is None else Golden.from_dict(d["golden"])
        return cls(
            format_version=d["format_version"],
            name=d["name"],
            version=d["version"],
            created_at=d["created_at"],
            task=d["task"],
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            files=tuple(files),
            variants=tuple(variants),
            golden=golden,
            latency_budget_ms=d["latency_budget_ms"],
            publisher_key_id=d["publisher_key_id"],
            input_stats=input_stats,
            format_minor=format_minor,
            extra=extra,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Strictly parse stored manifest bytes: canonical JSON, schema, safe paths;
        unknown top-level keys kept (``extra``). Raises :class:`ManifestError`."""
        obj = parse_canonical_json(data, "manifest")
        manifest = cls.from_dict(obj)
        if manifest.to_bytes() != bytes(data):  # defensive: the dataclasses lost nothing
            raise ManifestError("manifest does not round-trip canonically")
        return manifest


__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "FORMAT_MINOR",
    "TASKS",
    "FileEntry",
    "Golden",
    "Manifest",
    "TensorSpec",
    "Tolerance",
    "Variant",
    "canonical_json",
    "check_safe_path",
    "parse_canonical_json",
    "validate_created_at",
    "validate_key_id",
    "validate_name",
    "validate_version",
]
