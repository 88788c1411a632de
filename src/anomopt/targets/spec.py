"""Target specs as data (Ultralytics-style table): what each deployment target runs and how."""

from __future__ import annotations

from dataclasses import dataclass, field

from anomopt.errors import TargetError


@dataclass(frozen=True)
class TargetSpec:
    """One deployment target."""

    name: str
    description: str
    runtime: str  # onnxruntime | tensorrt
    precisions: tuple[int, ...]  # bits it runs: 32, 16, 8
    symmetric_activations: bool  # False: asymmetric uint8 (ORT x86); True: symmetric int8 (TensorRT)
    weight_per_channel: bool = True
    onnx_opset: int = 17
    supported_ops: tuple[str, ...] = ()
    default_calibration: str = "percentile"
    trt_version: str | None = None  # e.g. "8.5" (JetPack 5)
    sm: str | None = None  # CUDA compute capability
    dla_cores: int = 0
    pipelines: dict[int, str] = field(default_factory=dict)  # bits -> shipped pipeline name

    def check_bits(self, bits: int) -> None:
        """Raise a clear error when the target cannot run ``bits``."""
        if bits not in self.precisions:
            names = {32: "FP32", 16: "FP16", 8: "INT8"}
            have = ", ".join(names.get(b, str(b)) for b in self.precisions)
            raise TargetError(
                f"target {self.name!r} does not run {names.get(bits, f'{bits}-bit')}; it runs {have}"
            )


_ORT_OPS = ("Conv", "Relu", "Clip", "Add", "Mul", "Sub", "Div", "Concat", "Resize", "Pad", "ReduceMax",
            "ReduceSum", "ReduceMean", "Pow", "Sqrt", "QuantizeLinear", "DequantizeLinear")
_TRT_OPS = _ORT_OPS

TARGETS: dict[str, TargetSpec] = {
    "cpu": TargetSpec(
        name="cpu",
        description="ONNX Runtime on x86 (VNNI: uint8 activations x int8 weights, QDQ) or ARM",
        runtime="onnxruntime",
        precisions=(32, 8),
        symmetric_activations=False,
        supported_ops=_ORT_OPS,
        default_calibration="percentile",
        pipelines={32: "cpu-fp32", 8: "cpu-int8"},
    ),
    "xavier_nx": TargetSpec(
        name="xavier_nx",
        description="NVIDIA Jetson Xavier NX, TensorRT 8.5 (JetPack 5), sm_72, INT8/FP16, optional DLA",
        runtime="tensorrt",
        precisions=(32, 16, 8),
        symmetric_activations=True,
        supported_ops=_TRT_OPS,
        default_calibration="entropy",
        trt_version="8.5",
        sm="7.2",
        dla_cores=2,
        pipelines={32: "xavier_nx-fp32", 16: "xavier_nx-fp16", 8: "xavier_nx-int8"},
    ),
    "orin": TargetSpec(
        name="orin",
        description="NVIDIA Jetson Orin, TensorRT 8.6 / 10, sm_87, INT8/FP16, optional DLA",
        runtime="tensorrt",
        precisions=(32, 16, 8),
        symmetric_activations=True,
        supported_ops=_TRT_OPS,
        default_calibration="entropy",
        trt_version="8.6",
        sm="8.7",
        dla_cores=2,
        pipelines={32: "orin-fp32", 16: "orin-fp16", 8: "orin-int8"},
    ),
}


def get_target(name: str) -> TargetSpec:
    """Look up a target by name, with an error listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}; known targets: {', '.join(sorted(TARGETS))}") from None
