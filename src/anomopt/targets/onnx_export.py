"""Export a KD model (or a :class:`ModelGraph`) to ONNX, FP32 or with its fake quantizers as Q/DQ.

- Legacy TorchScript exporter (``dynamo=False``: the path the fake quantizers export through), opset from
  the target spec (at least 13, needed for per-channel QuantizeLinear).
- One input ``images`` ``[N, 3, H, W]`` float32 in [0, 1] with a dynamic batch; outputs ``score`` ``[N]``
  and ``anomaly_map`` ``[N, 1, H, W]``. The head (upsampling, blur, max) is exported as it is: FP32.
- FP32 export switches every :class:`FakeQuantizer` off for the duration; ``fake_quant=True`` keeps them,
  so calibrated quantizers become QuantizeLinear/DequantizeLinear pairs (weights: per channel, axis 0).
- Cleaned with onnx-graphsurgeon: constants folded (DequantizeLinear is never folded, so weights stay
  int8 + DQ), zero ``Pad`` nodes fused into the following ``Conv``, dead nodes removed, topological order.
- :func:`conv_module_map` maps every ONNX ``Conv`` back to its torch module name, from the exporter's
  scope names, checked against the module's weight shape (falls back to execution order when a name
  is missing), so lowering can exclude layers by name.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from anomopt.errors import TargetError
from anomopt.quant.attach import fake_quantizers, quantizers_disabled

INPUT_NAME = "images"
SCORE_NAME = "score"
MAP_NAME = "anomaly_map"
MIN_OPSET = 13
ROLE_PREFIXES = {"teacher": ("/teacher/", "/backbone/"), "student": ("/student/",), "head": ("/head/",)}


@dataclass
class OnnxExport:
    """What one export produced."""

    path: Path
    opset: int
    fake_quant: bool
    image_size: int
    conv_map: dict[str, str] = field(default_factory=dict)  # ONNX Conv node name -> torch module name
    notes: dict[str, Any] = field(default_factory=dict)


def role_of_onnx_name(name: str) -> str:
    """The role (teacher / student / head / other) of an ONNX node or tensor from its scope name."""
    for role, prefixes in ROLE_PREFIXES.items():
        if name.startswith(prefixes):
            return role
    return "other"


def _model_of(obj: Any) -> nn.Module:
    return obj.model if hasattr(obj, "model") and isinstance(obj.model, nn.Module) else obj


def export_onnx(
    graph_or_model: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    fake_quant: bool = False,
    image_size: int | None = None,
    clean: bool = True,
) -> OnnxExport:
    """Export ``graph_or_model`` (a ModelGraph or KDModel) to ``path``; returns an :class:`OnnxExport`."""
    model = _model_of(graph_or_model)
    if opset < MIN_OPSET:
        raise TargetError(f"ONNX opset {opset} is too old: anomopt exports opset {MIN_OPSET} or newer")
    size = int(image_size or getattr(getattr(model, "config", None), "image_size", 0) or 0)
    if size <= 0:
        raise TargetError("cannot tell the model's input size; pass image_size=")
    quantizers = fake_quantizers(model)
    if fake_quant and not any(q.enabled and bool(q.calibrated) for q in quantizers):
        raise TargetError("fake_quant=True export needs calibrated fake quantizers (run insert_fake_quant + calibrate)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, 3, size, size)
    was_training = model.training
    model.eval()
    ctx = contextlib.nullcontext() if fake_quant else quantizers_disabled(model)
    try:
        with ctx, torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(out),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[SCORE_NAME, MAP_NAME],
                dynamic_axes={INPUT_NAME: {0: "N"}, SCORE_NAME: {0: "N"}, MAP_NAME: {0: "N"}},
                do_constant_folding=True,
            )
    except Exception as err:  # the exporter raises many types
        raise TargetError(f"ONNX export failed: {type(err).__name__}: {str(err)[:300]}") from err
    finally:
        model.train(was_training)
    proto = onnx.load(str(out))
    notes: dict[str, Any] = {}
    if clean:
        proto, notes = clean_onnx(proto)
    onnx.save(proto, str(out))
    conv_map = conv_module_map(proto, model)
    return OnnxExport(path=out, opset=opset, fake_quant=fake_quant, image_size=size, conv_map=conv_map, notes=notes)


def clean_onnx(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Fold constants (never DequantizeLinear), fuse zero Pads into Convs, remove dead nodes, toposort."""
    import onnx_graphsurgeon as gs

    before = len(proto.graph.node)
    current = proto
    fused = 0
    for _ in range(8):  # folding exposes static shapes, which lets the next round fold more
        count = len(current.graph.node)
        graph = gs.import_onnx(onnx.shape_inference.infer_shapes(current))
        graph.toposort()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph.fold_constants(should_exclude_node=lambda node: node.op == "DequantizeLinear")
        graph.cleanup(remove_unused_graph_inputs=False)
        fused += _fuse_pad_into_conv(graph)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        current = gs.export_onnx(graph)
        if len(current.graph.node) == count:
            break
    cleaned = current
    weights_folded = fold_weight_quantizers(cleaned)
    del cleaned.opset_import[:]
    cleaned.opset_import.extend(proto.opset_import)
    cleaned.ir_version = proto.ir_version
    cleaned = onnx.shape_inference.infer_shapes(cleaned)
    onnx.checker.check_model(cleaned)
    return cleaned, {
        "nodes_before": before,
        "nodes_after": len(cleaned.graph.node),
        "pads_fused": fused,
        "weight_quantizers_folded": weights_folded,
    }


