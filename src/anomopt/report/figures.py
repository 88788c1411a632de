"""Matplotlib figures of the report: AUROC bars, ROC curves, anomaly maps beside each other with a colour
bar, accuracy vs latency. Legends sit outside the axes so they never cover data."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

COLOURS = plt.get_cmap("tab10").colors
STYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def to_png(fig: Any) -> bytes:
    """Render and close a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def auroc_bars(categories: Sequence[str], series: dict[str, Sequence[float]], title: str) -> bytes:
    """Grouped bars: one group per category, one bar per variant (values in [0, 1]); legend to the right."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(categories) + 2), 3.2))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [100 * v for v in values], width, label=name,
               color=COLOURS[i % len(COLOURS)])
    ax.set_xticks(x, categories, rotation=20, ha="right")
    finite = [100 * v for vs in series.values() for v in vs if np.isfinite(v)]
    lo = min(finite + [90.0])
    ax.set_ylim(max(0.0, lo - 5), 100.5)
    ax.set_ylabel("AUROC (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def accuracy_vs_latency(points: Sequence[dict[str, Any]], title: str) -> bytes:
    """Mean image AUROC against batch-1 latency, one marker per variant, named in a legend beside the axes
    (with its numbers), so labels cannot collide or run off the plot."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    lat = np.array([p["latency_ms"] for p in points], dtype=float)
    acc = np.array([100 * p["image_auroc"] for p in points], dtype=float)
    for i, p in enumerate(points):
        ax.scatter(lat[i], acc[i], s=55, marker=MARKERS[i % len(MARKERS)], color=COLOURS[i % len(COLOURS)],
                   label=f"{p['name']}: {lat[i]:.1f} ms, {acc[i]:.1f}%", zorder=3, edgecolors="black",
                   linewidths=0.5)
    ax.set_xscale("log")
    lo, hi = float(np.nanmin(lat)), float(np.nanmax(lat))
    ax.set_xlim(lo / 1.4, hi * 1.4)
    # labelled ticks at 1, 2, 5 x 10^k in plain numbers; unlabelled minor ticks (no colliding labels)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    finite = acc[np.isfinite(acc)]
    if finite.size:
        pad = max(1.0, 0.15 * float(finite.max() - finite.min()))
        ax.set_ylim(float(finite.min()) - pad, min(100.0 + pad / 2, float(finite.max()) + pad))
    ax.set_xlabel("batch-1 latency p50, ms (log scale; left is faster)")
    ax.set_ylabel("mean image AUROC (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return to_png(fig)


def _same_curve(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return a[0].shape == b[0].shape and np.allclose(a[0], b[0]) and np.allclose(a[1], b[1])


def curve_twins(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, str | None]:
    """For each variant (``{name: (labels, scores)}``), the earlier variant with the identical ROC curve,
    or None: the lines would hide each other, so the legend names the twin."""
    seen: list[tuple[str, tuple[np.ndarray, np.ndarray]]] = []
    out: dict[str, str | None] = {}
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        out[name] = next((other for other, c in seen if _same_curve(c, (fpr, tpr))), None)
        seen.append((name, (fpr, tpr)))
    return out


def roc_grid(per_category: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], columns: int = 4) -> bytes:
    """Image-level ROC curves, one panel per category, one line per variant (``{cat: {name: (labels,
    scores)}}``). Variants get distinct colours, dash patterns and offset markers; a variant whose curve is
    identical to an earlier one says so in its panel's legend (``= name``)."""
    cats = list(per_category)
    cols = max(1, min(columns, len(cats)))
    rows = (len(cats) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.3 * rows), squeeze=False)
    names = list(dict.fromkeys(n for c in cats for n in per_category[c]))
    for ax, cat in zip(axes.ravel(), cats):
        twins = curve_twins(per_category[cat])
        for name, (labels, scores) in per_category[cat].items():
            i = names.index(name)
            fpr, tpr, _ = roc_curve(labels, scores)
            label = name if twins[name] is None else f"{name} (= {twins[name]})"
            step = max(1, len(fpr) // 6)
            ax.plot(fpr, tpr, linestyle=STYLES[i % len(STYLES)], color=COLOURS[i % len(COLOURS)], lw=1.6,
                    marker=MARKERS[i % len(MARKERS)], markersize=4, markevery=(i % step, step), label=label)
        ax.plot([0, 1], [0, 1], "k:", lw=0.7)
        ax.set_title(cat, fontsize=10)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="lower right", framealpha=0.85)
    for ax in axes.ravel()[len(cats):]:
        ax.axis("off")
    fig.tight_layout()
    return to_png(fig)


def map_panel(rows: Sequence[dict[str, Any]], variants: Sequence[str], threshold_z: float, title: str) -> bytes:
    """One row per image: the image (captioned with its score and decision), the ground truth, then each
    variant's anomaly map in the category's normalized units (z over its normal validation pixels) on one
    shared colour scale, with the predicted region (z above the pixel threshold) outlined. One colour bar
    marks the threshold. ``rows``: dicts with ``image``, ``gt``, ``caption``, ``maps`` and ``notes``
    (``{variant: z-map}`` and ``{variant: short text}``)."""
    vmax = max(2.0 * threshold_z, 1.0)
    floor = threshold_z / 2  # below half the threshold the map is not drawn: a normal image stays plain
    cols = 2 + len(variants)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols + 0.8, 2.7 * len(rows)), squeeze=False)
    im = None
    for r, row in enumerate(rows):
        ax = axes[r]
        ax[0].imshow(row["image"])
        ax[0].set_title(row["caption"], fontsize=7.5)
        ax[1].imshow(row["gt"], cmap="gray", vmin=0, vmax=1)
        ax[1].set_title("ground truth" if row["gt"].any() else "ground truth (normal)", fontsize=7.5)
        for j, name in enumerate(variants):
            z = row["maps"][name]
            a = ax[2 + j]
            a.imshow(row["image"])
            im = a.imshow(np.ma.masked_less(np.clip(z, 0, vmax), floor), cmap="inferno", vmin=0, vmax=vmax,
                          alpha=0.65)
            if (z > threshold_z).any():
                a.contour((z > threshold_z).astype(float), levels=[0.5], colors="cyan", linewidths=1.0)
            if row["gt"].any():
                a.contour(row["gt"].astype(float), levels=[0.5], colors="lime", linewidths=0.7)
            a.set_title(f"{name}\n{row['notes'].get(name, '')}", fontsize=7.5)
        for a in ax:
            a.axis("off")
    if im is not None:
        cbar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, pad=0.02)
        cbar.set_label(f"anomaly, z over normal pixels (cyan line: threshold {threshold_z:g}; "
                       f"under {floor:g} not drawn)", fontsize=8)
        cbar.ax.axhline(threshold_z, color="cyan", lw=2.5)
    fig.suptitle(title + "  (cyan: predicted region; green: true defect)", fontsize=9)
    return to_png(fig)
