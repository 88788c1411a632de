"""Per-category score normalization and thresholds, fitted on the held-out *normal* validation split.

A unified model serves many products whose raw scores live on different scales. For each category we
store the mean and standard deviation of the validation images' scores and of their map pixels, and
thresholds in those normalized units. Never fitted on test images.

The image threshold follows a *threshold policy*, stored as data with every entry:

- ``z:K`` (default ``z:3``): flag an image when its z-score exceeds ``K``;
- ``fpr:R``: flag an image when its z-score exceeds the ``1 - R`` quantile of the validation normals'
  z-scores, i.e. a target false-reject rate ``R`` on normal images. It needs at least
  :func:`min_val_images` ``(R)`` validation images per category to be measurable; with fewer the entry
  carries a ``warning`` (and :func:`fit_normalization` emits a :class:`UserWarning`).

The threshold is always stored in z units (``image_threshold_z``), so a runtime needs only the entry.
This module is numpy-only: the torch-free runtime imports it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomopt.errors import CheckpointError, ConfigError, DataError

DEFAULT_IMAGE_Z = 3.0
DEFAULT_PIXEL_Z = 4.0
DEFAULT_POLICY = "z:3"
#: The ``category`` value that asks for the mean of all categories' statistics (never implied).
POOLED = "pooled"
_NUMERIC_FIELDS = ("score_mean", "score_std", "image_threshold_z", "map_mean", "map_std", "pixel_threshold_z")
_POSITIVE_FIELDS = ("score_std", "map_std")


@dataclass(frozen=True)
class ThresholdPolicy:
    """How the image threshold is chosen from the validation normals: ``kind`` ``z`` or ``fpr``."""

    kind: str
    value: float

    @property
    def spec(self) -> str:
        """The policy as text, e.g. ``z:3`` or ``fpr:0.01`` (what :func:`parse_policy` reads)."""
        return f"{self.kind}:{self.value:g}"

    def min_val_images(self) -> int:
        """Validation images per category needed to measure this policy (1 for ``z``)."""
        return min_val_images(self.value) if self.kind == "fpr" else 2


def min_val_images(rate: float) -> int:
    """Normal validation images needed to place a threshold at false-reject rate ``rate``: enough that
    at least 10 images lie above it (``ceil(10 / rate)``); below that the quantile is too coarse."""
    return int(math.ceil(10.0 / rate))


def parse_policy(spec: str | ThresholdPolicy | None) -> ThresholdPolicy:
    """``"z:3"`` / ``"fpr:0.01"`` (or a :class:`ThresholdPolicy`, or None = ``z:3``) to a policy."""
    if spec is None:
        spec = DEFAULT_POLICY
    if isinstance(spec, ThresholdPolicy):
        return spec
    kind, _, raw = str(spec).strip().partition(":")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if kind == "z" and math.isfinite(value):
        return ThresholdPolicy("z", value)
    if kind == "fpr" and 0.0 < value < 1.0:
        return ThresholdPolicy("fpr", value)
    raise ConfigError(
        f"threshold policy {spec!r} not understood; use z:K (z-score above K, e.g. z:3) or fpr:R "
        "(target false-reject rate R on validation normals, 0 < R < 1, e.g. fpr:0.01)"
    )


def _image_threshold(z: np.ndarray, policy: ThresholdPolicy) -> float:
    if policy.kind == "z":
        return float(policy.value)
    # smallest threshold that rejects at most a fraction R of the validation normals (strict '>')
    k = int(math.floor(policy.value * z.size))  # images allowed above the threshold
    ordered = np.sort(z)
    return float(ordered[z.size - 1 - k]) if k < z.size else float(ordered[0])


def fit_normalization(
    categories: Iterable[str],
    scores: np.ndarray,
    maps: np.ndarray | None = None,
    image_z: float = DEFAULT_IMAGE_Z,
    pixel_z: float = DEFAULT_PIXEL_Z,
    policy: str | ThresholdPolicy | None = None,
    source: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-category statistics of normal validation scores (and maps) with image thresholds from
    ``policy`` (default ``z:image_z``) and pixel thresholds at ``pixel_z``. ``source`` (e.g. "onnxruntime
    int8 artifact") is recorded in each entry as ``fitted_on``."""
    pol = parse_policy(policy) if policy is not None else ThresholdPolicy("z", float(image_z))
    cats = np.asarray(list(categories))
    scores = np.asarray(scores, dtype=np.float64)
    if cats.size != scores.size:
        raise DataError(f"fit_normalization: {cats.size} categories but {scores.size} scores")
    out: dict[str, dict[str, Any]] = {}
    for cat in sorted(set(cats.tolist())):
        sel = cats == cat
        s = scores[sel]
        if not np.isfinite(s).all():
            raise DataError(f"category '{cat}': validation scores contain NaN/Inf; the model is broken")
        mean = float(s.mean())
        std = float(max(s.std(), 1e-6 * max(abs(mean), 1e-12), 1e-12))
        entry: dict[str, Any] = {
            "score_mean": mean,
            "score_std": std,
            "image_threshold_z": _image_threshold((s - mean) / std, pol),
            "threshold_policy": pol.spec,
            "n_val": int(sel.sum()),
        }
        need = pol.min_val_images()
        if s.size < need:
            entry["warning"] = (
                f"threshold policy {pol.spec} needs >= {need} validation images per category, "
                f"'{cat}' has {s.size}: the threshold is a rough estimate"
            )
            warnings.warn(entry["warning"], UserWarning, stacklevel=2)
        if source:
            entry["fitted_on"] = source
        if maps is not None:
            m = np.asarray(maps[sel], dtype=np.float64)
            entry["map_mean"] = float(m.mean())
            entry["map_std"] = float(max(m.std(), 1e-12))
            entry["pixel_threshold_z"] = float(pixel_z)
        out[cat] = entry
    return out