def fold_weight_quantizers(proto: onnx.ModelProto) -> int:
    """Replace ``QuantizeLinear(constant weight)`` by its int8/uint8 result, so weights are stored as
    8-bit initializers feeding a DequantizeLinear (what TensorRT and ONNX Runtime expect). In place."""
    inits = {t.name: t for t in proto.graph.initializer}
    consts = {}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    consumers: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    folded = 0
    for node in list(proto.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        x = value(node.input[0])
        scale = value(node.input[1])
        zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if x is None or scale is None or zp is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * x.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = scale.size
        s_ = scale.reshape(shape).astype(np.float32)
        z_ = zp.reshape(shape).astype(np.int32)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(x.astype(np.float32) / s_) + z_, info.min, info.max).astype(zp.dtype)
        out_name = node.output[0]
        proto.graph.node.remove(node)
        proto.graph.initializer.append(numpy_helper.from_array(q, out_name))
        folded += 1
        if consumers.get(node.input[0], 0) <= 1:
            proto.graph.initializer.remove(inits.pop(node.input[0]))
    return folded


def _fuse_pad_into_conv(graph: Any) -> int:
    """Fold constant zero ``Pad`` nodes that only pad H and W into the ``pads`` of the Conv they feed."""
    import onnx_graphsurgeon as gs

    fused = 0
    for node in list(graph.nodes):
        if node.op != "Conv" or not node.inputs:
            continue
        pad = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if pad is None or pad.op != "Pad" or len(pad.outputs[0].outputs) != 1:
            continue
        if pad.attrs.get("mode", "constant") not in ("constant", b"constant"):
            continue
        if len(pad.inputs) < 2 or not isinstance(pad.inputs[1], gs.Constant):
            continue
        if len(pad.inputs) > 2 and pad.inputs[2] is not None and getattr(pad.inputs[2], "name", ""):
            value = pad.inputs[2]
            if not isinstance(value, gs.Constant) or np.any(value.values != 0):
                continue
        if len(pad.inputs) > 3 and getattr(pad.inputs[3], "name", ""):
            continue  # explicit axes: leave it
        pads = [int(v) for v in np.asarray(pad.inputs[1].values).ravel()]
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or any(p < 0 for p in pads):
            continue
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            continue
        conv_pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
        # ONNX Pad: [x1_begin, x2_begin, x3_begin, x4_begin, x1_end, ...];
        # Conv: [h_begin, w_begin, h_end, w_end]
        node.attrs["pads"] = [
            conv_pads[0] + pads[2],
            conv_pads[1] + pads[3],
            conv_pads[2] + pads[6],
            conv_pads[3] + pads[7],
        ]
        node.inputs[0] = pad.inputs[0]
        pad.outputs.clear()
        fused += 1
    return fused


