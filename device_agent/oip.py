"""The Open Inference Protocol (KServe v2 / Triton HTTP) on the local API: routes, metadata,
and infer requests decoded to the arrays ``ModelRuntime.predict`` takes.

Pure functions: the HTTP server (``device_agent.local_api``) matches a path with
``parse_route``, hands the body here and maps the errors to status codes
(``UnknownModelError`` 404, ``InputTooLargeError`` 413, ``PredictError`` 400).

The served model is the active bundle: its name is the model name and its version the
only version. The request's JSON is declared once as msgspec Structs (``InferRequestBody``;
its JSON Schema is ``docs/schemas/local/InferRequest.json``) and decoded by msgspec; a
refused request names the input and the field. Tensor data is decoded into the datatype
the request declares, exactly (a JSON value the datatype cannot hold is refused), and then
cast to the model input's dtype by the same strict rules as ``/v1/predict``
(``device_agent.predict_inputs``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote

import msgspec
import numpy as np
from msgspec import UNSET, Meta, UnsetType

from device_agent import oip_binary
from device_agent.errors import PredictError
from device_agent.predict_inputs import as_input_array, decode_declared, input_bounds
from ota.model import describe

__all__ = [
    "DATATYPES", "InferRequest", "InferRequestBody", "Route", "UnknownModelError", "check_model",
    "decode_infer", "encode_infer", "model_metadata", "parse_route", "server_metadata",
]

SERVER_NAME = "edgefleet-device-agent"
EXTENSIONS = ("binary_tensor_data",)
DATATYPES: dict[str, np.dtype] = {k: np.dtype(v) for k, v in {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64"}.items()}
_OIP_NAME = {v: k for k, v in DATATYPES.items()}
_PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite", "coreml": "coreml"}


class UnknownModelError(PredictError):
    """A model name or version that this device does not serve (404)."""


@dataclass(frozen=True)
class Route:
    """``kind``: live, ready, server, model, model_ready or infer; name/version for the
    model routes (version None when the path has no ``/versions/{v}``)."""

    kind: str
    name: str | None = None
    version: str | None = None


def parse_route(method: str, path: str) -> Route | None:
    """The OIP route of ``method path`` (query string already removed), or None."""
    parts = path.strip("/").split("/")
    if parts[0] != "v2":
        return None
    rest = parts[1:]
    if method == "GET":
        if not rest:
            return Route("server")
        if rest in (["health", "live"], ["health", "ready"]):
            return Route(rest[1])
    if len(rest) < 2 or rest[0] != "models" or not rest[1]:
        return None
    name, tail = unquote(rest[1]), rest[2:]
    version = None
    if len(tail) >= 2 and tail[0] == "versions" and tail[1]:
        version, tail = unquote(tail[1]), tail[2:]
    if method == "GET" and not tail:
        return Route("model", name, version)
    if method == "GET" and tail == ["ready"]:
        return Route("model_ready", name, version)
    if method == "POST" and tail == ["infer"]:
        return Route("infer", name, version)
    return None


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def check_model(manifest: Any, route: Route) -> None:
    """``UnknownModelError`` unless ``route`` names the active bundle (and its version)."""
    if route.name != manifest.name:
        raise UnknownModelError(f"unknown model {route.name!r}; this device serves "
                                f"{manifest.name!r}")
    if route.version is not None and route.version != manifest.version:
        raise UnknownModelError(f"model {route.name!r} has no version {route.version!r}; "
                                f"the active version is {manifest.version!r}")


def _tensor_meta(t: Any) -> dict[str, Any]:
    return {"name": t.name, "datatype": _OIP_NAME[np.dtype(t.dtype)],
            "shape": [d if isinstance(d, int) else -1 for d in t.shape]}


def model_metadata(manifest: Any, variant_format: str) -> dict[str, Any]:
    """OIP model metadata: inputs/outputs with OIP datatypes, -1 for a dynamic dimension."""
    return {"name": manifest.name, "versions": [manifest.version],
            "platform": _PLATFORMS.get(variant_format, variant_format),
            "inputs": [_tensor_meta(t) for t in manifest.inputs],
            "outputs": [_tensor_meta(t) for t in manifest.outputs]}


# -- infer ---------------------------------------------------------------------------


# -- infer: the request, declared ---------------------------------------------------


class InputParameters(msgspec.Struct, frozen=True):
    """An input's ``parameters`` (other keys are ignored, as OIP allows)."""

    binary_data_size: Annotated[int, Meta(ge=0)] | None = None
    """The tensor is in the binary part of the body, this many bytes (Triton's binary
    tensor data extension)."""


class InferInput(msgspec.Struct, frozen=True):
    """One input tensor: ``data`` (row-major, flat or nested) or ``binary_data_size``."""

    name: str
    shape: list[Annotated[int, Meta(ge=0)]]
    datatype: Annotated[str, Meta(extra_json_schema={"enum": list(DATATYPES)})]
    parameters: InputParameters = msgspec.field(default_factory=InputParameters)
    data: list[Any] | UnsetType = UNSET


class OutputParameters(msgspec.Struct, frozen=True):
    binary_data: bool | None = None
    """Answer this output as binary data (None: the request's ``binary_data_output``)."""


class RequestedOutput(msgspec.Struct, frozen=True):
    name: str
    parameters: OutputParameters = msgspec.field(default_factory=OutputParameters)


class RequestParameters(msgspec.Struct, frozen=True):
    binary_data_output: bool = False
    """The default for every output: answer it as binary data."""


