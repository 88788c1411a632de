"""Calibrate: activation ranges from normal training images, random-normal noise, or both.

Methods: ``max`` | ``percentile`` (with ``percentile``) | ``entropy`` (KL, as TensorRT does it) | ``mse``.
Test images are never used: the context only carries calibration images built from the training split
or from noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from anomopt.errors import DataError
from anomopt.graph import CalibrationRecord, ModelGraph
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.fake_quant import quantized_layers
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass
from anomopt.quant import RangeCollector, compute_range


def _collect(
    graph: ModelGraph,
    images: torch.Tensor,
    batch: int,
    phase: str,
    collectors: dict[str, RangeCollector],
    bar: Any = None,
):
    handles = []
    for name in collectors:
        conv = graph.module(name)

        def hook(module, args, _name=name):
            c = collectors[_name]
            if phase == "minmax":
                c.observe_minmax(args[0])
            else:
                c.observe_histogram(args[0])

        # runs before the quantizing pre-hook is consulted; the quantizers are disabled meanwhile anyway
        handles.append(conv.register_forward_pre_hook(hook, prepend=True))
    try:
        graph.model.eval()
        with torch.no_grad():
            for i in range(0, len(images), batch):
                graph.model(images[i : i + batch])
                if bar is not None:
                    bar.update(1)
    finally:
        for h in handles:
            h.remove()


@register_pass
class Calibrate(Pass):
    """Set every activation quantizer's range from the calibration images."""

    name = "calibrate"
    requires = frozenset({"fake_quant"})
    provides = frozenset({"calibrated"})

    @dataclass
    class Options:
        method: str = option("max", "range estimator: max | percentile | entropy (KL) | mse")
        percentile: float = option(99.99, "the percentile kept when method = 'percentile'")
        batch_size: int = option(8, "images per calibration forward pass")

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        images = ctx.calib_images
        if images is None or len(images) == 0:
            raise DataError("calibrate: no calibration images (pass calib data, or calib_source='noise')")
        if not torch.isfinite(images).all():
            raise DataError("calibrate: the calibration batch contains NaN or Inf values")
        method = self.options.method
        percentile = self.options.percentile
        batch = self.options.batch_size
        layers = quantized_layers(graph)
        quantizers = {name: graph.module(name).input_quantizer for name in layers}
        for q in quantizers.values():
            q.enabled = False
        collectors = {name: RangeCollector(name) for name in layers}
        batches = (len(images) + batch - 1) // batch
        phases = 1 if method == "max" else 2
        ctx.log(
            f"calibrate: {method} ranges of {len(layers)} layers from {len(images)} images "
            f"({ctx.calib_source}), {phases} x {batches} batches"
        )
        bar = ctx.bar(phases * batches, "calibrate", unit="batch")
        try:
            _collect(graph, images, batch, "minmax", collectors, bar)
            if method != "max":
                for c in collectors.values():
                    c.start_histogram()
                _collect(graph, images, batch, "hist", collectors, bar)
        finally:
            bar.close()
            for q in quantizers.values():
                q.enabled = True
        clipped = 0
        for name, q in quantizers.items():
            c = collectors[name]
            lo, hi = compute_range(c, method, q.scheme.bits, q.scheme.symmetric, percentile)
            q.set_range(float(lo), float(hi))
            clipped += int(hi < c.max or lo > c.min)
        graph.state.calibration = CalibrationRecord(
            method=method,
            percentile=percentile if method == "percentile" else None,
            samples=int(len(images)),
            source=ctx.calib_source,
        )
        ctx.note(method=method, samples=int(len(images)), clipped_layers=clipped)
        return graph
