"""InsertFakeQuant: fake quantizers on the weights (per channel) and inputs of every conv in scope.

The activation scheme comes from the target: asymmetric uint8 for ONNX Runtime on x86, symmetric int8
for TensorRT. Weights are symmetric per output channel (8-bit, or 4-bit as an option). Layers can be
kept in floating point by name (``keep_fp``, fnmatch patterns). Quantizers are attached without changing
the module tree: a parametrization on the weight and a forward pre-hook on the input, so the model
still trains (QAT) and exports (QuantizeLinear/DequantizeLinear pairs).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from anomopt.errors import ConfigError
from anomopt.graph import ModelGraph, QuantRecord
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass
from anomopt.quant import FakeQuantizer, QuantScheme

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


@register_pass
class InsertFakeQuant(Pass):
    """Insert fake quantizers on the weights and inputs of every conv in scope."""

    name = "insert_fake_quant"
    provides = frozenset({"fake_quant"})
    preserves = frozenset({"bn_folded", "pruned"})

    @dataclass
    class Options:
        scope: str = option("student", "which roles to quantize: student | teacher | all")
        weight_bits: int | None = option(None, "weight bits, 8 or 4 (default: the pipeline's bits)")
        act_bits: int | None = option(None, "activation bits, 8 (default: the pipeline's bits)")
        symmetric_activations: bool | None = option(
            None, "symmetric activation quantization (default: the target's scheme)"
        )
        per_channel: bool = option(True, "per-output-channel weight ranges (else one per tensor)")
        keep_fp: list[str] = option([], "layer name patterns (fnmatch) left in floating point")
    # The per-channel weight quantizers are live from insertion (their ranges come from the weights); only
    # the activation quantizers wait for `calibrate`. So the drift is measured: it is the weight-only error.

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        o = self.options
        scope = o.scope
        if scope not in SCOPES:
            raise ConfigError(f"insert_fake_quant: scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        weight_bits = ctx.bits if o.weight_bits is None else o.weight_bits
        act_bits = ctx.bits if o.act_bits is None else o.act_bits
        if weight_bits not in (4, 8) or act_bits != 8:
            raise ConfigError(f"insert_fake_quant: supports 8-bit activations and 8- or 4-bit weights, "
                              f"not weights {weight_bits} / activations {act_bits}")
        symmetric_act = _target_symmetric(ctx) if o.symmetric_activations is None else o.symmetric_activations
        per_channel = o.per_channel
        keep = list(o.keep_fp)
        wscheme = QuantScheme(weight_bits, True, 0 if per_channel else None)
        ascheme = QuantScheme(act_bits, symmetric_act, None)
        layers = []
        for node in graph.nodes_with_role(*SCOPES[scope]):
            module = graph.module(node.name)
            if not isinstance(module, nn.Conv2d) or any(fnmatch.fnmatch(node.name, pat) for pat in keep):
                continue
            if not per_channel:
                wscheme_t = QuantScheme(weight_bits, True, None)
                attach_quantizers(module, wscheme_t, ascheme)
                wq = weight_quantizer(module)
                assert wq is not None
                bound = module.parametrizations.weight.original.detach().abs().max()
                wq.set_range(-bound, bound)
            else:
                attach_quantizers(module, wscheme, ascheme)
            layers.append(node.name)
        graph.state.quantized_layers = layers
        graph.state.quant = QuantRecord(scope=scope, weight_bits=weight_bits, act_bits=act_bits,
                                        symmetric_activations=symmetric_act, per_channel=per_channel, keep_fp=keep)
        ctx.note(quantized_layers=len(layers))
        return graph


def _target_symmetric(ctx: PassContext) -> bool:
    target = ctx.target
    return bool(getattr(target, "symmetric_activations", False)) if target is not None else False
