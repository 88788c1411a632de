"""The target table: one row per deployment target, and the row drives lowering.

A row names its ``runtime``, which picks the backend (:mod:`anomopt.targets.backends`, one file per
runtime); ``precisions`` are what it runs; ``symmetric_activations`` sets the quantizer scheme of
``insert_fake_quant``; ``onnx_opset`` the export; ``supported_ops`` is checked against every lowered
``model.onnx``; ``pipelines`` names the shipped pipeline per precision; ``trt_version``, ``sm`` and
``dla_cores`` go to the TensorRT backend (calibration cache header, ``meta.json``, the ``dla_core`` check).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from anomopt.errors import ConfigError, TargetError
from anomopt.passes.pipeline import shipped_pipeline
from anomopt.precision import Precision


@dataclass(frozen=True)
class TargetSpec:
    """One deployment target."""

    name: str
    description: str
    runtime: str  # the backend: a file in anomopt/targets/backends/ (onnxruntime | tensorrt)
    precisions: tuple[Precision, ...]  # what it runs
    symmetric_activations: bool  # False: asymmetric uint8 (ORT x86); True: symmetric int8 (TensorRT)
    onnx_opset: int = 17
    supported_ops: tuple[str, ...] = ()  # ONNX op types its runtime runs; empty: not checked
    trt_version: str | None = None  # e.g. "8.5" (JetPack 5)
    sm: str | None = None  # CUDA compute capability
    dla_cores: int = 0  # DLA engines a TensorRT build may target (dla_core 0 .. dla_cores-1)
    pipelines: dict[Precision, str] = field(default_factory=dict)  # precision -> shipped pipeline name

    def check_bits(self, bits: int | Precision) -> Precision:
        """The precision of ``bits``; a clear error when the target cannot run it."""
        try:
            precision = Precision.parse(bits)
        except ConfigError:
            precision = None
        if precision not in self.precisions:
            have = ", ".join(p.label for p in self.precisions)
            asked = precision.label if precision is not None else f"{bits}-bit"
            raise TargetError(f"target {self.name!r} does not run {asked}; it runs {have}")
        return precision

    def pipeline_name(self, bits: int | Precision, variant: str | None = None) -> str:
        """The shipped pipeline of this target at ``bits`` (``variant``: e.g. ``qat``, ``prune``)."""
        precision = self.check_bits(bits)
        base = self.pipelines.get(precision)
        if base is None:
            raise ConfigError(f"target {self.name!r} ships no pipeline for {precision.label}")
        return f"{base}-{variant}" if variant else base

    def unsupported_ops(self, op_types: set[str] | list[str]) -> list[str]:
        """The op types in ``op_types`` this target's runtime is not listed to run (none when the row
        lists no ops)."""
        if not self.supported_ops:
            return []
        return sorted(set(op_types) - set(self.supported_ops))


#: ONNX ops the exporter writes for anomopt's models (measured: STFPM, RD and US lowered for cpu and orin at
#: FP32, FP16 and INT8 explicit / implicit), plus the plain CNN ops other backbones and unfolded graphs
#: bring (pooling, BatchNormalization, ConvTranspose, reshapes). Each is run by ONNX Runtime's CPU kernels
#: and listed as supported in onnx-tensorrt's operator matrix (docs/operators.md, TensorRT 8.4 and later).
_CNN_OPS = (
    # measured
    "Add", "Clip", "Concat", "Conv", "DequantizeLinear", "Div", "Expand", "Flatten", "MatMul", "Max", "Mul",
    "Pad", "Pow", "QuantizeLinear", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Resize",
    "Shape", "Slice", "Sqrt", "Sub", "Unsqueeze",
    # other backbones, unfolded BatchNorm, shape glue
    "AveragePool", "BatchNormalization", "Cast", "Constant", "ConvTranspose", "Gather", "Gemm",
    "GlobalAveragePool", "Identity", "LeakyRelu", "MaxPool", "Min", "Reshape", "Sigmoid", "Squeeze", "Transpose",
)
_ORT_OPS = _CNN_OPS
_TRT_OPS = _CNN_OPS  # every entry is "Y" in onnx-tensorrt's matrix; QLinearConv / ConvInteger are not

def _jetson(name: str, board: str, trt: str, sm: str) -> TargetSpec:
    """A Jetson row: TensorRT ``trt`` on compute capability ``sm``, INT8 / FP16, two DLA cores, its
    pipelines named ``<name>-<precision>``."""
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8)
    return TargetSpec(
        name=name,
        description=f"NVIDIA Jetson {board}, TensorRT {trt}, sm_{sm.replace('.', '')}, INT8/FP16, optional DLA",
        runtime="tensorrt",
        precisions=precisions,
        symmetric_activations=True,
        supported_ops=_TRT_OPS,
        trt_version=trt.split()[0],
        sm=sm,
        dla_cores=2,
        pipelines={p: f"{name}-{p.value}" for p in precisions},
    )


TARGETS: dict[str, TargetSpec] = {
    "cpu": TargetSpec(
        name="cpu",
        description="ONNX Runtime on x86 (VNNI: uint8 activations x int8 weights, QDQ) or ARM",
        runtime="onnxruntime",
        precisions=(Precision.FP32, Precision.INT8),
        symmetric_activations=False,
        supported_ops=_ORT_OPS,
        pipelines={Precision.FP32: "cpu-fp32", Precision.INT8: "cpu-int8"},
    ),
    "xavier_nx": _jetson("xavier_nx", "Xavier NX", "8.5 (JetPack 5)", "7.2"),
    "orin": _jetson("orin", "Orin", "8.6 / 10", "8.7"),
}


def get_target(name: str) -> TargetSpec:
    """Look up a target by name, with an error listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}; known targets: {', '.join(sorted(TARGETS))}") from None


def pipeline_path(target: str | TargetSpec, bits: int | Precision, variant: str | None = None) -> Path:
    """The shipped pipeline file of a target at ``bits``: the row's ``pipelines`` entry, plus
    ``-<variant>`` (e.g. ``qat``: ``cpu-int8-qat.toml``)."""
    spec = target if isinstance(target, TargetSpec) else get_target(target)
    return shipped_pipeline(spec.pipeline_name(bits, variant))
