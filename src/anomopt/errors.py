"""Error types raised by anomopt.

Every user-facing failure derives from :class:`AnomoptError`, so the CLI can print a one-line
message (naming the file or field and what to do) instead of a traceback from deep in a library.
"""

from __future__ import annotations


class AnomoptError(Exception):
    """Base class of every error anomopt raises on purpose."""


class DataError(AnomoptError, ValueError):
    """A data set, image or mask is missing, unreadable or malformed."""


class CheckpointError(AnomoptError, ValueError):
    """A checkpoint or artifact cannot be loaded (missing, corrupt, other version or model)."""


class ConfigError(AnomoptError, ValueError):
    """A configuration value, pipeline file or CLI option is invalid."""


class PipelineError(AnomoptError, RuntimeError):
    """A pass pipeline cannot run: unmet requirement, unknown pass, or failed pass."""


class DriftError(PipelineError):
    """A pass changed the model's outputs by more than the stated tolerance."""


class TargetError(AnomoptError, ValueError):
    """A target does not exist or does not support what was asked of it."""


class WeightsNotFoundError(AnomoptError, FileNotFoundError):
    """Pretrained weights are not available offline."""


class OutputError(AnomoptError, OSError):
    """An output file or folder cannot be written: read-only, locked by another run, disk full."""
