"""Dynamic dimensions of a model's inputs and outputs.

A spec dimension is an ``int`` (fixed), a ``str`` (named: an ONNX ``dim_param``) or
``None`` (dynamic without a name). A model file's declared size becomes a spec dimension
through :func:`declared_dim`: a dimension with neither value nor name, and a negative value
(the ``-1`` that Paddle2ONNX and some TensorFlow exporters write; ONNX Runtime reads it as
dynamic), are dynamic; so is ``0`` on an output (runtimes do not hold outputs to their
declared sizes). ``0`` on an input stays a fixed 0, because ONNX Runtime then accepts only
empty tensors there; :func:`refuse_empty_inputs` turns such a model away with the fix.

``--dim`` sets a dynamic input dimension for generated golden inputs, by a key:

- ``NAME``: a named dimension (exact match of the ``dim_param``);
- ``INPUT:AXIS``: otherwise, the text after the LAST ``:`` must be decimal digits (the
  axis) and the text before it is the input name, which may itself hold ``:``, ``/`` or
  spaces (``input:0/x y:1`` is axis 1 of input ``input:0/x y``).

:func:`resolve_dim_settings` checks the keys against the inputs and returns them with
unnamed dimensions in the canonical ``<input>:<axis>`` form that ``golden.dims`` records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .errors import BuildError
from .manifest import Dim, TensorSpec

_AXIS_KEY_RE = re.compile(r"(.+):([0-9]+)", re.DOTALL)


def declared_dim(value: int, role: str) -> int | None:
    """The spec dimension for a size a model file declares for an ``input`` or ``output``:
    ``None`` (dynamic) when negative, or 0 on an output; else the size."""
    value = int(value)
    if value < 0 or (value == 0 and role == "output"):
        return None
    return value


def null_dim_key(input_name: str, axis: int) -> str:
    """The ``dims`` key for an unnamed dynamic dimension: ``"<input>:<axis>"``."""
    return f"{input_name}:{axis}"


def dim_key(spec: TensorSpec, axis: int) -> str | None:
    """The key that sets ``spec``'s dimension ``axis``: its name, ``<input>:<axis>`` when
    it is dynamic without a name, ``None`` when it is fixed."""
    dim = spec.shape[axis]
    if isinstance(dim, str):
        return dim
    return null_dim_key(spec.name, axis) if dim is None else None


def dim_keys(specs: Sequence[TensorSpec]) -> list[str]:
    """Every key a ``--dim`` can set: in input order, each once."""
    keys: list[str] = []
    for spec in specs:
        for axis in range(len(spec.shape)):
            key = dim_key(spec, axis)
            if key is not None and key not in keys:
                keys.append(key)
    return keys


def _describe(dim: Dim) -> str:
    return "?" if dim is None else str(dim)


def _axis_key(key: str, specs: Sequence[TensorSpec]) -> str | None:
    """The canonical key of ``INPUT:AXIS``; ``None`` when ``key`` does not have that form;
    BuildError when it names no input, an axis out of range or one that is not unnamed
    dynamic."""
    match = _AXIS_KEY_RE.fullmatch(key)
    if match is None:
        return None
    name, axis = match.group(1), int(match.group(2))
    spec = next((s for s in specs if s.name == name), None)
    if spec is None:
        inputs = ", ".join(repr(s.name) for s in specs)
        raise BuildError(
            f"--dim {key}: the model has no input {name!r} (inputs: {inputs}; the axis follows "
            "the last ':')")
    shape = "[" + ", ".join(_describe(d) for d in spec.shape) + "]"
    if axis >= len(spec.shape):
        axes = f"axes 0..{len(spec.shape) - 1}" if spec.shape else "no axes"
        raise BuildError(
            f"--dim {key}: input {name!r} has rank {len(spec.shape)} ({axes}, shape {shape}); "
            f"axis {axis} is out of range")
    dim = spec.shape[axis]
    if isinstance(dim, str):
        raise BuildError(
            f"--dim {key}: axis {axis} of input {name!r} is the named dimension {dim!r}; "
            f"set it as --dim {dim}=N")
    if dim is not None:
        raise BuildError(
            f"--dim {key}: axis {axis} of input {name!r} is fixed at {dim}, not dynamic "
            f"(shape {shape})")
    return null_dim_key(name, axis)


def resolve_dim_settings(dims: Mapping[str, int], specs: Sequence[TensorSpec]) -> dict[str, int]:
    """``dims`` (``--dim`` key -> value) checked against the inputs ``specs``, keyed by
    :func:`dim_keys`; BuildError naming the key and the reason for the first bad one."""
    named = {d for s in specs for d in s.shape if isinstance(d, str)}
    out: dict[str, int] = {}
    given: dict[str, str] = {}
    for key, value in dims.items():
        if not isinstance(key, str) or not key:
            raise BuildError(f"--dim {key!r}: the name must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BuildError(f"--dim {key}={value!r}: the value must be a positive integer")
        canonical = key if key in named else _axis_key(key, specs)
        if canonical is None:
            known = dim_keys(specs)
            listing = ", ".join(known) if known else "none: every dimension is fixed"
            raise BuildError(
                f"--dim {key}: the model has no dynamic dimension {key!r} (dynamic "
                f"dimensions: {listing}; an unnamed one is INPUT:AXIS)")
        if canonical in out and out[canonical] != value:
            raise BuildError(
                f"--dim {key}={value} and --dim {given[canonical]}={out[canonical]} set the "
                "same dimension to different values")
        out[canonical] = value
        given.setdefault(canonical, key)
    return out


def refuse_empty_inputs(specs: Sequence[TensorSpec], model_name: str) -> None:
    """BuildError when an input declares a size of 0: ONNX Runtime feeds only empty tensors
    there (it does not read 0 as dynamic), so no golden input or request could carry data."""
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if dim == 0 and not isinstance(dim, bool):
                raise BuildError(
                    f"{model_name}: input {spec.name!r} declares axis {axis} as 0 (shape "
                    f"[{', '.join(_describe(d) for d in spec.shape)}]); ONNX Runtime accepts only "
                    "empty tensors there, it does not read 0 as dynamic; fix: re-export the "
                    "model with that dimension dynamic (dim_value -1 or a dim_param name)")


__all__ = [
    "declared_dim",
    "dim_key",
    "dim_keys",
    "null_dim_key",
    "refuse_empty_inputs",
    "resolve_dim_settings",
]
