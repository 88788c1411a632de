"""Where fake quantizers sit on a model: attach them to convs, find them, switch them on or off.

Shared by the quantization passes (insert, calibrate, mixed precision, QAT) and by lowering (ONNX export,
the ONNX Runtime and TensorRT backends). Quantizers are attached without changing the module tree: a
weight parametrization and a forward pre-hook on the input (see :mod:`anomopt.quant.quantizer`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from anomopt.quant.quantizer import FakeQuantizer, QuantScheme

if TYPE_CHECKING:
    from anomopt.graph import ModelGraph

#: quantization scope -> the roles of the layers it quantizes
SCOPES = {"student": ("student",), "teacher": ("teacher",), "all": ("teacher", "student")}


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (module.input_quantizer(args[0]),) + tuple(args[1:])


def attach_quantizers(conv: nn.Conv2d, weight: QuantScheme, act: QuantScheme) -> None:
    """Give ``conv`` a weight parametrization and an input quantizer (idempotent)."""
    if getattr(conv, "input_quantizer", None) is not None:
        return
    wq = FakeQuantizer(weight, channels=conv.out_channels)
    with torch.no_grad():
        bound = conv.weight.detach().abs().amax(dim=tuple(range(1, conv.weight.dim())))
    wq.set_range(-bound, bound)
    parametrize.register_parametrization(conv, "weight", wq)
    conv.input_quantizer = FakeQuantizer(act)
    conv.register_forward_pre_hook(_quantize_input)


def weight_quantizer(conv: nn.Module) -> FakeQuantizer | None:
    """The weight quantizer of a quantized conv, if any."""
    if parametrize.is_parametrized(conv, "weight"):
        q = conv.parametrizations.weight[0]
        return q if isinstance(q, FakeQuantizer) else None
    return None


def fake_quantizers(model: nn.Module) -> list[FakeQuantizer]:
    """Every fake quantizer in ``model`` (weight parametrizations and input quantizers)."""
    return [m for m in model.modules() if isinstance(m, FakeQuantizer)]


@contextlib.contextmanager
def quantizers_disabled(model: nn.Module) -> Iterator[None]:
    """Switch every fake quantizer off for the block; restore each one's flag afterwards."""
    quantizers = fake_quantizers(model)
    flags = [q.enabled for q in quantizers]
    try:
        for q in quantizers:
            q.enabled = False
        yield
    finally:
        for q, flag in zip(quantizers, flags, strict=False):
            q.enabled = flag


def quantized_layers(graph: ModelGraph) -> list[str]:
    """Names of the layers carrying fake quantizers."""
    return list(graph.state.quantized_layers)


def set_layer_quantized(graph: ModelGraph, name: str, enabled: bool) -> None:
    """Switch one layer's weight and input quantizers on or off (mixed precision)."""
    conv = graph.module(name)
    conv.input_quantizer.enabled = enabled
    wq = weight_quantizer(conv)
    if wq is not None:
        wq.enabled = enabled


def recalibrate_weights(graph: ModelGraph) -> None:
    """Re-derive per-channel weight ranges from the current weights (after QAT steps, say)."""
    for name in quantized_layers(graph):
        conv = graph.module(name)
        wq = weight_quantizer(conv)
        if wq is None:
            continue
        w = conv.parametrizations.weight.original.detach()
        bound = w.abs().amax(dim=tuple(range(1, w.dim())))
        wq.set_range(-bound, bound)


__all__ = [
    "SCOPES",
    "attach_quantizers",
    "fake_quantizers",
    "quantized_layers",
    "quantizers_disabled",
    "recalibrate_weights",
    "set_layer_quantized",
    "weight_quantizer",
]
