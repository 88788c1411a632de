"""LatencyAwarePrecision: keep a conv in INT8 only where the target's cost model says it is faster,
Q/DQ conversions with its neighbours counted; then restore layers for accuracy as ``auto_mixed_precision``.

Runs after ``calibrate``. The FP32 graph is exported to ONNX (a temporary file) to read each conv's shape
and the tensors between convs; :func:`anomopt.cost.plan.plan_precision` picks the INT8 set from the cost
model (``cost_model``: a file written by ``anomopt profile``, default the shipped CPU model). Convs left
FP32 get their quantizers switched off and are listed in ``graph.state.kept_fp``, which the lowering
honours. With ``accuracy = true`` (default) the drift of the result against the unquantized graph is then
checked and, if over the tolerance, the most helpful INT8 layers go back to FP32
(:func:`anomopt.passes.mixed_precision.restore_for_drift`, as ``auto_mixed_precision`` does).
The pass notes list every candidate conv with its costs, choice and reason.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomopt.errors import PipelineError
from anomopt.graph import ModelGraph
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.mixed_precision import restore_for_drift
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass
from anomopt.quant.attach import SCOPES, quantized_layers, set_layer_quantized


@register_pass
class LatencyAwarePrecision(Pass):
    """Keep a conv in INT8 only where the target's cost model says it is faster (Q/DQ counted), then restore
    layers for the drift tolerance as ``auto_mixed_precision`` does."""

    name = "latency_aware_precision"
    requires = frozenset({"calibrated"})

    @dataclass
    class Options:
        cost_model: str = option("", "cost model JSON written by `anomopt profile` (empty: the shipped CPU model)")
        accuracy: bool = option(True, "then restore layers to FP until the drift tolerance holds")
        max_fp_fraction: float = option(0.25, "at most this fraction of the layers restored for accuracy")
        float_consumers: bool = option(
            True, "as the pipeline's `lower` pass: false = the head reads quantized outputs, so a tower's last "
            "conv runs as an integer conv"
        )

    def check_pipeline(self, passes: list[Pass]) -> None:
        """Its ``float_consumers`` must be the ``lower`` pass's, or the plan prices kernels ORT will not run."""
        for p in passes:
            theirs = getattr(p.options, "float_consumers", None) if p.name == "lower" else None
            if theirs is not None and bool(theirs) != self.options.float_consumers:
                raise PipelineError(
                    f"latency_aware_precision float_consumers = {str(self.options.float_consumers).lower()} but "
                    f"lower float_consumers = {str(bool(theirs)).lower()}: set both the same"
                )

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        import onnx

        from anomopt.cost.measure import conv_shapes_of_onnx
        from anomopt.cost.model import load_cost_model
        from anomopt.cost.plan import plan_precision
        from anomopt.targets.onnx_export import export_onnx

        path = self.options.cost_model
        cost = load_cost_model(path if path else None)
        kept = set(graph.state.kept_fp)
        layers = [n for n in quantized_layers(graph) if n not in kept]
        scope = graph.state.quant.scope if graph.state.quant is not None else "student"
        ctx.log(f"latency_aware_precision: planning {len(layers)} convs with the cost model of "
                f"{cost.meta.get('cpu', '?')} ({cost.meta.get('threads', '?')} threads)")
        with tempfile.TemporaryDirectory(prefix="anomopt-latprec-") as tmp:
            exp = export_onnx(graph, Path(tmp) / "fp32.onnx")
            proto = onnx.load(str(exp.path))
        shapes = conv_shapes_of_onnx(proto)
        node_of = {module: node for node, module in exp.conv_map.items()}
        candidates = [node_of[m] for m in layers if m in node_of and node_of[m] in shapes]
        plan = plan_precision(proto, shapes, candidates, cost, SCOPES.get(scope, ("student",)),
                              float_consumers=self.options.float_consumers)
        to_fp = [exp.conv_map[n] for n in candidates if n not in plan.int8]
        for name in to_fp:
            set_layer_quantized(graph, name, False)
        graph.state.kept_fp = sorted(kept | set(to_fp))
        records: list[dict[str, Any]] = [{"layer": exp.conv_map[r["node"]], **r} for r in plan.layers]
        notes: dict[str, Any] = {
            "cost_model": str(path) if path else "shipped cpu-default.json",
            "cost_model_cpu": cost.meta.get("cpu"),
            "estimate_us": {"chosen": round(plan.estimate_us, 1), "all_int8": round(plan.all_int8_us, 1),
                            "all_fp32": round(plan.all_fp32_us, 1)},
            "int8_layers": len(plan.int8),
            "fp32_for_latency": to_fp,
            "layers": records,
        }
        if self.options.accuracy and ctx.held_images is not None:
            tol = ctx.tolerance.merged(self.tolerance_override)
            still = [n for n in quantized_layers(graph) if n not in set(graph.state.kept_fp)]
            restored, drift = restore_for_drift(graph, still, ctx.held_images, tol, self.options.max_fp_fraction)
            notes["drift_vs_fp"] = drift.to_dict()
            graph.state.kept_fp = sorted(kept | set(to_fp) | set(restored))
            notes["fp32_for_accuracy"] = restored
        ctx.note(**notes)
        return graph
