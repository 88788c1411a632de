"""FoldBatchNorm: exact folding of inference-mode BatchNorm into the convolution that feeds it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from anomopt.graph import ModelGraph
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass


def _replacement(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a folded BatchNorm: its fused activation (timm BatchNormAct2d) or nothing."""
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    if act is not None and (drop is None or isinstance(drop, nn.Identity)):
        return act
    return nn.Identity()


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


@register_pass
class FoldBatchNorm(Pass):
    """Fold every BatchNorm whose only input is a conv with no other consumer (data flow from the graph)."""

    name = "fold_batchnorm"
    forbids = frozenset({"fake_quant"})
    provides = frozenset({"bn_folded"})

    @dataclass
    class Options:
        roles: list[str] = option(["teacher", "student"], "the roles whose BatchNorms are folded")

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        roles = set(self.options.roles)
        folded = 0
        for node in list(graph.nodes):
            if node.role not in roles or "BatchNorm" not in node.op or len(node.inputs) != 1:
                continue
            bn = graph.module(node.name)
            if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or bn.running_mean is None:
                continue
            producer = node.inputs[0]
            if not producer or producer == "input":
                continue
            conv = graph.module(producer)
            if not isinstance(conv, nn.Conv2d) or len(graph.consumers(producer)) != 1:
                continue
            weight = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
            bias = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            with torch.no_grad():
                w, b = fuse_conv_bn_weights(
                    conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, weight, bias
                )
            conv.weight = nn.Parameter(w.detach(), requires_grad=conv.weight.requires_grad)
            conv.bias = nn.Parameter(b.detach(), requires_grad=conv.weight.requires_grad)
            _set_submodule(graph.model, node.name, _replacement(bn))
            folded += 1
        fresh = graph.recapture()
        ctx.note(folded=folded)
        return fresh
