"""The pass protocol and the context passes run in.

A pass is a small object with a ``name``, the graph properties it ``requires``, those it ``forbids``
(e.g. folding BatchNorm after fake-quant insertion), those it ``provides`` and those it ``preserves``
(LLVM/MLIR style), its options (a dataclass, checked when the pass is built), and ``run(graph, ctx) -> graph``.
Per-pass drift tolerances override the pipeline's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.utils.data import Dataset

from anomopt.errors import ConfigError
from anomopt.graph import ModelGraph
from anomopt.passes.options import NoOptions, option_docs, parse_options
from anomopt.progress import Progress

if TYPE_CHECKING:  # targets import passes (the 'lower' pass), so the spec is named for type checkers only
    from anomopt.targets.spec import TargetSpec

ALL = frozenset({"*"})


@dataclass
class Tolerance:
    """How far a pass may move the model's outputs from the input model.

    Drifts are relative L2 errors on a held batch: ``|s - s_ref| / |s_ref|`` for image scores and the
    same for anomaly maps. AUROC drops are in points (1.0 = one AUROC percentage point).
    """

    max_score_drift: float = float("inf")
    max_map_drift: float = float("inf")
    max_image_auroc_drop: float = float("inf")
    max_pixel_auroc_drop: float = float("inf")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Tolerance:
        data = data or {}
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in data.items() if k in names})

    def merged(self, override: dict[str, Any]) -> Tolerance:
        """This tolerance with the keys in ``override`` replaced."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: float(v) for k, v in override.items() if k in values})
        return Tolerance(**values)


@dataclass
class PassContext:
    """What passes may use besides the graph."""

    target: TargetSpec | None = None
    bits: int = 8
    calib_images: torch.Tensor | None = None  # normal training images and/or noise, never test images
    calib_source: str = "given"  # where calib_images came from: "train", "noise", "mixed" or "given"
    train_images: torch.Tensor | None = None  # normal training images (QAT, pruning fine-tune)
    held_images: torch.Tensor | None = None  # the drift batch
    eval_set: Dataset | None = None  # labelled data for AccuracyGate / AUROC
    reference_metrics: dict[str, Any] | None = None  # the input model's metrics on eval_set (AccuracyGate)
    tolerance: Tolerance = field(default_factory=Tolerance)
    seed: int = 0
    progress: bool = False
    workdir: str | None = None  # where lowering writes its artifact
    state: dict[str, Any] = field(default_factory=dict)  # free for out-of-tree passes; built-ins use fields
    reporter: Progress | None = field(default=None, repr=False)  # made from ``progress`` when absent
    notes: dict[str, Any] = field(default_factory=dict)  # the running pass's notes (see :meth:`note`)

    def note(self, **notes: Any) -> None:
        """Record facts about what the running pass did (layer counts, losses...); the manager puts them in
        that pass's record of the report and starts the next pass with none."""
        self.notes.update(notes)

    def _reporter(self) -> Progress:
        if self.reporter is None or self.reporter.enabled != bool(self.progress):
            self.reporter = Progress(self.progress)
        return self.reporter

    def log(self, message: str) -> None:
        """A timestamped progress line on stderr (silent when ``progress`` is False)."""
        self._reporter().log(message)

    def bar(self, total: int | None, desc: str, unit: str = "it") -> Any:
        """A progress bar on stderr (disabled when ``progress`` is False); close it when done."""
        return self._reporter().bar(total, desc, unit)


class Pass:
    """Base class of every pass. Subclasses set the class attributes, declare their options as a nested
    ``Options`` dataclass (see :mod:`anomopt.passes.options`) and implement :meth:`run`, reading their
    options from ``self.options`` (an ``Options`` instance)."""

    name: ClassVar[str] = "pass"
    requires: ClassVar[frozenset[str]] = frozenset()
    forbids: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    preserves: ClassVar[frozenset[str]] = ALL
    changes_outputs: ClassVar[bool] = True  # False: the manager skips the drift measurement
    no_drift_reason: ClassVar[str] = "the pass does not change the model's outputs"  # shown instead of a drift
    Options: ClassVar[type] = NoOptions

    TOLERANCE_KEYS: ClassVar[tuple[str, ...]] = tuple(f.name for f in fields(Tolerance))

    def __init__(self, **options: Any) -> None:
        self.tolerance_override: dict[str, float] = {}
        self.given_options: dict[str, Any] = {}  # the options as given (recorded in the report)
        self.options: Any = self.Options()
        self.configure(**options)

    def configure(self, **options: Any) -> None:
        """Set options (tolerance keys override the pipeline's tolerance for this pass); an unknown key or a
        wrong type raises :class:`ConfigError` naming the pass, the key and the known keys."""
        tolerance = {k: options.pop(k) for k in list(options) if k in self.TOLERANCE_KEYS}
        for key, value in tolerance.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"pass {self.name!r}: tolerance {key!r} must be a number, not {value!r}")
        given = {**self.given_options, **options}
        self.options = parse_options(self.name, self.Options, given, self.TOLERANCE_KEYS)
        self.given_options = {k: getattr(self.options, k) for k in given}
        self.tolerance_override.update({k: float(v) for k, v in tolerance.items()})

    @classmethod
    def option_docs(cls) -> dict[str, tuple[str, Any, str]]:
        """``{option: (type, default, doc)}`` (tolerance keys are accepted besides these)."""
        return option_docs(cls.Options)

    def check_pipeline(self, passes: list[Pass]) -> None:
        """Raise :class:`~anomopt.errors.PipelineError` when this pass's options contradict another pass of
        the same pipeline (checked before anything runs); most passes have nothing to check."""

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in {**self.given_options, **self.tolerance_override}.items())
        return f"{type(self).__name__}({opts})"
