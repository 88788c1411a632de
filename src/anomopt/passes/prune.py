"""Prune: structured channel pruning of the student, guided by the distillation loss on normal images.

How it works:

1. **Dead layers.** timm's ``features_only`` EfficientNet runs every block, including those after the last
   tapped feature; nothing the score uses depends on them, so they are cut (teacher and student; exact).
   Modules that never run at inference (Uninformed Students' pretrained ``backbone`` and the descriptor
   teacher's ``project``) are reported as droppable and dropped with ``drop_training_only=True``.
2. **Channel groups.** One traced forward pass records, for every leaf layer's output tensor, every use
   of it: by which layer, or by code outside any leaf layer (a residual add, a concat, a feature tap, the
   distance). A group starts at a conv's output channels and follows them through channel-wise layers
   (BatchNorm, activations, depthwise convs, upsampling) to the convs that consume them as input
   channels. A group is prunable only when every use is such a layer: so block outputs that feed
   residual adds, concatenated branches and tapped features (the channels matched one-to-one with the
   teacher) are never pruned, whatever the architecture. On EfficientNet-Lite this leaves the stem and
   the expansion (hidden) channels of each block; on RD the internal widths of the bottleneck and
   decoder; on US the hidden widths of the patch nets.
3. **Importance.** First-order Taylor estimate of how much removing a channel raises the distillation
   loss: for each sample, ``|sum over the group's consumers and positions of a * dL/da|`` at the
   consumers' inputs (Molchanov et al. 2017), summed over a few batches of normal training images.
4. **Selection.** Within each group keep the most important ``ceil(n * (1 - ratio))`` channels, rounded
   up to a multiple of ``round_to`` (int8 kernels like multiples of 8 or 16); ``stage_ratios`` overrides
   the ratio for groups whose producer's qualified name contains a dotted key, e.g. ``"blocks.5"``.
5. **Surgery and fine-tune.** Smaller Conv2d / BatchNorm modules (same classes, kept weights copied)
   replace the old ones, then the pruned roles train briefly on the distillation loss.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from anomopt.distill_loop import finetune_adam
from anomopt.errors import ConfigError, DataError
from anomopt.graph import ModelGraph, PrunePlan
from anomopt.graph.ir import ROLES, leaf_modules, role_of
from anomopt.models.backbones import cut_after_last_tap
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass

EXTERNAL = "<external>"  # a use by code outside any leaf layer (residual add, concat, tap, distance, output)

# Layers that act on each channel independently: a group's channels pass through them unchanged in number.
CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.Upsample,
    nn.MaxPool2d,
    nn.AvgPool2d,
)

# Tensor methods that read metadata only (shape, dtype...): not a use of the values.
_METADATA = frozenset(
    {"__get__", "size", "dim", "numel", "ndimension", "__len__", "is_floating_point", "is_contiguous",
     "data_ptr", "element_size", "__format__", "__repr__", "stride", "storage_offset", "get_device"}
)


@dataclass
class ChannelGroup:
    """Channels that must be pruned together: a conv's outputs, the layers carrying them, their consumers."""

    producer: str  # conv whose output channels are pruned
    channels: int
    members: list[str] = field(default_factory=list)  # channel-wise layers (BatchNorm, depthwise conv, ...)
    consumers: list[str] = field(default_factory=list)  # convs whose input channels follow the group

    @property
    def role(self) -> str:
        return role_of(self.producer)


@dataclass
class _Trace:
    """Leaf layers in execution order, their output tensors and who used each of them."""

    order: list[str]
    modules: dict[str, nn.Module]
    out_id: dict[str, int]
    uses: dict[int, set[str]]
    calls: dict[str, int]
    executed: set[str]


