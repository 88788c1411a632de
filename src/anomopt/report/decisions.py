"""Results at the shipped threshold per category, for display: false-reject rate, escape rate, F1.

Read from ``metrics["per_category"][cat]`` / ``metrics["mean"]`` (keys ``false_reject_rate``,
``escape_rate``, ``f1_at_threshold``, as :func:`anomopt.metrics.evaluate_predictions` reports them when
it is given thresholds). Where a variant's metrics lack them, they are computed here from its scores and
its own per-category normalization (image score z above ``image_threshold_z`` = rejected); "n/a" when
neither is possible.
"""

from __future__ import annotations

from typing import Any

import numpy as np

THRESHOLD_KEYS = ("false_reject_rate", "escape_rate", "f1_at_threshold")


def _rates(labels: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    normal, defect = labels == 0, labels == 1
    tp = int(np.sum(flagged & defect))
    fp = int(np.sum(flagged & normal))
    fn = int(np.sum(~flagged & defect))
    nan = float("nan")
    return {
        "false_reject_rate": fp / int(normal.sum()) if normal.any() else nan,
        "escape_rate": fn / int(defect.sum()) if defect.any() else nan,
        "f1_at_threshold": 2 * tp / (2 * tp + fp + fn) if defect.any() else nan,
    }


def _computed(variant: Any) -> dict[str, dict[str, float]]:
    norm = variant.normalization or {}
    cats = np.asarray(variant.categories)
    labels = np.asarray(variant.labels).astype(int)
    scores = np.asarray(variant.scores, dtype=np.float64)
    out: dict[str, dict[str, float]] = {}
    for cat in sorted(set(cats.tolist())):
        entry = norm.get(cat)
        if not entry or "score_mean" not in entry or "image_threshold_z" not in entry:
            continue
        sel = cats == cat
        z = (scores[sel] - entry["score_mean"]) / entry["score_std"]
        out[cat] = _rates(labels[sel], z > entry["image_threshold_z"])
    if out:
        out["mean"] = {k: float(np.nanmean([r[k] for r in out.values()])) if any(
            np.isfinite(r[k]) for r in out.values()) else float("nan") for k in THRESHOLD_KEYS}
    return out


def _first_finite(*values: Any) -> float | None:
    for v in values:
        if v is not None and np.isfinite(float(v)):
            return float(v)
    return None


def threshold_results(variant: Any) -> dict[str, dict[str, float | None]]:
    """``{category or "mean": {key: value or None}}`` for a :class:`~anomopt.report.ReportVariant`,
    preferring the keys in its metrics over the local computation."""
    metrics = variant.metrics
    fallback = _computed(variant)
    out: dict[str, dict[str, float | None]] = {}
    groups = {**metrics.get("per_category", {}), "mean": metrics.get("mean", {})}
    for cat, entry in groups.items():
        local = fallback.get(cat, {})
        out[cat] = {k: _first_finite(entry.get(k), local.get(k)) for k in THRESHOLD_KEYS}
    return out
