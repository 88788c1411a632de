"""The ONNX Runtime backend (target ``cpu``): FP32 ONNX, or ONNX Runtime static INT8 (QDQ, uint8
activations x int8 per-channel weights) from it.

How the artifact is made to compute what the torch fake-quant graph computes:

- Only the layers the torch graph quantizes are quantized: the convs carrying fake quantizers (scope
  ``student`` by default; ``graph.state.kept_fp`` layers stay FP32), plus the glue ops inside that scope
  that ONNX Runtime needs around them to run integer kernels (``Add``, ``Concat``, ``Resize``, ``MaxPool``,
  and ``Relu``/``Clip``, which ORT folds into the preceding conv's output quantization). Teacher convs
  (when the scope is the student) and every node of the head and the distance computation stay FP32.
- Conv inputs get exactly the torch quantizers' scale and zero point (``TensorQuantOverrides``), weights
  the same per-channel symmetric int8 grid (``amax / 127``). ORT's own calibration (method mapped from
  ``graph.state.calibration``) only sets ranges of tensors the torch graph does not quantize but ORT's
  integer kernels need (conv outputs feeding residual adds, for instance).
- A float consumer of a quantized tensor (teacher layer, distance, head) is wired back to the float
  tensor, as in torch, where a conv's input quantizer is seen by that conv only.

:func:`integer_kernel_counts` saves ORT's optimized graph and counts the fused integer kernels, so a test
can check that the convs really run as ``QLinearConv`` and not as float convs between Q/DQ pairs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_static,
    save_tensors_data,
)
from onnxruntime.quantization.calibrate import TensorData, TensorsData

from anomopt.errors import DataError, TargetError
from anomopt.graph import ModelGraph
from anomopt.outputs import work_dir
from anomopt.passes.options import option
from anomopt.quant.attach import SCOPES, quantized_layers, weight_quantizer
from anomopt.targets.backends import register_backend
from anomopt.targets.backends.base import MODEL_FILE, Backend, Lowered, LoweringJob
from anomopt.targets.onnx_export import INPUT_NAME, export_onnx, role_of_onnx_name

#: anomopt calibration method -> ONNX Runtime calibrator for the tensors ORT calibrates itself.
#: ``mse`` has no ORT equivalent (``Distribution`` computes mean/std for float8, not an MSE search), so
#: those tensors use ``MinMax``; conv inputs carry anomopt's own MSE ranges either way.
CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "max": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
    "mse": CalibrationMethod.MinMax,
}
#: ops quantized inside the scope besides the convs (ORT integer kernels or QDQ-transparent ops)
GLUE_OPS = ("Add", "Concat", "Resize", "MaxPool", "Relu", "Clip")
#: ops of ORT's optimized graph that are integer kernels
INTEGER_OPS = (
    "QLinearConv",
    "ConvInteger",
    "MatMulInteger",
    "QLinearMatMul",
    "QGemm",
    "DynamicQuantizeLinear",
)


class ImageReader(CalibrationDataReader):
    """Feeds ``images`` (N, 3, H, W) to ONNX Runtime's calibrators in batches."""

    def __init__(self, images: np.ndarray | torch.Tensor, batch_size: int = 8) -> None:
        self.images = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        self.batch_size = max(1, int(batch_size))
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.images):
            return None
        batch = self.images[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size


def _as_numpy_images(images: Any) -> np.ndarray:
    if images is None or len(images) == 0:
        raise DataError("ONNX Runtime calibration needs calibration images")
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise DataError(f"calibration images must be (N, 3, H, W), got {tuple(arr.shape)}")
    return arr.astype(np.float32, copy=False)


def calibrate_tensors(
    onnx_path: str | os.PathLike[str],
    images: Any,
    method: CalibrationMethod = CalibrationMethod.Entropy,
    *,
    op_types: Sequence[str] | None = None,
    percentile: float = 99.99,
    symmetric: bool = False,
    num_bins: int | None = None,
    batch_size: int = 8,
    chunk: int = 16,
) -> TensorsData:
    """Ranges of the float tensors of an ONNX model over ``images`` with ORT's ``create_calibrator``.

    ``op_types`` limits it to inputs/outputs of those op types (None: every float tensor). Images are fed
    in chunks of ``chunk`` so memory stays bounded (ORT keeps a chunk's intermediate outputs in memory).
    """
    arr = _as_numpy_images(images)
    extra: dict[str, Any] = {"symmetric": symmetric}
    if method == CalibrationMethod.Percentile:
        extra.update(percentile=float(percentile), num_bins=num_bins or 2048)
    elif method == CalibrationMethod.Entropy:
        extra.update(num_bins=num_bins or 512, num_quantized_bins=128)
    elif method == CalibrationMethod.Distribution:
        extra.update(num_bins=num_bins or 2048)
    with (
        work_dir("anomopt-calib-") as tmp,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        calibrator = create_calibrator(
            Path(onnx_path),
            list(op_types) if op_types else [],
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=method,
            extra_options=extra,
        )
        for start in range(0, len(arr), max(1, chunk)):
            calibrator.collect_data(ImageReader(arr[start : start + chunk], batch_size))
        data = calibrator.compute_data()
        del calibrator
    return data


def _float_tensors(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    infos = {
        vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    }
    return {
        name: vi
        for name, vi in infos.items()
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }


def collect_ranges(
    onnx_path: str | os.PathLike[str],
    images: Any,
    tensors: Iterable[str],
    method: CalibrationMethod = CalibrationMethod.MinMax,
    *,
    percentile: float = 99.99,
    symmetric: bool = False,
    num_bins: int = 2048,
    batch_size: int = 8,
    floats_only: bool = False,
) -> dict[str, TensorData]:
    """Ranges of the named float tensors over ``images``, with ONNX Runtime's range math (its
    ``HistogramCollector`` for percentile / entropy / distribution, min and max otherwise).

    Unlike ``create_calibrator``, which takes every tensor around the chosen op types, this taps only the
    tensors asked for (the teacher's are not needed to quantize the student) and keeps one batch in memory.
    """
    from onnxruntime.quantization.calibrate import HistogramCollector

    arr = _as_numpy_images(images)
    wanted = [t for t in dict.fromkeys(tensors) if t]
    proto = onnx.load(str(onnx_path))
    floats = _float_tensors(proto)
    if floats_only:
        wanted = [t for t in wanted if t in floats]
    if not wanted:
        return {}
    outputs = {o.name for o in proto.graph.output}
    inputs = {i.name for i in proto.graph.input}
    for name in wanted:
        if name not in outputs and name not in inputs:
            proto.graph.output.append(
                floats.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    lo = {t: np.inf for t in wanted}
    hi = {t: -np.inf for t in wanted}
    collector = None
    if method != CalibrationMethod.MinMax:
        collector = HistogramCollector(
            method=method.name.lower(),
            symmetric=symmetric,
            num_bins=num_bins,
            num_quantized_bins=128,
            percentile=percentile,
            scenario="same",
        )
    for start in range(0, len(arr), batch_size):
        batch = arr[start : start + batch_size]
        values = dict(zip(names, session.run(None, {INPUT_NAME: batch}), strict=False))
        values[INPUT_NAME] = batch
        got = {t: values[t] for t in wanted if t in values}
        if collector is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                collector.collect({t: [v] for t, v in got.items()})
        else:
            for t, v in got.items():
                lo[t] = min(lo[t], float(v.min()))
                hi[t] = max(hi[t], float(v.max()))
    if collector is None:
        return {
            t: TensorData(lowest=np.array(lo[t], dtype=np.float32), highest=np.array(hi[t], dtype=np.float32))
            for t in wanted
            if np.isfinite(lo[t])
        }
    with contextlib.redirect_stdout(io.StringIO()):
        result = collector.compute_collection_result()
    out: dict[str, TensorData] = {}
    for t, value in result.items():
        if isinstance(value, TensorData):
            out[t] = value
        else:
            out[t] = TensorData(
                lowest=np.asarray(value[0], dtype=np.float32), highest=np.asarray(value[1], dtype=np.float32)
            )
    return out


def _useful_glue(proto: onnx.ModelProto, convs: set[str], roles: Iterable[str]) -> set[str]:
    """Glue ops (``GLUE_OPS`` in the quantized roles) that sit between quantized convs: every activation
    input comes from a quantized conv or such a glue op, and some path of glue ops leads on to a quantized
    conv. Quantizing others (a stack of the students' outputs feeding the float distance, say) would add
    quantization points the torch graph does not have and win no integer kernel."""
    roles = set(roles)
    inits = {t.name for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    candidates = [n for n in proto.graph.node if n.op_type in GLUE_OPS and role_of_onnx_name(n.name) in roles]
    fed: set[str] = set()  # inputs all quantized (nodes are in topological order)
    for n in candidates:
        acts = [
            i for i in n.input if i and i not in inits and not (i in producers and producers[i].op_type == "Constant")
        ]
        if n.op_type in ("Resize", "Pad"):
            acts = acts[:1]  # roi / scales / sizes are not activations
        if acts and all(i in producers and (producers[i].name in convs or producers[i].name in fed) for i in acts):
            fed.add(n.name)
    useful: set[str] = set()
    for n in reversed([c for c in candidates if c.name in fed]):
        if any(c.name in convs or c.name in useful for o in n.output for c in consumers.get(o, [])):
            useful.add(n.name)
    return useful


def onnx_scope_plan(proto: onnx.ModelProto, graph: ModelGraph, conv_map: dict[str, str]) -> dict[str, Any]:
    """Which ONNX nodes to quantize: the torch-quantized convs plus glue ops inside the quantized scope."""
    quant = graph.state.quant
    roles = SCOPES.get(quant.scope if quant else "student", ("student",))
    kept = set(graph.state.kept_fp)
    quantized = set(quantized_layers(graph)) - kept
    enabled: set[str] = set()
    for name in quantized:
        conv = graph.module(name)
        wq = weight_quantizer(conv)
        iq = getattr(conv, "input_quantizer", None)
        if iq is not None and iq.enabled and bool(iq.calibrated) and (wq is None or wq.enabled):
            enabled.add(name)
    convs_q: set[str] = set()
    convs_fp: list[str] = []
    for node in proto.graph.node:
        if node.op_type == "Conv":
            module = conv_map.get(node.name)
            if module is not None and module in enabled:
                convs_q.add(node.name)
            else:
                convs_fp.append(node.name)
    glue = _useful_glue(proto, convs_q, roles)
    to_quantize = [n.name for n in proto.graph.node if n.name in convs_q or n.name in glue]
    excluded = [n.name for n in proto.graph.node if n.name not in set(to_quantize)]
    return {
        "roles": list(roles),
        "nodes_to_quantize": to_quantize,
        "nodes_to_exclude": excluded,
        "convs_quantized": [n for n in to_quantize if n in conv_map],
        "convs_fp": convs_fp,
        "kept_fp": sorted(kept),
    }


def activation_overrides(
    proto: onnx.ModelProto, graph: ModelGraph, conv_map: dict[str, str], conv_nodes: Iterable[str]
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """``TensorQuantOverrides`` giving each quantized conv's input tensor the torch quantizer's scale and
    zero point, and each weight the torch weight quantizer's scales. Returns ``(overrides, conflicts)``."""
    nodes = {n.name: n for n in proto.graph.node}
    overrides: dict[str, list[dict[str, Any]]] = {}
    conflicts: list[str] = []
    for node_name in conv_nodes:
        node = nodes[node_name]
        conv = graph.module(conv_map[node_name])
        iq = conv.input_quantizer
        if iq.scheme.symmetric or iq.scheme.bits != 8:
            raise TargetError(
                f"{conv_map[node_name]}: the CPU target runs asymmetric uint8 activations; this graph's "
                "quantizers are symmetric int8 (a TensorRT pipeline?)"
            )
        scale, zero = iq.qparams()
        entry = {
            "quant_type": QuantType.QUInt8,
            "scale": np.array(scale.item(), dtype=np.float32),
            "zero_point": np.array(int(zero.item()), dtype=np.uint8),
        }
        wq = weight_quantizer(conv)
        if wq is not None and wq.enabled and bool(wq.calibrated) and node.input[1] not in overrides:
            overrides[node.input[1]] = _weight_override(wq)
        tensor = node.input[0]
        previous = overrides.get(tensor)
        if previous is not None:
            if (
                not np.isclose(previous[0]["scale"], entry["scale"], rtol=1e-3)
                or previous[0]["zero_point"] != entry["zero_point"]
            ):
                conflicts.append(tensor)
            continue
        overrides[tensor] = [entry]
    return overrides, conflicts


def _weight_override(wq: Any) -> list[dict[str, Any]]:
    """The torch weight quantizer's symmetric scales as int8 overrides (per channel on axis 0, or per
    tensor). 4-bit weights keep their 4-bit grid (``amax / 7``), stored in int8: the artifact computes
    what the fake-quant graph computes, with 8-bit integer kernels."""
    scale, _ = wq.qparams()
    scales = scale.detach().reshape(-1).numpy().astype(np.float32)
    if wq.scheme.per_channel_axis is None:
        return [{"quant_type": QuantType.QInt8, "scale": scales[0], "zero_point": np.array(0, dtype=np.int8)}]
    axis = int(wq.scheme.per_channel_axis)
    return [
        {
            "quant_type": QuantType.QInt8,
            "axis": axis,
            "scale": np.array(v, dtype=np.float32),
            "zero_point": np.array(0, dtype=np.int8),
        }
        for v in scales
    ]


def keep_float_consumers(proto: onnx.ModelProto, quantized_nodes: Iterable[str]) -> int:
    """Wire consumers that are not quantized nodes back from a DequantizeLinear output to the float tensor
    that went into its QuantizeLinear; drop Q/DQ pairs left without consumers. Returns the rewired count."""
    quantized = set(quantized_nodes)
    producers = {o: n for n in proto.graph.node for o in n.output}
    graph_outputs = {o.name for o in proto.graph.output}
    rewired = 0
    for dq in [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        if dq.output[0] in graph_outputs:
            continue
        for node in proto.graph.node:
            if node is dq or node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            for i, name in enumerate(node.input):
                if name == dq.output[0]:
                    node.input[i] = source
                    rewired += 1
    # remove dead Q/DQ chains
    changed = True
    while changed:
        changed = False
        used = {i for n in proto.graph.node for i in n.input} | graph_outputs
        for node in list(proto.graph.node):
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in node.output):
                proto.graph.node.remove(node)
                changed = True
    used = {i for n in proto.graph.node for i in n.input}
    for init in list(proto.graph.initializer):
        if init.name not in used:
            proto.graph.initializer.remove(init)
    return rewired


def compact_qdq_initializers(proto: onnx.ModelProto) -> dict[str, int]:
    """Drop what an INT8 QDQ model stores twice, without changing a single output value:

    - all-zero zero points of constant (weight and bias) DequantizeLinear nodes: an absent zero point is 0;
    - each conv's per-channel int32-bias scale, which ORT sets to ``input_scale * weight_scale``: a ``Mul``
      of the two stored scales computes it (ONNX Runtime folds it back into a constant at load time).

    Saves 9 bytes per output channel, which matters for depthwise-heavy students (EfficientNet-Lite).
    Works in place.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}

    def value(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    zero_points = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or len(node.input) < 3:
            continue
        if node.input[2] in inits and not np.any(value(node.input[2])):
            del node.input[2]
            zero_points += 1
    bias_scales = 0
    new_nodes = []
    for conv in proto.graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 3:
            continue
        dqs = [producers.get(i) for i in conv.input[:3]]
        if any(d is None or d.op_type != "DequantizeLinear" for d in dqs):
            continue
        x_scale, w_scale, b_scale = (d.input[1] for d in dqs)  # type: ignore[union-attr]
        if not all(n in inits for n in (x_scale, w_scale, b_scale)):
            continue
        derived = value(x_scale).astype(np.float32) * value(w_scale).astype(np.float32)
        if derived.shape != value(b_scale).shape or not np.array_equal(derived, value(b_scale)):
            continue
        out = f"{conv.name}_bias_scale"
        new_nodes.append(onnx.helper.make_node("Mul", [x_scale, w_scale], [out], name=f"{conv.name}_bias_scale"))
        dqs[2].input[1] = out  # type: ignore[union-attr]
        bias_scales += 1
    for i, node in enumerate(new_nodes):
        proto.graph.node.insert(i, node)
    used = {i for n in proto.graph.node for i in n.input}
    for init in list(proto.graph.initializer):
        if init.name not in used:
            proto.graph.initializer.remove(init)
    return {"zero_points_dropped": zero_points, "bias_scales_derived": bias_scales}


def _torch_ranges(
    graph: ModelGraph, conv_map: dict[str, str], conv_nodes: Iterable[str], proto: onnx.ModelProto
) -> dict[str, TensorData]:
    """The torch input quantizers' ``[amin, amax]`` of each quantized conv's input tensor."""
    nodes = {n.name: n for n in proto.graph.node}
    out: dict[str, TensorData] = {}
    for node_name in conv_nodes:
        iq = graph.module(conv_map[node_name]).input_quantizer
        lo = min(float(iq.amin.min()), 0.0)
        hi = max(float(iq.amax.max()), 0.0)
        out.setdefault(
            nodes[node_name].input[0],
            TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32)),
        )
    return out


def quantize_ort_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    graph: ModelGraph,
    conv_map: dict[str, str],
    calib_images: Any,
    *,
    use_torch_ranges: bool = True,
    float_consumers: bool = True,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Quantize the FP32 ONNX at ``fp32_path`` to a QDQ INT8 model at ``out_path``; returns notes.

    Steps: pick ORT's calibrator for the graph's method; plan which nodes to quantize; gather the ranges
    (the torch quantizers' for conv inputs, ORT's for the rest); run ``quantize_static`` on them; wire float
    consumers back and compact the initializers; save."""
    method_name, method, percentile = _ort_calibrator(graph)
    proto = onnx.load(str(fp32_path))
    plan = onnx_scope_plan(proto, graph, conv_map)
    if not plan["convs_quantized"]:
        raise TargetError("no calibrated quantized conv found in the graph: run insert_fake_quant and calibrate first")
    overrides, conflicts = (
        activation_overrides(proto, graph, conv_map, plan["convs_quantized"]) if use_torch_ranges else ({}, [])
    )
    data, ort_calibrated = _tensor_ranges(
        fp32_path, proto, graph, conv_map, plan, calib_images, method, percentile, batch_size
    )
    qproto = _quantize_static_qdq(fp32_path, proto, plan, data, overrides)
    rewired = keep_float_consumers(qproto, plan["nodes_to_quantize"]) if float_consumers else 0
    compacted = compact_qdq_initializers(qproto)
    onnx.checker.check_model(qproto)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(qproto, str(out))
    return {
        "format": "QDQ",
        "activations": "uint8 asymmetric (per tensor)",
        "weights": "int8 symmetric per channel (axis 0)",
        "ort_calibration": method.name + (f" ({percentile}%)" if method == CalibrationMethod.Percentile else ""),
        "ort_calibration_note": (
            "conv inputs use the torch quantizers' scale/zero point (TensorQuantOverrides); ORT calibrates "
            "only the other tensors its integer kernels need"
            + ("; 'mse' maps to MinMax (ORT has no MSE calibrator)" if method_name == "mse" else "")
        ),
        "convs_quantized": len(plan["convs_quantized"]),
        "convs_fp": len(plan["convs_fp"]),
        "glue_ops_quantized": len(plan["nodes_to_quantize"]) - len(plan["convs_quantized"]),
        "overridden_tensors": len(overrides),
        "override_conflicts": conflicts,
        "float_consumers_rewired": rewired,
        **compacted,
        "calibration_samples": int(len(calib_images)),
        "ort_calibrated_tensors": ort_calibrated,
    }


def _ort_calibrator(graph: ModelGraph) -> tuple[str, CalibrationMethod, float]:
    """``(anomopt method name, ORT calibrator, percentile)`` for the graph's calibration record."""
    calibration = graph.state.calibration
    method_name = calibration.method if calibration else "max"
    if method_name not in CALIBRATION_METHODS:
        raise TargetError(f"no ONNX Runtime calibrator for method {method_name!r}")
    percentile = float((calibration.percentile if calibration else None) or 99.99)
    return method_name, CALIBRATION_METHODS[method_name], percentile


def _tensor_ranges(
    fp32_path: str | os.PathLike[str],
    proto: onnx.ModelProto,
    graph: ModelGraph,
    conv_map: dict[str, str],
    plan: dict[str, Any],
    calib_images: Any,
    method: CalibrationMethod,
    percentile: float,
    batch_size: int,
) -> tuple[TensorsData, int]:
    """Ranges of every float tensor a quantized node reads or writes: the torch quantizers' for conv
    inputs, ONNX Runtime's (``method``, over ``calib_images``) for the others. Returns the ranges and how
    many tensors ORT calibrated."""
    quantized_names = set(plan["nodes_to_quantize"])
    initializers = {i.name for i in proto.graph.initializer}
    floats = _float_tensors(proto)
    needed = [
        t
        for n in proto.graph.node
        if n.name in quantized_names
        for t in list(n.input) + list(n.output)
        if t and t not in initializers and t in floats
    ]
    needed = list(dict.fromkeys(needed))
    ranges = _torch_ranges(graph, conv_map, plan["convs_quantized"], proto)
    to_collect = [t for t in needed if t not in ranges]
    collected = collect_ranges(
        fp32_path, calib_images, to_collect, method, percentile=percentile, batch_size=batch_size
    )
    missing = [t for t in to_collect if t not in collected]
    if missing:
        raise TargetError(f"ONNX Runtime calibration saw no values for {missing[:3]}")
    return TensorsData(method, {**{t: ranges[t] for t in needed if t in ranges}, **collected}), len(to_collect)


def _quantize_static_qdq(
    fp32_path: str | os.PathLike[str],
    proto: onnx.ModelProto,
    plan: dict[str, Any],
    data: TensorsData,
    overrides: dict[str, list[dict[str, Any]]],
) -> onnx.ModelProto:
    """ONNX Runtime's ``quantize_static`` (QDQ, U8S8, per channel) over the planned nodes, fed the given
    ranges as its calibration cache (it calibrates nothing itself); returns the quantized model."""
    op_types = sorted({n.op_type for n in proto.graph.node if n.name in set(plan["nodes_to_quantize"])})
    with work_dir("anomopt-ort-") as tmp:
        cache = Path(tmp) / "calibration.json"
        save_tensors_data(data, cache)
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "TensorQuantOverrides": overrides}
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(fp32_path),
                    str(Path(tmp) / "qdq.onnx"),
                    calibration_data_reader=None,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types,
                    per_channel=True,
                    reduce_range=False,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_quantize=plan["nodes_to_quantize"],
                    nodes_to_exclude=plan["nodes_to_exclude"],
                    calibrate_method=data.calibration_method,
                    extra_options=extra,
                    calibration_cache_path=str(cache),
                )
        except Exception as err:
            raise TargetError(f"ONNX Runtime quantization failed: {type(err).__name__}: {str(err)[:300]}") from err
        finally:
            logging.getLogger().setLevel(level)
        return onnx.load(str(Path(tmp) / "qdq.onnx"))


def optimized_graph(
    onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None, level: str = "extended"
) -> onnx.ModelProto:
    """ONNX Runtime's optimized form of a model (what the CPU execution provider runs)."""
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level not in levels:
        raise TargetError(f"optimization level must be one of {', '.join(levels)}, not {level!r}")
    with work_dir("anomopt-opt-") as tmp:
        target = Path(out_path) if out_path else Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = str(target)
        so.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        return onnx.load(str(target))


def integer_kernel_counts(onnx_path: str | os.PathLike[str], level: str = "extended") -> dict[str, Any]:
    """Count the integer kernels in ONNX Runtime's optimized graph of ``onnx_path``.

    Returns ``ops`` (op type -> count), ``integer_convs`` (QLinearConv / ConvInteger), ``float_convs``
    (Conv and fused float convs), per-role counts ``{"student": {"integer": i, "float": f}, ...}`` from the
    scope names ORT keeps on fused nodes, ``qlinear_other`` (other ``QLinear*`` kernels) and leftover
    ``QuantizeLinear`` / ``DequantizeLinear`` counts.
    """
    proto = optimized_graph(onnx_path, level=level)
    ops = Counter(n.op_type for n in proto.graph.node)
    by_role: dict[str, dict[str, int]] = {}
    integer_convs = float_convs = 0
    for n in proto.graph.node:
        is_int = n.op_type in ("QLinearConv", "ConvInteger")
        is_float = n.op_type in ("Conv", "FusedConv", "NhwcFusedConv")
        if not (is_int or is_float):
            continue
        integer_convs += is_int
        float_convs += is_float
        entry = by_role.setdefault(role_of_onnx_name(n.name), {"integer": 0, "float": 0})
        entry["integer" if is_int else "float"] += 1
    return {
        "level": level,
        "ops": dict(sorted(ops.items())),
        "integer_convs": integer_convs,
        "float_convs": float_convs,
        "by_role": by_role,
        "qlinear_other": sum(c for op, c in ops.items() if op.startswith("QLinear") and op != "QLinearConv"),
        "integer_ops": sum(c for op, c in ops.items() if op in INTEGER_OPS or op.startswith("QLinear")),
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
    }


FP32_FILE = "model_fp32.onnx"  # the FP32 export an INT8 model is quantized from (kept with keep_fp32_onnx)


@register_backend
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU: the FP32 ONNX (FP32), or its static INT8 QDQ form (INT8).

    Options: ``float_consumers`` (wire float consumers of quantized tensors back to the float tensor),
    ``use_torch_ranges`` (conv inputs get the torch quantizers' scale and zero point), ``keep_fp32_onnx``
    (also keep the FP32 ONNX an INT8 model was quantized from, as ``model_fp32.onnx``, listed in the
    artifact's files and in the record as ``fp32_model``; for FP32, ``fp32_model`` is ``model.onnx``)."""

    runtime = "onnxruntime"
    description = "ONNX Runtime (CPU): FP32 ONNX, or static INT8 QDQ (uint8 activations x int8 weights)"

    @dataclass
    class Options:
        use_torch_ranges: bool = option(True, "CPU INT8: conv inputs take the torch quantizers' ranges")
        float_consumers: bool = option(True, "CPU INT8: float consumers read the unquantized tensor, as in torch")
        keep_fp32_onnx: bool = option(
            False, "CPU INT8: also keep the FP32 ONNX it was quantized from (model_fp32.onnx, an FP32 baseline)"
        )

    def lower(self, job: LoweringJob) -> Lowered:
        if job.options["backend"] != "onnx":
            raise TargetError(
                f"lower: backend {job.options['backend']!r} needs a Jetson target (xavier_nx, orin), "
                f"not {job.target.name}"
            )
        if job.quantizer == "modelopt":
            raise TargetError(
                "a ModelOpt-quantized graph lowers to TensorRT explicit quantization only "
                "(xavier_nx / orin, trt_quantization='explicit')"
            )
        job.say(f"lower: exporting the FP32 ONNX graph (opset {job.opset})")
        fp32 = export_onnx(job.graph, job.work / FP32_FILE, opset=job.opset)
        notes: dict[str, Any] = {"export": fp32.notes}
        files, record = [MODEL_FILE], {}
        if job.quantized:
            notes.update(self._quantize(job, fp32.path, fp32.conv_map))
            if job.options["keep_fp32_onnx"]:  # the FP32 lowering of the same graph, for a baseline
                shutil.move(fp32.path, job.out / FP32_FILE)
                files.append(FP32_FILE)
                record["fp32_model"] = str(job.out / FP32_FILE)
        else:
            shutil.copyfile(fp32.path, job.model_path)
            if job.options["keep_fp32_onnx"]:
                record["fp32_model"] = str(job.model_path)
        return Lowered(files=files, runner="onnxruntime CPU (the artifact itself)", notes=notes, record=record)

    @staticmethod
    def _quantize(job: LoweringJob, fp32_path: Path, conv_map: dict[str, str]) -> dict[str, Any]:
        """Static INT8 QDQ from the FP32 ONNX, then the integer kernels ORT really runs (notes)."""
        if job.calib_images is None:
            raise TargetError("CPU INT8 lowering needs calibration images")
        job.say(f"lower: ONNX Runtime static INT8 (QDQ) from {len(job.calib_images)} calibration images")
        quantization = quantize_ort_int8(
            fp32_path,
            job.model_path,
            job.graph,
            conv_map,
            job.calib_images,
            use_torch_ranges=bool(job.options["use_torch_ranges"]),
            float_consumers=bool(job.options["float_consumers"]),
        )
        job.say("lower: counting the integer kernels in ONNX Runtime's optimized graph")
        kernels = integer_kernel_counts(job.model_path)
        return {
            "quantization": quantization,
            "integer_kernels": {k: kernels[k] for k in ("integer_convs", "float_convs", "by_role", "qlinear_other")},
        }
