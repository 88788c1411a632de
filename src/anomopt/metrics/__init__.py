"""Anomaly-detection metrics: image/pixel AUROC, F1-max, AUPRO and per-category reports."""

from __future__ import annotations

from anomopt.metrics.aupro import aupro, pro_curve
from anomopt.metrics.classification import f1_max, image_auroc, pixel_auroc
from anomopt.metrics.report import evaluate_predictions, format_table, to_markdown

__all__ = [
    "aupro",
    "evaluate_predictions",
    "f1_max",
    "format_table",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "to_markdown",
]
