"""``ModelGraph``: the inference path of a KD model (teacher, student(s), head) as a list of layer nodes.

Capture runs one forward pass with hooks on every leaf module and records, in execution order, each
layer's qualified name, op type, role (by its place in the model: ``teacher``/``student``/``head``),
input and output shapes, and which earlier layer produced each of its inputs (by tensor identity).
That data flow is what structural passes need (conv -> BatchNorm pairs, channel couplings for pruning),
and it works on any module tree, including timm's EfficientNet whose "same" padding defeats
``torch.fx.symbolic_trace``. The graph keeps the live ``nn.Module``, so it can run, train (QAT) and export.
``to_exported_program`` gives the ``torch.export`` form for checking and export tooling. What passes
establish about the graph and hand to later passes lives in typed fields (``graph.state``, a
:class:`~anomopt.graph.state.GraphState`), the properties they provide in ``graph.properties``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from anomopt.graph.state import GraphState

ROLES = ("teacher", "student", "head")

LEAF_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.Upsample,
    nn.Identity,
)


@dataclass
class Node:
    """One executed layer."""

    name: str
    op: str
    role: str
    inputs: list[str]  # names of producer nodes ("input" for the graph input, "" for unknown)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def is_conv(self) -> bool:
        return self.op in ("Conv2d", "Conv2dSame", "Linear")


@dataclass
class ModelGraph:
    """A captured model plus what passes have established about it (LLVM-style preserved properties)."""

    model: nn.Module
    nodes: list[Node]
    example: torch.Tensor
    properties: set[str] = field(default_factory=set)
    state: GraphState = field(default_factory=GraphState)
    runner: Any = None  # set by lowering: an object with .run(images) -> (scores, maps) numpy

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def nodes_with_role(self, *roles: str) -> list[Node]:
        return [n for n in self.nodes if n.role in roles]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def run(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score images with the torch model: ``(score[N], map[N, 1, H, W])``."""
        self.model.eval()
        with torch.no_grad():
            return self.model(images)

    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Score images with what the graph deploys as (the lowered artifact once lowered): numpy
        ``(scores[N], maps[N, H, W])``."""
        if self.runner is not None:
            return self.runner.run(images)
        s, m = self.run(images)
        return s.float().numpy(), m.float().numpy()[:, 0]

    def recapture(self) -> ModelGraph:
        """Re-trace after a structural change, keeping properties and state."""
        fresh = capture(self.model, self.example)
        fresh.properties = set(self.properties)
        fresh.state = copy.copy(self.state)
        fresh.runner = self.runner
        return fresh

    def clone(self) -> ModelGraph:
        """A deep copy (passes that must not touch their input work on one)."""
        return ModelGraph(
            model=copy.deepcopy(self.model),
            nodes=list(self.nodes),
            example=self.example,
            properties=set(self.properties),
            state=self.state.copy(),
            runner=self.runner,
        )

    def parameter_count(self, *roles: str) -> int:
        """Parameters of the layers that run at inference, optionally only of some roles."""
        seen: set[int] = set()
        total = 0
        for n in self.nodes:
            if roles and n.role not in roles:
                continue
            for p in self.module(n.name).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        return total

    def to_exported_program(self) -> torch.export.ExportedProgram:
        """The ``torch.export`` form of the inference path (for inspection and export tooling)."""
        self.model.eval()
        return torch.export.export(self.model, (self.example,))


def role_of(name: str) -> str:
    """The role a qualified module name plays in a KD model."""
    head = name.split(".", 1)[0]
    if head in ("teacher", "backbone"):
        return "teacher"
    if head == "student":
        return "student"
    return "head"


def _is_leaf(module: nn.Module) -> bool:
    return isinstance(module, LEAF_TYPES) or next(module.children(), None) is None


def leaf_modules(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Leaf layers in definition order; a leaf's own children (e.g. BatchNormAct2d's act) are not visited."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if _is_leaf(child):
            out.append((full, child))
        else:
            out.extend(leaf_modules(child, full))
    return out


def capture(model: nn.Module, example: torch.Tensor) -> ModelGraph:
    """Trace ``model`` on ``example`` and build its :class:`ModelGraph`."""
    producer: dict[int, str] = {id(example): "input"}
    keepalive: list[torch.Tensor] = [example]
    nodes: list[Node] = []
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            out = output if isinstance(output, torch.Tensor) else None
            inputs = [producer.get(id(x), "")] if x is not None else []
            nodes.append(
                Node(
                    name=name,
                    op=type(module).__name__,
                    role=role_of(name),
                    inputs=inputs,
                    in_shape=tuple(x.shape) if x is not None else (),
                    out_shape=tuple(out.shape) if out is not None else (),
                )
            )
            if out is not None:
                producer[id(out)] = name
                keepalive.append(out)

        return fn

    for name, module in leaf_modules(model):
        handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # A module called twice (shared weights) keeps its first call.
    uniq: dict[str, Node] = {}
    for n in nodes:
        uniq.setdefault(n.name, n)
    return ModelGraph(model=model, nodes=list(uniq.values()), example=example)
