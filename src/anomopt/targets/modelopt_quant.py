"""NVIDIA ModelOpt as the INT8 quantizer of the TensorRT targets (``xavier_nx`` / ``orin``).

The ``modelopt_quantize`` pass replaces ``insert_fake_quant`` + ``calibrate`` in a Jetson INT8 pipeline:

- **placement**: ``mtq.quantize`` with ModelOpt's ``INT8_DEFAULT_CFG`` restricted to the scope (the student
  by default): every module ModelOpt knows how to quantize (convs, linears, transposed convs, pooling)
  gets an 8-bit symmetric per-tensor input quantizer and, where it has weights, an 8-bit per-channel
  (axis 0) weight quantizer; ModelOpt's own exclusions (BatchNorm, LeakyReLU, ...) stay excluded.
  Quantizers of modules the inference path never runs collect no data and are switched off.
- **calibration**: ModelOpt's calibrators over the calibration images: ``max`` (``MaxCalibrator``,
  ModelOpt's default and ours) or ``entropy`` / ``percentile`` (``HistogramCalibrator``). On realdev STFPM
  ModelOpt's entropy moved the scores 5.5x their norm (max: 0.07), see benchmarks/RESULTS.md.
  In nvidia-modelopt 0.47
  ``HistogramCalibrator.compute_amax`` cannot be called through ``mtq.calibrate`` (it misses its ``method``
  argument), so the pass runs the calibration loop itself and calls ``load_calib_amax(method)`` per
  quantizer; its ``mse`` method is refused (wrong in 0.47).
- **export**: the legacy exporter (``dynamo=False``) turns the quantizers into QuantizeLinear /
  DequantizeLinear pairs (int8, zero point 0), which :func:`export_modelopt_qdq` checks like our own QDQ.

``nvidia-modelopt`` is optional (``pip install 'anomopt[modelopt]'``) and imported only when the pass runs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torch import nn

from anomopt.errors import ConfigError, DataError, TargetError
from anomopt.graph import CalibrationRecord, ModelGraph, QuantRecord
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.fake_quant import SCOPES
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass

METHODS = ("max", "entropy", "percentile")
INSTALL_HINT = "pip install 'anomopt[modelopt]' (nvidia-modelopt>=0.47, requests, huggingface_hub)"


def import_modelopt() -> tuple[Any, str]:
    """``(modelopt.torch.quantization, version)``, or a :class:`ConfigError` saying how to install it."""
    try:
        import modelopt
        import modelopt.torch.quantization as mtq
    except ImportError as err:
        raise ConfigError(f"the modelopt quantizer needs nvidia-modelopt ({err}); {INSTALL_HINT}") from None
    return mtq, str(getattr(modelopt, "__version__", "?"))


def quantizer_variant(quantizer: str, variant: str | None, pipeline: str | None = None) -> str | None:
    """The shipped pipeline variant for ``--quantizer``: ``modelopt`` -> ``<target>-int8-modelopt.toml``."""
    if quantizer == "anomopt":
        return variant
    if quantizer != "modelopt":
        raise ConfigError(f"--quantizer must be 'anomopt' or 'modelopt', not {quantizer!r}")
    if pipeline:
        raise ConfigError("--quantizer modelopt picks a shipped pipeline; with --pipeline put the "
                          "'modelopt_quantize' pass in your TOML instead")
    if variant == "torch_tensorrt":  # the <target>-int8-torch_tensorrt pipeline quantizes with ModelOpt too
        return variant
    if variant and variant != "modelopt":
        raise ConfigError(f"--quantizer modelopt and --variant {variant} both pick the pipeline: give one")
    return "modelopt"


def scoped_int8_config(mtq: Any, roles: tuple[str, ...], method: str, num_bins: int) -> dict[str, Any]:
    """ModelOpt's ``INT8_DEFAULT_CFG`` with its weight and input quantizers limited to modules under
    ``roles`` (top-level children, e.g. ``student``); activations get a histogram calibrator unless
    ``method`` is ``max``."""
    base = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    act_extra: dict[str, Any] = {}
    if method != "max":
        from modelopt.torch.quantization.calib import HistogramCalibrator

        act_extra["calibrator"] = (HistogramCalibrator, (), {"num_bits": 8, "axis": None, "num_bins": int(num_bins)})
    entries = base["quant_cfg"]
    if isinstance(entries, dict):  # older releases: {pattern: cfg}
        entries = [{"quantizer_name": k, **({"cfg": v} if "enable" not in v else v)} for k, v in entries.items()]
    out: list[dict[str, Any]] = []
    for entry in entries:
        name = entry.get("quantizer_name", "")
        if name in ("*weight_quantizer", "*input_quantizer"):
            for role in roles:
                cfg = dict(entry.get("cfg", {}))
                if name == "*input_quantizer":
                    cfg.update(act_extra)
                out.append({**entry, "quantizer_name": f"{role}.*{name[1:]}", "cfg": cfg})
        else:
            out.append(entry)
    return {"quant_cfg": out, "algorithm": None}


def _has_data(q: Any) -> bool:
    cal = getattr(q, "_calibrator", None)
    if cal is None:
        return False
    if hasattr(cal, "_calib_hist"):
        return cal._calib_hist is not None
    return getattr(cal, "_calib_amax", None) is not None


def modelopt_quantizers(model: nn.Module, enabled_only: bool = True) -> dict[str, Any]:
    """Qualified name -> ModelOpt ``TensorQuantizer`` (enabled ones only by default); empty when ModelOpt
    never touched ``model`` or is not installed."""
    try:
        from modelopt.torch.quantization.nn import TensorQuantizer
    except ImportError:
        return {}
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, TensorQuantizer) and (m.is_enabled or not enabled_only)
    }


def calibrate_modelopt(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "max",
    percentile: float = 99.99,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ModelOpt's calibrators of every enabled quantizer over ``images`` and load their ``amax``.

    Quantizers that saw no data (modules outside the inference path) are disabled. Returns notes."""
    quantizers = modelopt_quantizers(model)
    for q in quantizers.values():
        q.disable_quant()
        q.enable_calib()
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size])
    unused: list[str] = []
    for name, q in quantizers.items():
        if not _has_data(q):
            q.disable_calib()
            q.disable()
            unused.append(name)
            continue
        if type(q._calibrator).__name__ == "HistogramCalibrator":
            kwargs = {"percentile": float(percentile)} if method == "percentile" else {}
            q.load_calib_amax(method, **kwargs)
        else:
            q.load_calib_amax()
        q.disable_calib()
        q.enable_quant()
        amax = q.amax
        if amax is None or not torch.isfinite(torch.as_tensor(amax)).all():
            raise TargetError(f"ModelOpt calibration gave no finite amax for {name}")
    return {"quantizers": len(quantizers) - len(unused), "disabled_without_data": len(unused)}


