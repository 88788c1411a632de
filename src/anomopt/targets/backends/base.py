"""What a backend is: the object that turns an optimized graph into one runtime's deployable files.

A backend is chosen by the ``runtime`` column of the target table (:mod:`anomopt.targets.spec`), never
by branching on the runtime name elsewhere. It gets a :class:`LoweringJob` (the graph, the target row, the
precision, the folders, the calibration images, the ``lower`` options it declared) and returns a
:class:`Lowered`: the files it wrote into ``job.out`` (``model.onnx`` first), what the drift runner stands
for, notes, and the extra ``meta.json`` entries its runtime needs.

A backend declares the ``lower`` options it reads as a nested ``Options`` dataclass (types, defaults, docs;
as passes declare theirs). The ``lower`` pass's typed options are made from these declarations, so each
default lives in its backend only. Adding a runtime = one file in this folder defining a
:class:`Backend` subclass decorated with :func:`anomopt.targets.backends.register_backend`, plus one row
in ``TARGETS`` naming it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from anomopt.errors import ConfigError
from anomopt.passes.options import option
from anomopt.precision import Precision

MODEL_FILE = "model.onnx"


@dataclass
class LoweringJob:
    """One lowering: everything a backend may read."""

    graph: Any  # anomopt.graph.ModelGraph
    target: Any  # anomopt.targets.spec.TargetSpec
    precision: Precision
    out: Path  # the folder the artifact files go to
    work: Path  # scratch folder inside ``out``, removed after lowering
    calib_images: Any = None  # torch.Tensor (N, 3, H, W) or None
    options: dict[str, Any] = field(default_factory=dict)
    say: Callable[[str], None] = lambda _msg: None

    @property
    def quantized(self) -> bool:
        return self.precision is Precision.INT8

    @property
    def image_size(self) -> int:
        return int(self.graph.model.config.image_size)

    @property
    def opset(self) -> int:
        return max(13, int(self.target.onnx_opset))

    @property
    def model_path(self) -> Path:
        return self.out / MODEL_FILE

    @property
    def quantizer(self) -> str:
        """Who quantized the graph: ``anomopt`` (its fake quantizers) or ``modelopt`` (NVIDIA ModelOpt)."""
        if not self.quantized:
            return "anomopt"
        quant = self.graph.state.quant
        return quant.backend if quant is not None else "anomopt"


@dataclass
class Lowered:
    """What a backend produced (paths are file names inside ``job.out``)."""

    files: list[str]
    runner: str  # what the ONNX Runtime drift runner over ``model.onnx`` stands for
    notes: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # extra fields of the artifact record
    meta: dict[str, Any] = field(default_factory=dict)  # extra top-level entries of meta.json


@dataclass
class CommonOptions:
    """The ``lower`` options every backend takes (read by the ``lower`` pass itself)."""

    backend: str = option("onnx", "onnx | torch_tensorrt (adds the torch-tensorrt bundle; Jetson targets)")
    threads: int | None = option(None, "ONNX Runtime threads of the runner that scores the lowered model")


def option_defaults(options_cls: type) -> dict[str, Any]:
    """``{name: default}`` of an options dataclass."""
    return {
        f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        for f in fields(options_cls)
    }


class Backend(ABC):
    """One runtime's lowering. Subclasses set ``runtime`` (the target table's name for it) and declare the
    ``lower`` options they read as a nested ``Options`` dataclass (:func:`anomopt.passes.options.option`
    fields: type, default, doc); ``options`` (``{name: default}``) is made from it. A backend may instead
    set ``options`` alone (untyped: any value is passed through)."""

    runtime: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type | None] = None
    options: ClassVar[dict[str, Any]] = {}
    #: options every backend takes (read by the ``lower`` pass itself)
    COMMON_OPTIONS: ClassVar[dict[str, Any]] = option_defaults(CommonOptions)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("Options") is not None:
            cls.options = option_defaults(cls.Options)

    def resolve_options(self, given: dict[str, Any] | None, target_name: str) -> dict[str, Any]:
        """The backend's defaults overlaid with ``given``; a key this backend does not read is a
        :class:`ConfigError` naming it and the keys it knows."""
        known = {**self.COMMON_OPTIONS, **self.options}
        unknown = sorted(set(given or {}) - set(known))
        if unknown:
            raise ConfigError(
                f"lower: option {unknown[0]!r} does not apply to target {target_name!r} ({self.runtime}); "
                f"its options: {', '.join(sorted(known))}"
            )
        return {**known, **(given or {})}

    @abstractmethod
    def lower(self, job: LoweringJob) -> Lowered:
        """Write the artifact files into ``job.out``."""


__all__ = ["MODEL_FILE", "Backend", "CommonOptions", "Lowered", "LoweringJob", "option_defaults"]
