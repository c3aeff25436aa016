"""Read a model's input/output tensor specs from an ONNX file (``onnx`` package)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from .dynamic_dims import declared_dim
from .errors import BuildError, ManifestError
from .manifest import TensorSpec

ONNX_TO_NUMPY: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.DOUBLE: "float64",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.BOOL: "bool",
}


def load_model(path: Path) -> onnx.ModelProto:
    """Load an ONNX file without external data; refuse models that need external data."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise BuildError(f"model file {path} does not exist") from None
    except Exception as exc:  # onnx raises DecodeError and friends
        raise BuildError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    for init in model.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            raise BuildError(
                f"{path.name} keeps tensor {init.name!r} in external data; save the model as "
                "one file (onnx.save_model(model, path, save_as_external_data=False))"
            )
    return model


def _elem_type_name(elem_type: int) -> str:
    try:
        return str(TensorProto.DataType.Name(elem_type))
    except ValueError:
        return str(elem_type)


def _spec(value: onnx.ValueInfoProto, role: str, model_name: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        hint = ""
        if kind in ("sequence_type", "map_type"):
            hint = (
                "; for a scikit-learn classifier export with the ZipMap disabled: "
                "skl2onnx.to_onnx(model, X, options={id(model): {'zipmap': False}})"
            )
        raise BuildError(
            f"{model_name}: {role} {value.name!r} is a {kind or 'untyped value'}, not a "
            f"tensor; bundles carry tensor inputs and outputs only{hint}"
        )
    tensor = value.type.tensor_type
    dtype = ONNX_TO_NUMPY.get(tensor.elem_type)
    if dtype is None:
        raise BuildError(
            f"{model_name}: {role} {value.name!r} has element type "
            f"{_elem_type_name(tensor.elem_type)}; supported: {', '.join(ONNX_TO_NUMPY.values())}"
        )
    shape: list[int | str | None] = []
    if tensor.HasField("shape"):
        for dim in tensor.shape.dim:
            which = dim.WhichOneof("value")
            if which == "dim_value":
                shape.append(declared_dim(dim.dim_value, role))
            elif which == "dim_param" and dim.dim_param:
                shape.append(dim.dim_param)
            else:
                shape.append(None)
    else:
        raise BuildError(
            f"{model_name}: {role} {value.name!r} has no shape (unknown rank); re-export the "
            "model with shapes on its inputs and outputs"
        )
    try:
        return TensorSpec(name=value.name, dtype=dtype, shape=tuple(shape))
    except ManifestError as exc:
        raise BuildError(f"{model_name}: {role} {value.name!r}: {exc.detail}") from None


def model_io(
    model: onnx.ModelProto, model_name: str = "model"
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """``(inputs, outputs)`` of a loaded model (initializers listed as inputs are skipped)."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [
        _spec(v, "input", model_name) for v in model.graph.input if v.name not in initializers
    ]
    outputs = [_spec(v, "output", model_name) for v in model.graph.output]
    if not inputs:
        raise BuildError(f"{model_name}: the model has no inputs")
    if not outputs:
        raise BuildError(f"{model_name}: the model has no outputs")
    return inputs, outputs


def read_onnx_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of the ONNX model at ``path``."""
    path = Path(path)
    return model_io(load_model(path), path.name)


def guess_precision(model: onnx.ModelProto) -> str:
    """``int8`` for quantized graphs, ``fp16`` when float16 weights dominate, else
    ``fp32``."""
    quant_ops = {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLinear",
    }
    if any(node.op_type in quant_ops for node in model.graph.node):
        return "int8"
    counts: dict[int, int] = {}
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        counts[init.data_type] = counts.get(init.data_type, 0) + n
    if counts.get(TensorProto.FLOAT16, 0) > counts.get(TensorProto.FLOAT, 0):
        return "fp16"
    return "fp32"


__all__ = ["ONNX_TO_NUMPY", "guess_precision", "load_model", "model_io", "read_onnx_io"]