def _module_name_from_scope(node_name: str) -> str | None:
    """``/student/bottleneck/down1/down1.0/down1.0.0/Conv`` -> ``student.bottleneck.down1.0.0``.

    The legacy exporter writes one scope component per module; children of containers repeat their
    parent's name with ``.index`` appended, so such a component replaces its parent's.
    """
    if not node_name.startswith("/"):
        return None
    parts = node_name.strip("/").split("/")[:-1]
    if not parts:
        return None
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def _conv_modules(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _weight_shape(
    proto: onnx.ModelProto,
    node: onnx.NodeProto,
    producers: dict[str, onnx.NodeProto],
    inits: dict[str, onnx.TensorProto],
) -> tuple[int, ...] | None:
    name = node.input[1]
    for _ in range(3):  # through DequantizeLinear / QuantizeLinear on the weight
        if name in inits:
            return tuple(inits[name].dims)
        prod = producers.get(name)
        if prod is None or prod.op_type not in ("DequantizeLinear", "QuantizeLinear", "Identity"):
            return None
        name = prod.input[0]
    return None


def conv_module_map(proto: onnx.ModelProto, model: nn.Module) -> dict[str, str]:
    """ONNX Conv node name -> torch ``nn.Conv2d`` module name, verified by weight shape.

    Scope names come first; Convs without a usable scope name are matched to the remaining torch
    convs in execution order (by shape). Convs that are not modules (the head's blur) are absent.
    """
    convs = _conv_modules(model)
    inits = {t.name: t for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    mapping: dict[str, str] = {}
    unmatched: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        shape = _weight_shape(proto, node, producers, inits)
        name = _module_name_from_scope(node.name)
        module = convs.get(name) if name else None
        if module is not None and (shape is None or tuple(module.weight.shape) == shape):
            mapping[node.name] = name  # type: ignore[assignment]
        elif name is None or role_of_onnx_name(node.name) != "head":
            unmatched.append(node)
    if unmatched:
        order = _execution_order(model)
        remaining = [n for n in order if n in convs and n not in set(mapping.values())]
        for node in unmatched:
            shape = _weight_shape(proto, node, producers, inits)
            for cand in remaining:
                if shape is None or tuple(convs[cand].weight.shape) == shape:
                    mapping[node.name] = cand
                    remaining.remove(cand)
                    break
    return mapping


def _execution_order(model: nn.Module) -> list[str]:
    """Torch conv module names in the order a forward pass runs them."""
    order: list[str] = []
    handles = []
    for name, m in _conv_modules(model).items():
        handles.append(m.register_forward_pre_hook(lambda _m, _a, _n=name: order.append(_n)))
    size = int(getattr(getattr(model, "config", None), "image_size", 64))
    try:
        with torch.no_grad(), quantizers_disabled(model):
            model.eval()
            model(torch.rand(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    seen: dict[str, None] = {}
    for n in order:
        seen.setdefault(n, None)
    return list(seen)


def initializer_bytes_by_role(proto: onnx.ModelProto) -> dict[str, int]:
    """Bytes of weights (initializers) per role: an initializer belongs to the role of the nodes that
    consume it, following DequantizeLinear/QuantizeLinear chains (unnamed Q/DQ nodes of a quantizer)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def roles_of(tensor: str, depth: int = 0) -> set[str]:
        out: set[str] = set()
        for c in consumers.get(tensor, []):
            role = role_of_onnx_name(c.name)
            if role == "other" and c.op_type in ("DequantizeLinear", "QuantizeLinear", "Identity") and depth < 4:
                out |= roles_of(c.output[0], depth + 1)
            else:
                out.add(role)
        return out

    sizes: dict[str, int] = {"teacher": 0, "student": 0, "head": 0, "other": 0}
    for t in proto.graph.initializer:
        nbytes = int(numpy_helper.to_array(t).nbytes)
        roles = roles_of(t.name)
        role = next(iter(roles)) if len(roles) == 1 else "other"
        sizes[role] += nbytes
    return sizes
