"""Declarative pipelines: TOML files, one per target x precision, shipped in the wheel.

Format::

    [pipeline]
    target = "cpu"
    bits = 8
    description = "..."

    [tolerance]                 # defaults for every pass
    max_score_drift = 0.3

    [[pass]]
    name = "fold_batchnorm"     # a registered name or "package.module:Class"
    max_map_drift = 1e-4        # per-pass tolerance override
    # every other key is an option of the pass
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from anomopt.errors import ConfigError
from anomopt.passes.base import Pass, Tolerance
from anomopt.passes.registry import resolve_pass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Pipeline:
    """A parsed pipeline file."""

    name: str
    target: str
    bits: int
    passes: list[Pass]
    tolerance: Tolerance = field(default_factory=Tolerance)
    description: str = ""
    source: str = ""


def pipelines_dir() -> Path:
    """Where the shipped pipelines live (inside the installed package)."""
    return Path(str(resources.files("anomopt"))) / "pipelines"


def available_pipelines() -> list[str]:
    """Names of the shipped pipelines, e.g. ``cpu-int8``."""
    return sorted(p.stem for p in pipelines_dir().glob("*.toml"))


def shipped_pipeline(name: str) -> Path:
    """The shipped pipeline file called ``name`` (e.g. ``cpu-int8``; a target's row names its pipelines:
    :func:`anomopt.targets.pipeline_path`)."""
    path = pipelines_dir() / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"no shipped pipeline {name!r}; available: {', '.join(available_pipelines())}")
    return path


def load_pipeline(path: str | os.PathLike[str]) -> Pipeline:
    """Parse and build a pipeline file; errors name the file and the faulty entry."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: pipeline file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML ({err})") from None
    return pipeline_from_dict(data, source=str(p))


def pipeline_from_dict(data: dict[str, Any], source: str = "<dict>") -> Pipeline:
    """Build a pipeline from parsed TOML data."""
    head = data.get("pipeline", {})
    entries = data.get("pass", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: a pipeline needs at least one [[pass]] entry")
    passes = []
    for i, entry in enumerate(entries):
        entry = dict(entry)
        name = entry.pop("name", None)
        if not name:
            raise ConfigError(f"{source}: [[pass]] #{i + 1} has no 'name'")
        try:
            passes.append(resolve_pass(name, **entry))
        except ConfigError as err:
            raise ConfigError(f"{source}: [[pass]] #{i + 1}: {err}") from None
        except TypeError as err:
            raise ConfigError(f"{source}: [[pass]] #{i + 1} ({name}): bad options: {err}") from None
    return Pipeline(
        name=str(head.get("name", Path(source).stem)),
        target=str(head.get("target", "cpu")),
        bits=int(head.get("bits", 8)),
        passes=passes,
        tolerance=Tolerance.from_dict(data.get("tolerance")),
        description=str(head.get("description", "")),
        source=source,
    )
