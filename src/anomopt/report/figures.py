"""Matplotlib figures of the report: AUROC bars, ROC curves, overlays, accuracy vs latency."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def to_png(fig: Any) -> bytes:
    """Render and close a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def auroc_bars(categories: Sequence[str], series: dict[str, Sequence[float]], title: str) -> bytes:
    """Grouped bars: one group per category, one bar per variant (values in [0, 1])."""
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(categories) + 2), 3.4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [100 * v for v in values], width, label=name)
    ax.set_xticks(x, categories, rotation=20)
    lo = min([100 * v for vs in series.values() for v in vs if np.isfinite(v)] + [90])
    ax.set_ylim(max(0, lo - 5), 100.5)
    ax.set_ylabel("AUROC (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes:
    """Image-level ROC curves, one line per variant: ``{name: (labels, scores)}``."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return to_png(fig)


def overlay_row(image: np.ndarray, gt: np.ndarray, amap: np.ndarray, pred: np.ndarray, caption: str) -> bytes:
    """Image | ground truth | anomaly map over the image | predicted mask outline."""
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.7))
    axes[0].imshow(image)
    axes[0].set_title(caption, fontsize=8)
    axes[1].imshow(gt, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground truth", fontsize=8)
    axes[2].imshow(image)
    axes[2].imshow(amap, cmap="jet", alpha=0.5)
    axes[2].set_title("anomaly map", fontsize=8)
    axes[3].imshow(image)
    if pred.any():
        axes[3].contour(pred.astype(float), levels=[0.5], colors="red", linewidths=1.2)
    if gt.any():
        axes[3].contour(gt.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
    axes[3].set_title("predicted (red) vs truth (green)", fontsize=8)
    for a in axes:
        a.axis("off")
    return to_png(fig)


def accuracy_vs_latency(points: Sequence[dict[str, Any]], title: str) -> bytes:
    """Scatter of mean image AUROC against batch-1 latency, one labelled point per variant."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for p in points:
        ax.scatter(p["latency_ms"], 100 * p["image_auroc"], s=40)
        ax.annotate(p["name"], (p["latency_ms"], 100 * p["image_auroc"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency, ms, log scale (lower is better)")
    ax.set_ylabel("mean image AUROC (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return to_png(fig)
