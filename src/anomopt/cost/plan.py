"""Choose per conv between FP32 and INT8 from a cost model, counting the Q/DQ conversions a choice adds.

The estimate of a plan (the set of convs run in INT8) on an FP32 ONNX graph:

- every candidate conv at its INT8 or FP32 cost (:meth:`CostModel.conv_us`); when the lowering keeps float
  consumers float (``lower``'s ``float_consumers``, the default), an INT8 conv whose output only float nodes
  read (the last layer before the distance) runs as a float conv on dequantized inputs in ONNX Runtime, so
  it costs its FP32 time; without, it runs as an integer conv and its output pays a ``DequantizeLinear``;
- the glue ops the lowering quantizes with them (``_useful_glue``: Add / Concat / Resize / ... between
  quantized convs) run in integer form at no extra cost;
- every tensor entering the quantized region from a float producer pays one ``QuantizeLinear`` and every
  tensor leaving it to a float consumer (or a graph output) one ``DequantizeLinear``, per element, layout
  change included.

:func:`plan_precision` starts from "all candidates INT8" and from "all FP32", improves each by single
flips (the flip that saves the most first) until no flip helps, and keeps the cheaper result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from anomopt.cost.model import ConvShape, CostModel


def tensor_elems(proto: onnx.ModelProto) -> dict[str, int]:
    """Element count of every tensor of a batch-1 ONNX model with inferable shapes."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    out: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = int(np.prod([d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]))
    return out


@dataclass
class PrecisionPlan:
    """The chosen INT8 convs, the estimates, and one record per candidate conv (choice and reason)."""

    int8: set[str]
    estimate_us: float
    all_int8_us: float
    all_fp32_us: float
    layers: list[dict[str, Any]] = field(default_factory=list)


class _Estimator:
    def __init__(self, proto: onnx.ModelProto, shapes: dict[str, ConvShape], cost: CostModel, roles: Iterable[str],
                 float_consumers: bool = True):
        from anomopt.targets.backends.onnxruntime import _useful_glue

        self.float_consumers = float_consumers
        self._glue = _useful_glue
        self.proto = proto
        self.roles = list(roles)
        self.cost = cost
        self.elems = tensor_elems(proto)
        inits = {t.name for t in proto.graph.initializer}
        self.producers = {o: n.name for n in proto.graph.node for o in n.output}
        consts = {n.output[0] for n in proto.graph.node if n.op_type == "Constant"}
        self.acts = {
            n.name: [i for i in (n.input[:1] if n.op_type in ("Resize", "Pad", "Conv") else n.input)
                     if i and i not in inits and i not in consts]
            for n in proto.graph.node
        }
        self.outs = {n.name: list(n.output) for n in proto.graph.node}
        self.consumers: dict[str, list[str]] = {}
        for n in proto.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n.name)
        self.graph_outputs = {o.name for o in proto.graph.output}
        self.fp32 = {n: cost.conv_us(s, "fp32") for n, s in shapes.items()}
        self.int8 = {n: cost.conv_us(s, "int8") for n, s in shapes.items()}

    def quantized(self, int8: set[str]) -> set[str]:
        return set(int8) | self._glue(self.proto, set(int8), self.roles)

    def float_output(self, conv: str, quantized: set[str]) -> bool:
        """A conv whose output only float nodes read has no output quantization, so ONNX Runtime runs it as
        a float conv on dequantized inputs (when the lowering keeps float consumers float)."""
        read = any(c in quantized for t in self.outs[conv] for c in self.consumers.get(t, []))
        return self.float_consumers and not read

    def conversions(self, int8: set[str]) -> tuple[float, int, int]:
        quantized = self.quantized(int8)
        q_elems = dq_elems = 0
        entering: set[str] = set()
        leaving: set[str] = set()
        for name in quantized:
            for t in self.acts[name]:
                if self.producers.get(t) not in quantized:
                    entering.add(t)
            for t in self.outs[name]:
                if t in self.graph_outputs or any(c not in quantized for c in self.consumers.get(t, [])):
                    leaving.add(t)
        q_elems = sum(self.elems.get(t, 0) for t in entering)
        dq_elems = sum(self.elems.get(t, 0) for t in leaving)
        return self.cost.quantize_us(q_elems) + self.cost.dequantize_us(dq_elems), q_elems, dq_elems

    def total(self, int8: set[str], candidates: Iterable[str]) -> float:
        quantized = self.quantized(int8)
        convs = sum(
            self.int8[c].us if c in int8 and not self.float_output(c, quantized) else self.fp32[c].us
            for c in candidates
        )
        return convs + self.conversions(int8)[0]


def _improve(est: _Estimator, start: set[str], candidates: list[str]) -> tuple[set[str], float]:
    current = set(start)
    best = est.total(current, candidates)
    while True:
        trials = []
        for c in candidates:
            flipped = current ^ {c}
            trials.append((est.total(flipped, candidates), c))
        value, c = min(trials)
        if value >= best - 1e-9:
            return current, best
        current ^= {c}
        best = value


def plan_precision(
    proto: onnx.ModelProto,
    shapes: dict[str, ConvShape],
    candidates: Iterable[str],
    cost: CostModel,
    roles: Iterable[str] = ("student",),
    float_consumers: bool = True,
) -> PrecisionPlan:
    """Which of ``candidates`` (ONNX Conv node names with a shape in ``shapes``) to run in INT8; see the
    module doc for the estimate. Each layer record says its FP32 / INT8 cost, the lookup rule, the choice
    and the change in the estimate if that one layer were flipped (the reason). ``float_consumers``: as the
    ``lower`` pass will be told (whether float nodes read a quantized conv's unquantized output)."""
    cands = [c for c in dict.fromkeys(candidates) if c in shapes]
    est = _Estimator(proto, {c: shapes[c] for c in cands}, cost, roles, float_consumers)
    all_int8, all_fp32 = est.total(set(cands), cands), est.total(set(), cands)
    a, va = _improve(est, set(cands), cands)
    b, vb = _improve(est, set(), cands)
    chosen, value = (a, va) if va <= vb else (b, vb)
    changed = True
    while changed:  # drop INT8 convs that run as float convs anyway when that costs nothing (less rounding)
        changed = False
        for c in sorted(chosen):
            if est.float_output(c, est.quantized(chosen)) and est.total(chosen - {c}, cands) <= value + 1e-9:
                chosen = chosen - {c}
                value = est.total(chosen, cands)
                changed = True
    layers = []
    for c in cands:
        flipped = est.total(chosen ^ {c}, cands) - value  # >= 0 at a local optimum
        choice = "int8" if c in chosen else "fp32"
        other = "fp32" if choice == "int8" else "int8"
        reason = f"{other} would add {flipped:.1f} us with its Q/DQ conversions"
        runs_float = choice == "int8" and est.float_output(c, est.quantized(chosen))
        if runs_float:
            reason += ("; only float nodes read its output, so it runs as a float conv on its quantized input, "
                       "which lets its producer run as an integer conv")
        layers.append({
            "node": c,
            "shape": shapes[c].key(),
            "fp32_us": round(est.fp32[c].us, 2),
            "int8_us": round(est.int8[c].us, 2),
            "rule": est.int8[c].rule,
            "choice": choice,
            "kernel": "float" if choice == "fp32" or runs_float else "integer",
            "reason": reason,
        })
    return PrecisionPlan(chosen, value, all_int8, all_fp32, layers)
