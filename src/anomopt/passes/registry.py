"""Pass registry: pass names to classes.

Built-in passes are listed in :data:`BUILTIN_PASSES` (name -> ``"module:Class"``) and imported the first
time a pipeline names them, so ``load_pipeline`` resolves every built-in name (``lower`` included)
without importing anything ahead. A pass class registers itself with the ``@register_pass`` decorator;
pipeline files can also name any pass as a ``"package.module:Class"`` string.
"""

from __future__ import annotations

import importlib
from typing import Any

from anomopt.errors import ConfigError
from anomopt.passes.base import Pass

# name -> where the class lives; imported on first use (the module's @register_pass fills PASS_REGISTRY)
BUILTIN_PASSES: dict[str, str] = {
    "fold_batchnorm": "anomopt.passes.fold_bn:FoldBatchNorm",
    "prune": "anomopt.passes.prune:Prune",
    "insert_fake_quant": "anomopt.passes.fake_quant:InsertFakeQuant",
    "calibrate": "anomopt.passes.calibrate:Calibrate",
    "auto_mixed_precision": "anomopt.passes.mixed_precision:AutoMixedPrecision",
    "latency_aware_precision": "anomopt.passes.latency_precision:LatencyAwarePrecision",
    "qat_finetune": "anomopt.passes.qat:QATFineTune",
    "accuracy_gate": "anomopt.passes.gate:AccuracyGate",
    "modelopt_quantize": "anomopt.targets.modelopt_quant:ModeloptQuantize",
    "lower": "anomopt.targets.lower:Lower",
}

PASS_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its ``name`` in pipeline files. A name already taken by a
    class defined elsewhere (a built-in name included) is a :class:`ConfigError`; the same definition run
    again (a reloaded module, a re-run notebook cell) replaces it."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise ConfigError(f"register_pass takes a subclass of anomopt.passes.Pass, not {cls!r}")
    taken = PASS_REGISTRY.get(cls.name)
    builtin = BUILTIN_PASSES.get(cls.name)
    here = _where(cls)
    if (taken is not None and _where(taken) != here) or (builtin is not None and builtin != here):
        raise ConfigError(
            f"pass name {cls.name!r} is already registered to {builtin or _where(taken)}; give {here} another name"
        )
    PASS_REGISTRY[cls.name] = cls
    return cls


def _where(cls: Any) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def known_passes() -> list[str]:
    """Every name a pipeline can use without a ``module:Class`` string."""
    return sorted(set(PASS_REGISTRY) | set(BUILTIN_PASSES))


def pass_class(name: str) -> type[Pass]:
    """The class registered under ``name``, importing a built-in one on first use."""
    if name not in PASS_REGISTRY and name in BUILTIN_PASSES:
        cls = _import(BUILTIN_PASSES[name])
        PASS_REGISTRY.setdefault(name, cls)
    if name not in PASS_REGISTRY:
        raise ConfigError(f"unknown pass {name!r}; known passes: {', '.join(known_passes())}")
    return PASS_REGISTRY[name]


def _import(spec: str) -> type[Pass]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"cannot import custom pass {spec!r}: {err}; install the package that holds it, "
            "or add the folder containing it to PYTHONPATH"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise ConfigError(f"{spec!r} is not a subclass of anomopt.passes.Pass")
    return cls


def resolve_pass(spec: str | Pass | type[Pass], **options: Any) -> Pass:
    """A pass from an instance, a class, a registered name, or a ``"module:Class"`` string."""
    if isinstance(spec, Pass):
        if options:
            raise ConfigError(f"options {sorted(options)} given for an already-built pass {spec!r}")
        return spec
    if isinstance(spec, type) and issubclass(spec, Pass):
        return spec(**options)
    if not isinstance(spec, str):
        raise ConfigError(f"a pass must be a Pass, a Pass class, a name or 'module:Class', not {spec!r}")
    if ":" in spec:
        return _import(spec)(**options)
    return pass_class(spec)(**options)
