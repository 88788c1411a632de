"""AutoMixedPrecision: keep the fewest layers in floating point needed to meet the drift tolerance.

Sensitivity analysis on the held batch: for each quantized layer, the drift of the fully quantized
model with only that layer restored to FP. Layers are restored greedily, most helpful first, until the
map and score drift (against the same graph with every quantizer off) are within tolerance.
:func:`restore_for_drift` does that for any set of quantized layers; ``latency_aware_precision`` calls it
on the layers its cost model left in INT8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anomopt.errors import DataError
from anomopt.graph import ModelGraph
from anomopt.passes.base import Pass, PassContext, Tolerance
from anomopt.passes.drift import Drift, measure_drift
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass
from anomopt.quant.attach import quantized_layers, set_layer_quantized


def _outputs(graph: ModelGraph, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    s, m = graph.run(images)
    return s.numpy(), m.numpy()


def restore_for_drift(
    graph: ModelGraph, layers: list[str], held: torch.Tensor, tol: Tolerance, max_fp_fraction: float
) -> tuple[list[str], Drift]:
    """Restore quantized ``layers`` to FP32, most helpful first, while the drift on ``held`` exceeds ``tol``.

    The reference is the same graph with every layer of ``layers`` unquantized (other layers as they are).
    At most ``max_fp_fraction`` of ``layers`` (at least one) go back. Returns the restored layers, in the
    order they were restored, and the drift of the result.
    """
    for name in layers:
        set_layer_quantized(graph, name, False)
    ref = _outputs(graph, held)
    for name in layers:
        set_layer_quantized(graph, name, True)

    def ok(d: Drift) -> bool:
        return d.score <= tol.max_score_drift and d.map <= tol.max_map_drift

    def cost(d: Drift) -> float:
        return d.map / max(tol.max_map_drift, 1e-12) if np.isfinite(tol.max_map_drift) else d.map

    drift = measure_drift(*_outputs(graph, held), *ref)
    restored: list[str] = []
    if not ok(drift):
        gains = []
        for name in layers:
            set_layer_quantized(graph, name, False)
            gains.append((cost(measure_drift(*_outputs(graph, held), *ref)), name))
            set_layer_quantized(graph, name, True)
        budget = max(1, int(max_fp_fraction * len(layers)))
        for _, name in sorted(gains)[:budget]:
            set_layer_quantized(graph, name, False)
            restored.append(name)
            drift = measure_drift(*_outputs(graph, held), *ref)
            if ok(drift):
                break
    return restored, drift


@register_pass
class AutoMixedPrecision(Pass):
    """Restore the fewest quantized layers to FP needed to meet ``max_score_drift`` / ``max_map_drift``
    (the tolerance keys, per pass or from the pipeline)."""

    name = "auto_mixed_precision"
    requires = frozenset({"calibrated"})

    @dataclass
    class Options:
        max_fp_fraction: float = option(0.25, "at most this fraction of the quantized layers goes back to FP")

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        held = ctx.held_images
        if held is None:
            raise DataError("auto_mixed_precision: needs a held batch of normal images")
        tol = ctx.tolerance.merged(self.tolerance_override)
        kept, drift = restore_for_drift(graph, quantized_layers(graph), held, tol, self.options.max_fp_fraction)
        graph.state.kept_fp = kept
        ctx.note(kept_fp=kept, drift_vs_fp=drift.to_dict())
        return graph