def quantized_modules(model: nn.Module) -> dict[str, str]:
    """Module name -> module type name of every module whose input quantizer is on."""
    out = {}
    for name in modelopt_quantizers(model):
        if name.endswith(".input_quantizer"):
            parent = name.rsplit(".", 1)[0]
            out[parent] = type(model.get_submodule(parent)).__name__
    return out


@register_pass
class ModeloptQuantize(Pass):
    """ModelOpt INT8 placement + calibration (TensorRT targets)."""

    name = "modelopt_quantize"
    forbids = frozenset({"fake_quant", "modelopt_quant"})
    provides = frozenset({"modelopt_quant", "calibrated"})
    preserves = frozenset({"bn_folded", "pruned"})

    @dataclass
    class Options:
        scope: str = option("student", "which roles to quantize: student | all")
        method: str = option("max", "ModelOpt calibrator: max | entropy | percentile")
        percentile: float = option(99.99, "the percentile kept when method = 'percentile'")
        num_bins: int = option(2048, "histogram bins (entropy / percentile)")
        batch_size: int = option(8, "images per calibration forward pass")

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        target = ctx.target
        if target is not None and getattr(target, "runtime", "") != "tensorrt":
            raise TargetError(
                f"modelopt_quantize makes TensorRT Q/DQ graphs; target {target.name!r} is not a TensorRT "
                "target (use xavier_nx or orin, or the cpu-int8 pipeline for ONNX Runtime)"
            )
        if ctx.bits != 8:
            raise TargetError(f"modelopt_quantize quantizes to INT8; the pipeline runs at {ctx.bits} bits")
        scope = self.options.scope
        if scope not in ("student", "all"):
            raise ConfigError(f"modelopt_quantize: scope must be 'student' or 'all', not {scope!r}")
        method = self.options.method
        if method not in METHODS:
            raise ConfigError(
                f"modelopt_quantize: method must be one of {', '.join(METHODS)}, not {method!r} "
                "(ModelOpt 0.47's histogram 'mse' is wrong, so it is not offered)"
            )
        images = ctx.calib_images
        if images is None or len(images) == 0:
            raise DataError("modelopt_quantize: no calibration images (pass calib data, or calib_source='noise')")
        if not torch.isfinite(images).all():
            raise DataError("modelopt_quantize: the calibration batch contains NaN or Inf values")
        mtq, version = import_modelopt()
        roles = SCOPES[scope]
        cfg = scoped_int8_config(mtq, roles, method, self.options.num_bins)
        model = graph.model.eval()
        with contextlib.redirect_stdout(io.StringIO()):  # ModelOpt prints "Inserted N quantizers"
            graph.model = mtq.quantize(model, cfg, forward_loop=None)
        notes = calibrate_modelopt(
            graph.model,
            images,
            method,
            self.options.percentile,
            self.options.batch_size,
        )
        modules = quantized_modules(graph.model)
        types = Counter(modules.values())
        graph.state.quantized_layers = list(modules)
        graph.state.quant = QuantRecord(
            scope=scope,
            weight_bits=8,
            act_bits=8,
            symmetric_activations=True,
            per_channel=True,
            keep_fp=[],
            backend="modelopt",
            backend_info={"modelopt_version": version, "config": "INT8_DEFAULT_CFG"},
        )
        graph.state.calibration = CalibrationRecord(
            method=method,
            percentile=self.options.percentile if method == "percentile" else None,
            samples=int(len(images)),
            source=ctx.calib_source,
            backend="modelopt",
        )
        ctx.note(**notes, quantized_modules=dict(types), method=method)
        return graph


