"""``GraphState``: what passes establish about a graph and hand to later passes, lowering and saving.

Each field has one writer and named readers, so a pass that needs another's result reads a typed attribute
instead of a string key:

- ``quantized_layers``, ``quant``: by ``insert_fake_quant`` / ``modelopt_quantize``; read by ``calibrate``,
  ``auto_mixed_precision``, ``lower`` and the artifact's ``meta.json`` / report;
- ``calibration``: by ``calibrate`` / ``modelopt_quantize``; read by CPU lowering (ORT's calibration
  method) and ``meta.json``;
- ``kept_fp``: by ``auto_mixed_precision``; read by CPU lowering (layers left FP32) and ``meta.json``;
- ``prune``: by ``prune``; read by :func:`anomopt.passes.prune.apply_prune_plan` (reload a pruned model);
- ``qat``: by ``qat_finetune``; read by the benchmarks;
- ``metrics_after``: by ``accuracy_gate``; read by ``optimize()`` (no second evaluation);
- ``artifact``: by ``lower`` (or ``optimize()`` when the pipeline has no ``lower``); read by ``optimize()``,
  ``save()`` and the CLI.

``custom`` is free for out-of-tree passes (key it by your pass name).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class QuantRecord:
    """How the quantizers were placed: scope, bit widths, symmetry, granularity, layers kept FP."""

    scope: str
    weight_bits: int
    act_bits: int
    symmetric_activations: bool
    per_channel: bool
    keep_fp: list[str] = field(default_factory=list)
    backend: str = "anomopt"  # who placed the quantizers: anomopt's fake quantizers or "modelopt"
    backend_info: dict[str, Any] = field(default_factory=dict)  # e.g. ModelOpt's version and config name

    def to_dict(self) -> dict[str, Any]:
        """Plain data as written to ``meta.json`` and ``report.json``."""
        out = {k: v for k, v in asdict(self).items() if k not in ("backend", "backend_info")}
        if self.backend != "anomopt":
            out = {"backend": self.backend, **self.backend_info, **out}
        return out


@dataclass
class CalibrationRecord:
    """How activation ranges were set: method, its percentile, how many images and from where."""

    method: str
    percentile: float | None
    samples: int
    source: str  # "train", "noise", "mixed" or "given"
    backend: str | None = None  # "modelopt" when ModelOpt's calibrators set the ranges

    def to_dict(self) -> dict[str, Any]:
        """Plain data as written to ``meta.json`` and ``report.json``."""
        out = asdict(self)
        if self.backend is None:
            del out["backend"]
        return out


@dataclass
class PrunePlan:
    """The shape a prune pass left: kept channels per pruned group's producer and the modules cut."""

    plan: dict[str, int] = field(default_factory=dict)
    dropped_dead: list[str] = field(default_factory=list)
    dropped_training_only: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QATRecord:
    """What QAT fine-tuning ran: epochs, learning rate, mean loss per epoch."""

    epochs: int
    lr: float
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GraphState:
    """Typed results passes hand each other (see the module docstring for writers and readers)."""

    quantized_layers: list[str] = field(default_factory=list)
    quant: QuantRecord | None = None
    calibration: CalibrationRecord | None = None
    kept_fp: list[str] = field(default_factory=list)
    prune: PrunePlan | None = None
    qat: QATRecord | None = None
    metrics_after: dict[str, Any] | None = None
    artifact: dict[str, Any] | None = None  # the lowering record: dir, model, files, target, precision, notes...
    custom: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> GraphState:
        """A deep copy (a cloned graph must not share lists with its source)."""
        return copy.deepcopy(self)
