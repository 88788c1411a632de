"""AutoMixedPrecision: keep the fewest layers in floating point needed to meet the drift tolerance.

Sensitivity analysis on the held batch: for each quantized layer, the drift of the fully quantized
model with only that layer restored to FP. Layers are restored greedily, most helpful first, until the
map and score drift (against the same graph with every quantizer off) are within tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anomopt.errors import DataError
from anomopt.graph import ModelGraph
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.drift import measure_drift
from anomopt.passes.fake_quant import quantized_layers, set_layer_quantized
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass


def _outputs(graph: ModelGraph, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    s, m = graph.run(images)
    return s.numpy(), m.numpy()


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
        layers = quantized_layers(graph)
        for name in layers:
            set_layer_quantized(graph, name, False)
        ref = _outputs(graph, held)
        for name in layers:
            set_layer_quantized(graph, name, True)

        def ok(d) -> bool:
            return d.score <= tol.max_score_drift and d.map <= tol.max_map_drift

        def cost(d) -> float:
            return d.map / max(tol.max_map_drift, 1e-12) if np.isfinite(tol.max_map_drift) else d.map

        drift = measure_drift(*_outputs(graph, held), *ref)
        kept: list[str] = []
        if not ok(drift):
            gains = []
            for name in layers:
                set_layer_quantized(graph, name, False)
                gains.append((cost(measure_drift(*_outputs(graph, held), *ref)), name))
                set_layer_quantized(graph, name, True)
            budget = max(1, int(self.options.max_fp_fraction * len(layers)))
            for _, name in sorted(gains)[:budget]:
                set_layer_quantized(graph, name, False)
                kept.append(name)
                drift = measure_drift(*_outputs(graph, held), *ref)
                if ok(drift):
                    break
        graph.state.kept_fp = kept
        ctx.note(kept_fp=kept, drift_vs_fp=drift.to_dict())
        return graph
