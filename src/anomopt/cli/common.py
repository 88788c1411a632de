"""Helpers shared by the command modules: help that shows defaults, checks of numeric options, and the
folders of a data set root that look like categories but are not (no ``train/good``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from anomopt.errors import ConfigError

__all__ = ["DefaultsHelpFormatter", "flag_pass_options", "non_category_folders", "require_positive", "warn"]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to every option's help, except where the help already says its default or
    there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def require_positive(value: int | float | None, flag: str, minimum: int | float = 1) -> None:
    """Raise a one-line :class:`ConfigError` unless ``value`` (when given) is at least ``minimum``."""
    if value is not None and value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}, not {value}")


def non_category_folders(root: str | os.PathLike[str]) -> list[Path]:
    """Visible sub-folders of a data set root that have no ``train/good`` (so they are not categories)."""
    r = Path(root)
    try:
        subs = sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    return [p for p in subs if not (p / "train" / "good").is_dir()]


def flag_pass_options(
    pipeline: str | None, target: str, bits: int, variant: str | None, options: dict[str, dict[str, Any]]
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The pipeline a command runs, and the pass options its flags set, kept for the passes it has: a
    flag such as ``--calib-method`` sets ``calibrate`` or ``modelopt_quantize``, whichever the pipeline
    runs, and none for a pipeline without calibration (``optimize`` refuses options for absent passes)."""
    from anomopt.api import resolve_pipeline
    from anomopt.targets import get_target

    spec = get_target(target)
    spec.check_bits(bits)
    resolved = resolve_pipeline(pipeline, spec, bits, variant)
    present = {p.name for p in resolved.passes}
    return resolved, {name: opts for name, opts in options.items() if name in present}


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"anomopt: warning: {message}", file=sys.stderr)
