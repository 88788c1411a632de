"""Per-category score normalization and thresholds, fitted on the held-out *normal* validation split.

A unified model serves many products whose raw scores live on different scales. For each category we
store the mean and standard deviation of the validation images' scores and of their map pixels, and
thresholds in those normalized units. Never fitted on test images.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

DEFAULT_IMAGE_Z = 3.0
DEFAULT_PIXEL_Z = 4.0


def fit_normalization(
    categories: Iterable[str],
    scores: np.ndarray,
    maps: np.ndarray | None = None,
    image_z: float = DEFAULT_IMAGE_Z,
    pixel_z: float = DEFAULT_PIXEL_Z,
) -> dict[str, dict[str, float]]:
    """Per-category statistics of normal validation scores (and maps) with z-score thresholds."""
    cats = np.asarray(list(categories))
    scores = np.asarray(scores, dtype=np.float64)
    out: dict[str, dict[str, float]] = {}
    for cat in sorted(set(cats.tolist())):
        sel = cats == cat
        s = scores[sel]
        entry = {
            "score_mean": float(s.mean()),
            "score_std": float(max(s.std(), 1e-6 * max(abs(s.mean()), 1e-12), 1e-12)),
            "image_threshold_z": float(image_z),
            "n_val": int(sel.sum()),
        }
        if maps is not None:
            m = np.asarray(maps[sel], dtype=np.float64)
            entry["map_mean"] = float(m.mean())
            entry["map_std"] = float(max(m.std(), 1e-12))
            entry["pixel_threshold_z"] = float(pixel_z)
        out[cat] = entry
    return out


def normalize_scores(scores: np.ndarray, categories: Iterable[str], norm: dict[str, Any]) -> np.ndarray:
    """Z-scores of raw image scores, each against its own category's validation statistics."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.empty_like(scores)
    for i, cat in enumerate(categories):
        entry = norm.get(cat) or _pooled(norm)
        out[i] = (scores[i] - entry["score_mean"]) / entry["score_std"]
    return out


def _pooled(norm: dict[str, Any]) -> dict[str, float]:
    """Fallback statistics for an unknown category: the mean of the known ones."""
    if not norm:
        return {"score_mean": 0.0, "score_std": 1.0, "image_threshold_z": DEFAULT_IMAGE_Z}
    keys = ("score_mean", "score_std", "map_mean", "map_std")
    pooled = {
        k: float(np.mean([v[k] for v in norm.values() if k in v]))
        for k in keys
        if any(k in v for v in norm.values())
    }
    pooled.setdefault("image_threshold_z", DEFAULT_IMAGE_Z)
    pooled.setdefault("pixel_threshold_z", DEFAULT_PIXEL_Z)
    return pooled


def category_entry(norm: dict[str, Any], category: str | None) -> dict[str, float]:
    """The normalization entry for ``category`` (pooled when None or unknown)."""
    if category is not None and category in norm:
        return norm[category]
    return _pooled(norm)