def export_modelopt_qdq(graph: ModelGraph, path: str | os.PathLike[str], opset: int = 17) -> Any:
    """Export a ModelOpt-quantized graph as a TensorRT explicit-quantization ONNX (legacy exporter) and
    check it: Q/DQ present, int8 and symmetric. Returns the :class:`OnnxExport`."""
    from anomopt.targets.onnx_export import export_onnx
    from anomopt.targets.tensorrt import qdq_summary

    if not modelopt_quantizers(graph.model):
        raise TargetError("no enabled ModelOpt quantizers: run the modelopt_quantize pass before 'lower'")
    # export_onnx(fake_quant=False) only switches anomopt's own quantizers off; ModelOpt's stay on
    exported = export_onnx(graph, path, opset=opset, fake_quant=False)
    exported.fake_quant = True
    info = qdq_summary(onnx.load(str(exported.path)))
    if info["quantize_linear"] == 0 or info["weight_dequantize_linear"] == 0:
        raise TargetError(f"{exported.path}: the ModelOpt export holds no Q/DQ pairs ({info})")
    if info["asymmetric"] or set(info["zero_point_types"]) - {"int8"}:
        raise TargetError(f"{exported.path}: ModelOpt wrote non-int8 or asymmetric Q/DQ: TensorRT needs symmetric int8")
    exported.notes.update(info)
    exported.notes["quantizer"] = "modelopt"
    return exported
