"""The ONNX Runtime execution providers this build knows, with their provider options.

Each entry is a delegate name as written in manifests and agent configs (``cuda``,
``openvino-gpu``), the ORT provider it asks for, default provider options and the option
keys accepted (unknown keys are refused when a session is opened, so a typo in a config
is an error, not a silently ignored option). Option names are those of the ORT docs
(onnxruntime.ai/docs/execution-providers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ORT_EPS", "OrtProviderSpec", "ort_spec"]


@dataclass(frozen=True)
class OrtProviderSpec:
    name: str
    provider: str
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)
    option_keys: frozenset[str] = frozenset()
    hardware: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.provider.endswith("ExecutionProvider"):
            raise ValueError(f"bad provider spec {self.name!r}/{self.provider!r}")
        unknown = set(self.defaults) - self.option_keys
        if unknown:
            raise ValueError(f"{self.name}: defaults use unknown keys {sorted(unknown)}")

    def options(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults with ``overrides`` applied; ``ValueError`` naming an unknown key."""
        merged = dict(self.defaults)
        for key, value in (overrides or {}).items():
            if key not in self.option_keys:
                raise ValueError(
                    f"{self.name}: unknown provider option {key!r} "
                    f"(known: {', '.join(sorted(self.option_keys)) or 'none'})"
                )
            merged[key] = value
        return merged


_OV = frozenset({"device_type", "precision", "num_of_threads", "num_streams", "cache_dir",
                 "enable_opencl_throttling", "enable_qdq_optimizer", "disable_dynamic_shapes",
                 "load_config", "context", "model_priority"})
_CUDA = frozenset({"device_id", "gpu_mem_limit", "arena_extend_strategy",
                   "cudnn_conv_algo_search", "do_copy_in_default_stream",
                   "cudnn_conv_use_max_workspace", "enable_cuda_graph", "use_tf32"})
_TRT = frozenset({"device_id", "trt_fp16_enable", "trt_int8_enable", "trt_max_workspace_size",
                  "trt_engine_cache_enable", "trt_engine_cache_path", "trt_timing_cache_enable",
                  "trt_builder_optimization_level", "trt_dla_enable", "trt_dla_core"})

ORT_EPS: tuple[OrtProviderSpec, ...] = (
    OrtProviderSpec("tensorrt", "TensorrtExecutionProvider", {"device_id": 0}, _TRT,
                    "NVIDIA GPU (TensorRT engines)"),
    OrtProviderSpec("cuda", "CUDAExecutionProvider", {"device_id": 0}, _CUDA, "NVIDIA GPU"),
    OrtProviderSpec("openvino-npu", "OpenVINOExecutionProvider", {"device_type": "NPU"}, _OV,
                    "Intel NPU via OpenVINO"),
    OrtProviderSpec("openvino-gpu", "OpenVINOExecutionProvider", {"device_type": "GPU"}, _OV,
                    "Intel GPU via OpenVINO"),
    OrtProviderSpec("openvino", "OpenVINOExecutionProvider", {"device_type": "CPU"}, _OV,
                    "Intel CPU via OpenVINO"),
    OrtProviderSpec("coreml", "CoreMLExecutionProvider", {"ModelFormat": "MLProgram"},
                    frozenset({"ModelFormat", "MLComputeUnits", "RequireStaticInputShapes",
                               "EnableOnSubgraphs", "ModelCacheDirectory"}),
                    "Apple Neural Engine / GPU / CPU"),
    OrtProviderSpec("qnn", "QNNExecutionProvider", {"backend_path": "libQnnHtp.so"},
                    frozenset({"backend_path", "htp_performance_mode", "htp_graph_finalization_optimization_mode",
                               "soc_model", "htp_arch", "device_id", "enable_htp_fp16_precision",
                               "profiling_level"}),
                    "Qualcomm Hexagon NPU (HTP)"),
    OrtProviderSpec("nnapi", "NnapiExecutionProvider", {},
                    frozenset({"NNAPI_FLAG_USE_FP16", "NNAPI_FLAG_USE_NCHW",
                               "NNAPI_FLAG_CPU_DISABLED", "NNAPI_FLAG_CPU_ONLY"}),
                    "Android NNAPI"),
    OrtProviderSpec("directml", "DmlExecutionProvider", {"device_id": 0},
                    frozenset({"device_id", "performance_preference", "device_filter"}),
                    "DirectX 12 GPU (Windows)"),
    OrtProviderSpec("xnnpack", "XnnpackExecutionProvider", {"intra_op_num_threads": 1},
                    frozenset({"intra_op_num_threads"}), "Arm/x86 CPU (XNNPACK kernels)"),
    OrtProviderSpec("cpu", "CPUExecutionProvider", {}, frozenset(), "CPU"),
)


def ort_spec(name: str) -> OrtProviderSpec:
    for spec in ORT_EPS:
        if spec.name == name:
            return spec
    raise KeyError(name)
