"""Per-category evaluation of anomaly-detection predictions and text/markdown tables of the result.

:func:`evaluate_predictions` returns::

    {
        "per_category": {cat: {"image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_threshold",
                               "n_normal", "n_anomalous"[, "warning"]}},
        "mean": {"image_auroc", "pixel_auroc", "aupro", "f1_max", "n_normal", "n_anomalous",
                 "n_categories"},
        "warnings": [str, ...],
    }

Metrics are python floats (NaN when undefined or not computed). ``mean`` averages each metric over
the categories where it is defined (a macro average, not pooled over samples); its ``n_normal`` and
``n_anomalous`` are totals over all categories and ``n_categories`` the number of categories.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from anomopt.errors import DataError
from anomopt.metrics.aupro import aupro
from anomopt.metrics.classification import (
    _as_1d,
    _as_binary,
    _as_scores,
    _pixel_inputs,
    f1_max,
    image_auroc,
    pixel_auroc,
)

#: Metric keys, in table order, with their column headers.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("image_auroc", "Image AUROC"),
    ("pixel_auroc", "Pixel AUROC"),
    ("aupro", "AUPRO"),
    ("f1_max", "F1-max"),
)


def _nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none (without numpy's warning)."""
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def evaluate_predictions(
    categories: Sequence[str],
    labels: object,
    scores: object,
    masks: object | None = None,
    maps: object | None = None,
    pixel_metrics: bool = True,
) -> dict[str, Any]:
    """Compute image and pixel metrics per category and their mean over categories.

    ``categories``, ``labels`` (0 normal / 1 anomalous) and ``scores`` have one entry per image;
    ``masks``/``maps`` are (N,H,W) or (N,1,H,W) in the same order. Pixel metrics are computed when
    ``pixel_metrics`` is true and both ``masks`` and ``maps`` are given, otherwise they are NaN.
    A category with a single image class gets NaN image metrics (and a warning), and one whose masks
    have no anomalous or no normal pixel gets NaN pixel metrics (and a warning); NaNs are left out of
    the mean. Categories keep their order of first appearance.
    """
    cats = [str(c) for c in categories]
    y = _as_1d(_as_binary(labels, "labels"), "labels")
    s = _as_1d(_as_scores(scores, "scores"), "scores")
    if not (len(cats) == y.size == s.size):
        raise DataError(
            f"categories, labels and scores must have the same length, got {len(cats)}, {y.size}, {s.size}"
        )
    do_pixels = pixel_metrics and (masks is not None or maps is not None)
    if do_pixels:
        if masks is None or maps is None:
            missing = "maps" if maps is None else "masks"
            raise DataError(f"pixel metrics need both masks and maps; {missing} is missing")
        m, a = _pixel_inputs(masks, maps)
        if m.shape[0] != y.size:
            raise DataError(f"masks/maps hold {m.shape[0]} images but labels hold {y.size}")

    order = list(dict.fromkeys(cats))
    cat_arr = np.asarray(cats, dtype=object)
    per_category: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for cat in order:
        idx = np.flatnonzero(cat_arr == cat)
        yc, sc = y[idx], s[idx]
        n_anom = int(np.count_nonzero(yc))
        entry: dict[str, Any] = {
            "image_auroc": math.nan,
            "pixel_auroc": math.nan,
            "aupro": math.nan,
            "f1_max": math.nan,
            "f1_threshold": math.nan,
            "n_normal": int(yc.size - n_anom),
            "n_anomalous": n_anom,
        }
        notes: list[str] = []
        if 0 < n_anom < yc.size:
            entry["image_auroc"] = image_auroc(yc, sc)
            entry["f1_max"], entry["f1_threshold"] = f1_max(yc, sc)
        else:
            only = "anomalous" if n_anom else "normal"
            notes.append(f"only {only} images; image metrics undefined")
        if do_pixels:
            mc = m[idx]
            n_pos = int(np.count_nonzero(mc))
            if 0 < n_pos < mc.size:
                entry["pixel_auroc"] = pixel_auroc(mc, a[idx])
                entry["aupro"] = aupro(mc, a[idx])
            else:
                what = "anomalous" if n_pos == 0 else "normal"
                notes.append(f"no {what} mask pixels; pixel metrics undefined")
        if notes:
            entry["warning"] = "; ".join(notes)
            warnings.extend(f"{cat}: {note}" for note in notes)
        per_category[cat] = entry

    mean: dict[str, Any] = {
        key: _nanmean([e[key] for e in per_category.values()]) for key, _ in METRIC_COLUMNS
    }
    mean["n_normal"] = sum(e["n_normal"] for e in per_category.values())
    mean["n_anomalous"] = sum(e["n_anomalous"] for e in per_category.values())
    mean["n_categories"] = len(per_category)
    return {"per_category": per_category, "mean": mean, "warnings": warnings}


def _pct(value: object) -> str:
    """A metric in [0, 1] as a percentage with one decimal, or '-' when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * float(value):.1f}"


def _rows(result: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(name, formatted metric cells) for every category, then 'mean'."""
    rows = [(cat, [_pct(e.get(k)) for k, _ in METRIC_COLUMNS]) for cat, e in result["per_category"].items()]
    rows.append(("mean", [_pct(result["mean"].get(k)) for k, _ in METRIC_COLUMNS]))
    return rows


def format_table(result: dict[str, Any], title: str | None = None) -> str:
    """Fixed-width text table: one row per category plus 'mean', metrics in percent."""
    headers = ["Category"] + [h for _, h in METRIC_COLUMNS]
    rows = _rows(result)
    widths = [max(len(headers[0]), *(len(name) for name, _ in rows))]
    widths += [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(headers[1:])]

    def line(cells: list[str]) -> str:
        right = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([cells[0].ljust(widths[0]), *right])

    rule = "-" * len(line(headers))
    out = []
    if title:
        out.append(title)
    out += [line(headers), rule]
    out += [line([name, *cells]) for name, cells in rows[:-1]]
    out += [rule, line([rows[-1][0], *rows[-1][1]])]
    return "\n".join(out)


def to_markdown(result: dict[str, Any]) -> str:
    """Markdown table: one row per category plus 'mean', metrics in percent."""
    headers = ["Category"] + [h for _, h in METRIC_COLUMNS]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * len(METRIC_COLUMNS)) + "|"]
    for name, cells in _rows(result):
        out.append("| " + " | ".join([name.replace("|", "\\|"), *cells]) + " |")
    return "\n".join(out)