def validate_normalization(norm: Any, where: str) -> dict[str, dict[str, Any]]:
    """Check a normalization mapping (category -> entry); raise a one-line :class:`CheckpointError`
    naming ``where`` and the field when a number is missing, not finite, or a std is not positive."""
    if not isinstance(norm, dict):
        raise CheckpointError(f"{where}: field 'normalization' must be an object (category -> statistics)")
    for cat, entry in norm.items():
        field = f"normalization.{cat}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where}: field '{field}' must be an object")
        for key in ("score_mean", "score_std"):
            if key not in entry:
                raise CheckpointError(f"{where}: field '{field}.{key}' is missing")
        for key in _NUMERIC_FIELDS:
            if key not in entry:
                continue
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CheckpointError(f"{where}: field '{field}.{key}' must be a finite number, not {value!r}")
            if key in _POSITIVE_FIELDS and value <= 0:
                raise CheckpointError(f"{where}: field '{field}.{key}' must be > 0, not {value!r}")
    return norm


def resolve_category(norm: dict[str, Any], category: str | None) -> str:
    """The category whose statistics apply: ``category`` itself, ``"pooled"`` when asked for, or the only
    category when ``category`` is None. Anything else is a :class:`DataError` listing the known ones."""
    known = sorted(norm)
    if not known:
        raise CheckpointError(
            "no per-category thresholds (normalization is empty): the model was not finished; "
            "re-export it from a complete checkpoint"
        )
    if category == POOLED:
        return POOLED
    if category is None:
        if len(known) == 1:
            return known[0]
        raise DataError(
            f"this model serves several categories ({', '.join(known)}): name one "
            f"(or '{POOLED}' for the mean of their statistics)"
        )
    if category not in norm:
        raise DataError(
            f"unknown category {category!r}; known: {', '.join(known)} (or '{POOLED}' for the mean of their statistics)"
        )
    return category


def category_entry(norm: dict[str, Any], category: str | None) -> dict[str, Any]:
    """The normalization entry for ``category`` (see :func:`resolve_category`; ``"pooled"`` gives the
    mean of the known categories' statistics)."""
    name = resolve_category(norm, category)
    return _pooled(norm) if name == POOLED else norm[name]


def normalize_scores(scores: np.ndarray, categories: Iterable[str], norm: dict[str, Any]) -> np.ndarray:
    """Z-scores of raw image scores, each against its own category's validation statistics (an unknown
    category raises :class:`DataError`)."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.empty_like(scores)
    for i, cat in enumerate(categories):
        entry = category_entry(norm, cat)
        out[i] = (scores[i] - entry["score_mean"]) / entry["score_std"]
    return out


def decide(scores: np.ndarray, categories: Iterable[str], norm: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(z, anomalous)`` per image: z-scores and the decision ``z > image_threshold_z`` of each image's
    category, exactly as the runtime decides."""
    cats = list(categories)
    z = normalize_scores(scores, cats, norm)
    thr = np.array([float(category_entry(norm, c).get("image_threshold_z", DEFAULT_IMAGE_Z)) for c in cats])
    return z, z > thr


def _pooled(norm: dict[str, Any]) -> dict[str, Any]:
    """Statistics for ``category="pooled"``: the mean of the known categories' entries."""
    keys = _NUMERIC_FIELDS
    pooled = {
        k: float(np.mean([v[k] for v in norm.values() if k in v]))
        for k in keys
        if any(k in v for v in norm.values())
    }
    pooled.setdefault("image_threshold_z", DEFAULT_IMAGE_Z)
    pooled.setdefault("pixel_threshold_z", DEFAULT_PIXEL_Z)
    return pooled