class _UseRecorder(TorchFunctionMode):
    """Attributes every torch call on a recorded tensor to the leaf layer running (or to EXTERNAL)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.produced: set[int] = set()
        self.uses: dict[int, set[str]] = defaultdict(set)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _METADATA:
            user = self.stack[-1] if self.stack else EXTERNAL
            for t in _tensors((args, kwargs)):
                if id(t) in self.produced:
                    self.uses[id(t)].add(user)
        return func(*args, **kwargs)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def trace_uses(model: nn.Module, example: torch.Tensor) -> _Trace:
    """Run ``model(example)`` once (eval, no grad) recording each leaf output's uses."""
    rec = _UseRecorder()
    leaves = leaf_modules(model)
    modules = dict(leaves)
    order: list[str] = []
    out_id: dict[str, int] = {}
    calls: dict[str, int] = defaultdict(int)
    keepalive: list[torch.Tensor] = []
    handles = []

    def pre(name: str):
        def fn(module: nn.Module, args: tuple[Any, ...]) -> None:
            rec.stack.append(name)

        return fn

    def post(name: str):
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            rec.stack.pop()
            calls[name] += 1
            if calls[name] == 1:
                order.append(name)
            if isinstance(output, torch.Tensor):
                out_id[name] = id(output)
                rec.produced.add(id(output))
                keepalive.append(output)

        return fn

    for name, module in leaves:
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), rec:
            result = model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for t in _tensors(result):  # returned as they are: used outside
        if id(t) in rec.produced:
            rec.uses[id(t)].add(EXTERNAL)
    return _Trace(order, modules, out_id, dict(rec.uses), dict(calls), set(order))


def _is_depthwise(m: nn.Module, channels: int) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.groups == m.in_channels == m.out_channels == channels
    )


def _is_plain_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == 1