class InferRequestBody(msgspec.Struct, frozen=True):
    """``POST /v2/models/{name}/infer``: the JSON request (or the JSON header before the
    binary tensor data)."""

    inputs: Annotated[list[InferInput], Meta(min_length=1)]
    id: str | None = None
    parameters: RequestParameters = msgspec.field(default_factory=RequestParameters)
    outputs: list[RequestedOutput] | None = None
    """The outputs to answer, in this order (None: every output of the model)."""


_REQUEST = msgspec.json.Decoder(InferRequestBody)
_ITEM = re.compile(r"(inputs|outputs)\[(\d+)\]\.?")


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[tuple[str, bool], ...]  # (name, as binary data), in answer order


def _refusal(e: msgspec.ValidationError, obj: Any) -> PredictError:
    """A refused request in one line naming the input or output and the field
    (``input 'x': shape[1] must be >= 0, got -16``)."""
    line = describe(e, obj, InferRequestBody, "request", quoted=False, indexes=True)
    line = line.removeprefix("request: ")
    if (m := _ITEM.match(line)) is not None:
        items = obj.get(m[1]) if isinstance(obj, dict) else None
        item = items[int(m[2])] if isinstance(items, list) and int(m[2]) < len(items) else None
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            kind = m[1].removesuffix("s")
            line = f"{kind} {name!r}: {line[m.end():]}"
    return PredictError(line)


def _datatype(value: str, name: str, model_dtype: str) -> np.dtype:
    dtype = DATATYPES.get(value)
    if dtype is not None:
        return dtype
    want = _OIP_NAME[np.dtype(model_dtype)]
    if value == "BYTES":
        raise PredictError(f"input {name!r}: datatype BYTES (strings) is refused: this "
                           f"input takes {want}")
    raise PredictError(f"input {name!r}: unsupported datatype {value!r}; this input takes "
                       f"{want} (accepted: {', '.join(DATATYPES)})")


def _input(t: InferInput, spec: Any, tail: memoryview, offset: int, bound: int
           ) -> tuple[np.ndarray, int]:
    name = spec.name
    shape = tuple(t.shape)
    dtype = _datatype(t.datatype, name, spec.dtype)
    size = t.parameters.binary_data_size
    if size is not None:
        if t.data is not UNSET:
            raise PredictError(f"input {name!r}: has both data and binary_data_size")
        if offset + size > len(tail):
            raise PredictError(f"input {name!r}: binary_data_size {size} runs past the "
                               f"{len(tail)} bytes of binary data")
        raw = tail[offset:offset + size]
        return oip_binary.tensor_from_bytes(name, raw, dtype, shape, bound), offset + size
    if t.data is UNSET:
        raise PredictError(f"input {name!r}: data must be a list (row-major, flat or "
                           "nested), or the tensor sent as binary data")
    arr = as_input_array(name, t.data, dtype)
    if arr.size != math.prod(shape):
        raise PredictError(f"input {name!r}: data has {arr.size} elements, shape "
                           f"{list(shape)} takes {math.prod(shape)}")
    return arr.reshape(shape), offset


def decode_infer(body: bytes, header_length: str | None, manifest: Any, max_input_bytes: int
                 ) -> InferRequest:
    """An OIP infer request (JSON, or JSON header + binary data) as the arrays to feed
    and the outputs to answer (module doc for the rules)."""
    head, tail = oip_binary.split_body(body, header_length)
    req = decode_declared(bytes(head), _REQUEST, "request", _refusal)
    specs = {t.name: t for t in manifest.inputs}
    bounds = input_bounds(manifest.inputs, max_input_bytes)
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for t in req.inputs:
        if t.name not in specs:
            raise PredictError(f"unknown input {t.name!r}; the model takes "
                               + ", ".join(repr(n) for n in specs))
        if t.name in inputs:
            raise PredictError(f"input {t.name!r} is given twice")
        inputs[t.name], offset = _input(t, specs[t.name], tail, offset, bounds[t.name])
    if offset != len(tail):
        raise PredictError(f"{len(tail) - offset} bytes of binary data are not claimed by "
                           "any input's binary_data_size")
    binary_default = req.parameters.binary_data_output
    return InferRequest(req.id, inputs, _outputs(req.outputs, manifest, binary_default))


def _outputs(value: list[RequestedOutput] | None, manifest: Any, binary: bool
             ) -> tuple[tuple[str, bool], ...]:
    names = [t.name for t in manifest.outputs]
    if value is None:
        return tuple((n, binary) for n in names)
    chosen: dict[str, bool] = {}
    for o in value:
        if o.name not in names:
            raise PredictError(f"unknown output {o.name!r}; the model has "
                               + ", ".join(repr(n) for n in names))
        if o.name in chosen:
            raise PredictError(f"output {o.name!r} is requested twice")
        flag = o.parameters.binary_data
        chosen[o.name] = binary if flag is None else flag
    return tuple(chosen.items())


def encode_infer(req: InferRequest, outputs: Mapping[str, np.ndarray], manifest: Any
                 ) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary data, the JSON header's length (the
    ``Inference-Header-Content-Length`` answer header)."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in req.outputs:
        arr = np.asarray(outputs[name])
        datatype = _OIP_NAME.get(arr.dtype)
        if datatype is None:
            raise PredictError(f"output {name!r} has dtype {arr.dtype}, which has no OIP "
                               "datatype here")
        t: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = oip_binary.tensor_bytes(arr)
            blobs.append(blob)
            t["parameters"] = {"binary_data_size": len(blob)}
        else:
            t["data"] = arr.ravel().tolist()
        tensors.append(t)
    answer: dict[str, Any] = {"model_name": manifest.name, "model_version": manifest.version}
    if req.id is not None:
        answer["id"] = req.id
    answer["outputs"] = tensors
    head = json.dumps(answer).encode()
    return oip_binary.join_body(head, blobs), (len(head) if blobs else None)
