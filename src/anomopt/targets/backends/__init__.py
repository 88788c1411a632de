"""Backends: one file per runtime (``onnxruntime.py``, ``tensorrt.py``), chosen by the target table.

:func:`get_backend` resolves a runtime name: a backend registered with :func:`register_backend`, else the
module of that name in this folder (imported on first use, so ``import anomopt.targets`` stays light and
a built-in backend needs no list to be kept in step), else a :class:`TargetError` listing the known ones.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from anomopt.errors import TargetError
from anomopt.targets.backends.base import MODEL_FILE, Backend, Lowered, LoweringJob

_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` the backend of the runtime ``cls.runtime``."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)) or not cls.runtime:
        raise TargetError(f"register_backend: {cls!r} is not a Backend subclass with a 'runtime' name")
    _BACKENDS[cls.runtime] = cls
    lower = sys.modules.get("anomopt.targets.lower")
    if lower is not None:  # Lower.Options is made from the backends' declarations: make it again
        lower.lower_options.cache_clear()
    return cls


def unregister_backend(runtime: str) -> None:
    """Forget a registered backend (tests registering a toy one clean up with this)."""
    _BACKENDS.pop(runtime, None)


def builtin_runtimes() -> list[str]:
    """The runtimes with a backend file in this folder."""
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name != "base")


def backend_option_names() -> set[str]:
    """Every ``lower`` option some backend reads (built-in backends imported to ask them)."""
    for runtime in builtin_runtimes():
        if runtime not in _BACKENDS:
            importlib.import_module(f"{__name__}.{runtime}")
    return {name for cls in _BACKENDS.values() for name in cls.options}


def get_backend(runtime: str) -> Backend:
    """A fresh backend object for ``runtime`` (a target row's ``runtime``)."""
    if runtime not in _BACKENDS and runtime in builtin_runtimes():
        importlib.import_module(f"{__name__}.{runtime}")  # its @register_backend runs on import
    try:
        return _BACKENDS[runtime]()
    except KeyError:
        known = sorted(set(_BACKENDS) | set(builtin_runtimes()))
        raise TargetError(f"no backend for runtime {runtime!r}; known runtimes: {', '.join(known)}") from None


__all__ = [
    "MODEL_FILE",
    "Backend",
    "Lowered",
    "LoweringJob",
    "backend_option_names",
    "builtin_runtimes",
    "get_backend",
    "register_backend",
    "unregister_backend",
]