def _trainable(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(w, torch.Tensor) and w.requires_grad


def _passes_channels(m: nn.Module, channels: int) -> bool:
    """Whether ``m`` carries ``channels`` channels one-to-one (so it can be sliced with the group)."""
    if isinstance(m, nn.BatchNorm2d):
        return m.num_features == channels
    if _is_depthwise(m, channels):
        return True
    return isinstance(m, CHANNELWISE)


def find_channel_groups(
    model: nn.Module, example: torch.Tensor, roles: Iterable[str] = ("student",), trace: _Trace | None = None
) -> list[ChannelGroup]:
    """Every prunable channel group whose layers all belong to ``roles`` and are trainable."""
    trace = trace or trace_uses(model, example)
    roles = set(roles)
    by_out: dict[int, list[str]] = defaultdict(list)
    for name, oid in trace.out_id.items():
        by_out[oid].append(name)
    groups = []
    for name in trace.order:
        conv = trace.modules[name]
        if role_of(name) not in roles or not _is_plain_conv(conv) or not _trainable(conv):
            continue
        if trace.calls.get(name, 0) != 1 or name not in trace.out_id:
            continue
        group = _follow(trace, name, conv.out_channels)
        if group is not None:
            groups.append(group)
    return groups


def _follow(trace: _Trace, producer: str, channels: int) -> ChannelGroup | None:
    """Walk the uses of ``producer``'s output; None when any use is not a prunable one."""
    group = ChannelGroup(producer=producer, channels=channels)
    role = role_of(producer)
    frontier = [trace.out_id[producer]]
    seen_tensors: set[int] = set()
    seen_layers: set[str] = {producer}
    while frontier:
        tid = frontier.pop()
        if tid in seen_tensors:
            continue
        seen_tensors.add(tid)
        for user in sorted(trace.uses.get(tid, ())):
            if user == EXTERNAL or role_of(user) != role or trace.calls.get(user, 0) != 1:
                return None
            if user in seen_layers:
                continue
            seen_layers.add(user)
            m = trace.modules[user]
            if _passes_channels(m, channels):
                if isinstance(m, (nn.BatchNorm2d, nn.Conv2d)) and not _trainable(m) and _has_weight(m):
                    return None
                group.members.append(user)
                if user in trace.out_id:
                    frontier.append(trace.out_id[user])
            elif _is_plain_conv(m) and m.in_channels == channels and _trainable(m):
                group.consumers.append(user)
            else:
                return None
    return group if group.consumers else None


def _has_weight(m: nn.Module) -> bool:
    return isinstance(getattr(m, "weight", None), torch.Tensor)


def kept_channels(channels: int, ratio: float, round_to: int = 1) -> int:
    """How many of ``channels`` to keep when pruning ``ratio``: ``ceil(n (1 - ratio))`` rounded up to a
    multiple of ``round_to``, at least ``round_to``, at most ``n``."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"prune ratio must be in [0, 1), not {ratio}")
    round_to = max(1, int(round_to))
    target = math.ceil(channels * (1.0 - ratio) - 1e-9)
    keep = math.ceil(target / round_to) * round_to
    return int(min(channels, max(keep, round_to)))


def ratio_for(name: str, ratio: float, stage_ratios: dict[str, float] | None) -> float:
    """The ratio for a group: the longest ``stage_ratios`` key that is a dotted fragment of ``name``."""
    best: tuple[int, float] | None = None
    padded = f".{name}."
    for key, value in (stage_ratios or {}).items():
        if f".{key.strip('.')}." in padded and (best is None or len(key) > best[0]):
            best = (len(key), float(value))
    return ratio if best is None else best[1]


def estimate_importance(
    model: nn.Module,
    groups: list[ChannelGroup],
    images: torch.Tensor,
    batch_size: int = 8,
    batches: int = 4,
) -> tuple[dict[str, torch.Tensor], float]:
    """Per-channel Taylor importance of every group, ``sum_n |sum_{consumers, h, w} a * dL/da|``, and the
    mean distillation loss over the batches used."""
    losses: list[float] = []
    importance = {g.producer: torch.zeros(g.channels, dtype=torch.float64) for g in groups}
    signed: dict[str, torch.Tensor] = {}
    owner = {c: g.producer for g in groups for c in g.consumers}
    handles = []

    def pre(consumer: str):
        def fn(module: nn.Module, args: tuple[Any, ...]):
            x = args[0]
            if not (isinstance(x, torch.Tensor) and x.requires_grad):
                return None
            alias = x.view_as(x)  # its gradient is the one flowing through this consumer only
            a = x.detach()
            key = owner[consumer]

            def grad_hook(g: torch.Tensor) -> None:
                contrib = (a * g).sum(dim=(2, 3)).double()
                signed[key] = contrib if key not in signed else signed[key] + contrib

            alias.register_hook(grad_hook)
            return (alias, *args[1:])

        return fn

    for consumer in owner:
        handles.append(model.get_submodule(consumer).register_forward_pre_hook(pre(consumer)))
    was_training = model.training
    model.eval()
    try:
        for b in range(batches):
            x = images[b * batch_size : (b + 1) * batch_size]
            if len(x) == 0:
                break
            signed.clear()
            model.zero_grad(set_to_none=True)
            loss = model.distillation_loss(x)  # type: ignore[operator]
            loss.backward()
            losses.append(float(loss.detach()))
            for key, s in signed.items():
                importance[key] += s.abs().sum(dim=0)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return importance, sum(losses) / max(1, len(losses))


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=like.requires_grad)


def _sliced_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None,
                 dw_idx: torch.Tensor | None) -> nn.Conv2d:
    """A copy of ``conv`` (same class, padding...) keeping the given output / input / depthwise channels."""
    new = copy.deepcopy(conv)
    w = conv.weight
    b = conv.bias
    if dw_idx is not None:
        new.weight = _param(w[dw_idx], w)
        if b is not None:
            new.bias = _param(b[dw_idx], b)
        new.in_channels = new.out_channels = new.groups = len(dw_idx)
        return new
    if out_idx is not None:
        w = w[out_idx]
        if b is not None:
            b = b[out_idx]
        new.out_channels = len(out_idx)
    if in_idx is not None:
        w = w[:, in_idx]
        new.in_channels = len(in_idx)
    new.weight = _param(w, conv.weight)
    if b is not None and conv.bias is not None:
        new.bias = _param(b, conv.bias)
    return new


def _sliced_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    """A copy of ``bn`` (timm BatchNormAct2d keeps its activation) on the kept channels."""
    new = copy.deepcopy(bn)
    if bn.weight is not None:
        new.weight = _param(bn.weight[idx], bn.weight)
    if bn.bias is not None:
        new.bias = _param(bn.bias[idx], bn.bias)
    if bn.running_mean is not None:
        new.running_mean = bn.running_mean[idx].clone()
    if bn.running_var is not None:
        new.running_var = bn.running_var[idx].clone()
    new.num_features = len(idx)
    return new


def apply_channel_selection(
    model: nn.Module, groups: list[ChannelGroup], keep: dict[str, torch.Tensor]
) -> None:
    """Replace the layers of every group in ``keep`` (producer -> sorted kept indices) by smaller copies."""
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    chan_idx: dict[str, torch.Tensor] = {}
    for g in groups:
        if g.producer not in keep:
            continue
        idx = keep[g.producer]
        out_idx[g.producer] = idx
        for c in g.consumers:
            in_idx[c] = idx
        for m in g.members:
            chan_idx[m] = idx
    for name in set(out_idx) | set(in_idx) | set(chan_idx):
        m = model.get_submodule(name)
        if isinstance(m, nn.BatchNorm2d):
            new: nn.Module = _sliced_bn(m, chan_idx[name])
        elif isinstance(m, nn.Conv2d):
            dw = chan_idx.get(name) if _is_depthwise(m, m.in_channels) and name in chan_idx else None
            new = _sliced_conv(m, out_idx.get(name), in_idx.get(name), dw)
        else:
            continue  # activations, upsampling...: nothing to slice
        _set_submodule(model, name, new)


def drop_dead_blocks(model: nn.Module) -> dict[str, int]:
    """Cut the blocks of every timm ``features_only`` extractor in ``model`` that run after its last tapped
    feature (:func:`anomopt.models.backbones.cut_after_last_tap`: models built now are cut already; a model
    built with timm's full block list is not).

    Returns the parameter count removed per cut module path. Outputs are unchanged (nothing uses them).
    """
    dropped: dict[str, int] = {}
    for name, m in list(model.named_modules()):
        blocks = list(m.blocks) if isinstance(getattr(m, "blocks", None), nn.Sequential) else []
        removed = cut_after_last_tap(m)
        for i in range(len(blocks) - removed, len(blocks)):
            dropped[f"{name}.blocks.{i}"] = sum(p.numel() for p in blocks[i].parameters())
    return dropped


class DroppedModule(nn.Module):
    """Stands where a training-only module was dropped; calling it explains why it is gone."""

    def __init__(self, name: str, parameters: int) -> None:
        super().__init__()
        self.dropped_name = name
        self.dropped_parameters = parameters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"{self.dropped_name!r} ({self.dropped_parameters} parameters) was dropped by the prune pass "
            "(drop_training_only=True): it is used only in training; prune without that option to keep "
            "training the model"
        )


def training_only_modules(
    model: nn.Module, example: torch.Tensor, trace: _Trace | None = None
) -> dict[str, int]:
    """Largest submodules with parameters that never run at inference (e.g. US ``backbone``), with counts."""
    executed = (trace or trace_uses(model, example)).executed
    out: dict[str, int] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            full = f"{prefix}.{child_name}" if prefix else child_name
            leaves = [f"{full}.{n}" if n else full for n, _ in leaf_modules(child)] or [full]
            n_params = sum(p.numel() for p in child.parameters())
            if isinstance(child, DroppedModule) or n_params == 0:
                continue
            if not any(leaf in executed for leaf in leaves) and full not in executed:
                out[full] = n_params
            else:
                visit(full, child)

    visit("", model)
    return out


def conv_macs(graph: ModelGraph, *roles: str) -> int:
    """Multiply-accumulates per image of the convs / linears that run, optionally only of some roles."""
    total = 0
    for n in graph.nodes:
        if (roles and n.role not in roles) or not n.is_conv or not n.out_shape:
            continue
        m = graph.module(n.name)
        out = math.prod(n.out_shape[1:])
        if isinstance(m, nn.Conv2d):
            total += out * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            total += out * m.in_features
    return total


def _mean_loss(model: nn.Module, images: torch.Tensor, batch_size: int, batches: int) -> float:
    model.eval()
    losses = []
    with torch.no_grad():
        for b in range(batches):
            x = images[b * batch_size : (b + 1) * batch_size]
            if len(x) == 0:
                break
            losses.append(float(model.distillation_loss(x)))  # type: ignore[operator]
    return sum(losses) / max(1, len(losses))


def finetune(
    model: nn.Module,
    images: torch.Tensor,
    roles: Iterable[str],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    progress: bool = False,
    bar: Any = None,
) -> list[float]:
    """Train the trainable parameters of ``roles`` on the distillation loss; other roles stay frozen."""
    roles = set(roles)
    parts = {name: child for name, child in model.named_children() if role_of(name) in roles}
    params = [p for part in parts.values() for p in part.parameters() if p.requires_grad]
    if epochs <= 0 or not params:
        return []
    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    for p in frozen:
        p.requires_grad_(False)
    steps = (len(images) + batch_size - 1) // batch_size
    if bar is None:
        bar = tqdm(total=epochs * steps, desc="prune fine-tune", disable=not progress, leave=False)

    def train_roles(_epoch: int) -> None:
        model.train()
        for name, child in model.named_children():
            if name not in parts:
                child.eval()  # frozen roles keep their BatchNorm statistics

    try:
        losses = finetune_adam(model.distillation_loss, images, params, epochs, lr, batch_size, seed,  # type: ignore[arg-type]
                               begin_epoch=train_roles, bar=bar)
    finally:
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
    return losses


def _role_params(graph: ModelGraph) -> dict[str, int]:
    return {r: graph.parameter_count(r) for r in ROLES}


def _traced_role_params(trace: _Trace) -> dict[str, int]:
    """Parameters of the layers that ran in ``trace``, per role (as ``ModelGraph.parameter_count``)."""
    seen: set[int] = set()
    out = dict.fromkeys(ROLES, 0)
    for name in trace.order:
        for p in trace.modules[name].parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out[role_of(name)] += p.numel()
    return out


@register_pass
class Prune(Pass):
    """Structured channel pruning of the student guided by the distillation loss, then a short fine-tune."""

    name = "prune"
    forbids = frozenset({"fake_quant", "lowered"})
    provides = frozenset({"pruned"})

    @dataclass
    class Options:
        ratio: float = option(0.5, "fraction of each prunable group's channels removed (0 to 0.9)")
        stage_ratios: dict[str, float] = option({}, "{dotted name fragment, e.g. 'blocks.5': ratio} overrides")
        round_to: int = option(8, "kept channels are rounded up to a multiple of this")
        finetune_epochs: int = option(2, "distillation fine-tune epochs after the surgery")
        lr: float = option(1e-3, "Adam learning rate of the fine-tune (constant)")
        batch_size: int = option(8, "images per step (importance and fine-tune)")
        importance_batches: int = option(4, "batches of training images for the Taylor importance")
        roles: list[str] = option(
            ["student"], "roles to prune; add 'teacher' for US's trainable descriptor teacher (frozen "
            "pretrained teachers are never pruned)"
        )
        drop_dead: bool = option(True, "cut backbone blocks that run after the last tapped feature")
        drop_training_only: bool = option(False, "drop modules only training uses (e.g. US 'backbone')")

    def _options(self) -> dict[str, Any]:
        o = self.options
        ratio = o.ratio
        stage_ratios = dict(o.stage_ratios)
        for key, value in [("ratio", ratio), *stage_ratios.items()]:
            if not 0.0 <= value <= 0.9:
                raise ConfigError(f"prune: {key} must be between 0 and 0.9, not {value}")
        round_to = o.round_to
        if round_to < 1:
            raise ConfigError(f"prune: round_to must be at least 1, not {round_to}")
        roles = list(o.roles)
        if unknown := set(roles) - {"student", "teacher"}:
            raise ConfigError(f"prune: roles must be 'student' and/or 'teacher', not {sorted(unknown)}")
        return {
            "ratio": ratio,
            "stage_ratios": stage_ratios,
            "round_to": round_to,
            "epochs": o.finetune_epochs,
            "lr": o.lr,
            "batch_size": max(1, o.batch_size),
            "importance_batches": max(1, o.importance_batches),
            "roles": roles,
            "drop_dead": o.drop_dead,
            "drop_training_only": o.drop_training_only,
        }

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        opts = self._options()
        model = graph.model
        params_before = _role_params(graph)
        macs_before = {r: conv_macs(graph, r) for r in ("teacher", "student")}
        notes: dict[str, Any] = {"ratio": opts["ratio"], "round_to": opts["round_to"]}

        dead = drop_dead_blocks(model) if opts["drop_dead"] else {}
        trace = trace_uses(model, graph.example)  # module names stay valid through channel pruning
        if dead:
            notes["params_after_dead_drop"] = _traced_role_params(trace)
        groups = find_channel_groups(model, graph.example, opts["roles"], trace)
        training_only = training_only_modules(model, graph.example, trace)
        plan = {
            g.producer: kept_channels(g.channels, ratio_for(g.producer, opts["ratio"], opts["stage_ratios"]),
                                      opts["round_to"])
            for g in groups
        }
        to_prune = [g for g in groups if plan[g.producer] < g.channels]
        losses: list[float] = []
        if to_prune:
            images = ctx.train_images
            if images is None or len(images) == 0:
                raise DataError("prune: no training images in the context (give optimize() calib or train)")
            images = images.float()
            n_imp = opts["importance_batches"]
            importance, notes["loss_before"] = estimate_importance(
                model, to_prune, images, opts["batch_size"], n_imp
            )
            keep = {
                g.producer: torch.sort(torch.topk(importance[g.producer], plan[g.producer]).indices).values
                for g in to_prune
            }
            apply_channel_selection(model, to_prune, keep)
            notes["loss_after_prune"] = _mean_loss(model, images, opts["batch_size"], n_imp)
            steps = (len(images) + opts["batch_size"] - 1) // opts["batch_size"]
            ctx.log(f"prune: fine-tuning {opts['epochs']} epoch(s) x {steps} steps")
            losses = finetune(model, images, opts["roles"], opts["epochs"], opts["lr"], opts["batch_size"],
                              ctx.seed, ctx.progress, bar=ctx.bar(opts["epochs"] * steps, "prune fine-tune", "step"))
            notes["loss_after_finetune"] = _mean_loss(model, images, opts["batch_size"], n_imp)
            refit = model.refit_statistics(images, opts["batch_size"]) if hasattr(model, "refit_statistics") else {}
            if refit:
                notes["refit"] = refit
        model.eval()

        if opts["drop_training_only"]:
            for name, count in training_only.items():
                _set_submodule(model, name, DroppedModule(name, count))

        fresh = graph.recapture()
        params_after = _role_params(fresh)
        notes.update(
            {
                "params_before": params_before,
                "params_after": params_after,
                "macs_before": macs_before,
                "macs_after": {r: conv_macs(fresh, r) for r in ("teacher", "student")},
                "groups": len(groups),
                "groups_pruned": len(to_prune),
                "channels": {g.producer: [g.channels, plan[g.producer]] for g in groups},
                "channels_kept": f"{sum(plan.values())}/{sum(g.channels for g in groups)}",
                "finetune_losses": losses,
                "dropped_dead": dead,
                "dropped_training_only" if opts["drop_training_only"] else "droppable_training_only": (
                    training_only
                ),
            }
        )
        earlier = graph.state.prune or PrunePlan()  # a second prune pass: its plan holds the final counts
        fresh.state.prune = PrunePlan(
            plan={**earlier.plan, **{g.producer: plan[g.producer] for g in groups}},
            dropped_dead=sorted(set(earlier.dropped_dead) | set(dead)),
            dropped_training_only=sorted(
                set(earlier.dropped_training_only) | (set(training_only) if opts["drop_training_only"] else set())
            ),
        )
        ctx.note(**notes)
        return fresh


def apply_prune_plan(model: nn.Module, prune: PrunePlan, example: torch.Tensor) -> nn.Module:
    """Reshape a freshly built model like a pruned one (``graph.state.prune``), so that the pruned
    model's ``state_dict`` loads into it (weights are placeholders until then)."""
    if prune.dropped_dead:
        drop_dead_blocks(model)
    plan: dict[str, int] = dict(prune.plan)
    roles = {role_of(name) for name in plan}
    groups = [g for g in find_channel_groups(model, example, roles or ("student",)) if g.producer in plan]
    missing = set(plan) - {g.producer for g in groups}
    if missing:
        raise ConfigError(f"prune plan names layers with no prunable group here: {sorted(missing)[:3]}")
    keep = {g.producer: torch.arange(plan[g.producer]) for g in groups if plan[g.producer] < g.channels}
    apply_channel_selection(model, groups, keep)
    for name in prune.dropped_training_only:
        _set_submodule(model, name, DroppedModule(name, 0))
    return model

