"""Pass registry (timm-style): names to classes, plus ``"module:Class"`` strings for custom passes."""

from __future__ import annotations

import importlib
from typing import Any

from anomopt.errors import ConfigError
from anomopt.passes.base import Pass

PASS_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its ``name`` in pipeline files."""
    PASS_REGISTRY[cls.name] = cls
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
        return cls(**options)
    if spec not in PASS_REGISTRY:
        raise ConfigError(f"unknown pass {spec!r}; known passes: {', '.join(sorted(PASS_REGISTRY))}")
    return PASS_REGISTRY[spec](**options)
