"""Per-category evaluation of anomaly-detection predictions and text/markdown tables of the result.

:func:`evaluate_predictions` returns::

    {
        "per_category": {cat: {"image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_threshold",
                               "false_reject_rate", "escape_rate", "f1_at_threshold",
                               "median_z_good", "n_normal", "n_anomalous"[, "warning"]}},
        "mean": {"image_auroc", "pixel_auroc", "aupro", "f1_max", "false_reject_rate", "escape_rate",
                 "f1_at_threshold", "median_z_good", "n_normal", "n_anomalous", "n_categories"},
        "warnings": [str, ...],
    }

The decision metrics are measured at the threshold a model ships (its ``normalization``): the
false-reject rate is the share of good test images flagged anomalous, the escape rate the share of
anomalous test images passed as good, ``f1_at_threshold`` the F1 of those decisions, and
``median_z_good`` the median z-score of the good test images. They are NaN without a ``normalization``.

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
    ("false_reject_rate", "FR@thr"),
    ("escape_rate", "Escape@thr"),
    ("f1_at_threshold", "F1@thr"),
)
#: Metrics at the shipped threshold (NaN when no normalization is given).
DECISION_KEYS = ("false_reject_rate", "escape_rate", "f1_at_threshold", "median_z_good")


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
    *,
    normalization: dict[str, Any] | None = None,
    has_mask: object | None = None,
) -> dict[str, Any]:
    """Compute image and pixel metrics per category and their mean over categories.

    ``categories``, ``labels`` (0 normal / 1 anomalous) and ``scores`` have one entry per image;
    ``masks``/``maps`` are (N,H,W) or (N,1,H,W) in the same order. Pixel metrics are computed when
    ``pixel_metrics`` is true and both ``masks`` and ``maps`` are given, otherwise they are NaN.
    A category with a single image class gets NaN image metrics (and a warning), and one whose masks
    have no anomalous or no normal pixel gets NaN pixel metrics (and a warning); NaNs are left out of
    the mean. Categories keep their order of first appearance.

    ``normalization`` (per-category statistics and thresholds, as an artifact's meta.json holds them)
    adds the decision metrics at the shipped threshold; a category it does not know raises
    :class:`DataError`. ``has_mask`` (N bools) marks anomalous images that have a mask: pixel metrics
    of a category use its good images and its masked anomalous ones, and are NaN ("n/a", with a warning)
    when none of its anomalous images has a mask.
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
    masked = np.ones(y.size, bool) if has_mask is None else np.asarray(has_mask, dtype=bool).reshape(-1)
    if masked.size != y.size:
        raise DataError(f"has_mask holds {masked.size} entries but labels hold {y.size}")
    z_all = decisions = None
    if normalization is not None:
        from anomopt.normalization import decide

        z_all, decisions = decide(s, cats, normalization)

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
            **{k: math.nan for k in DECISION_KEYS},
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
        if decisions is not None and z_all is not None:
            entry.update(_decision_metrics(yc, decisions[idx], z_all[idx]))
        unmasked = int(np.count_nonzero((yc == 1) & ~masked[idx]))
        if do_pixels and unmasked == n_anom and n_anom > 0:
            notes.append("no masks (image-level labels): pixel metrics n/a")
        elif do_pixels:
            if unmasked:
                notes.append(f"{unmasked} anomalous images without masks left out of pixel metrics")
                idx = idx[masked[idx]]
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
        key: _nanmean([e[key] for e in per_category.values()])
        for key in dict.fromkeys([k for k, _ in METRIC_COLUMNS] + list(DECISION_KEYS))
    }
    mean["n_normal"] = sum(e["n_normal"] for e in per_category.values())
    mean["n_anomalous"] = sum(e["n_anomalous"] for e in per_category.values())
    mean["n_categories"] = len(per_category)
    return {"per_category": per_category, "mean": mean, "warnings": warnings}


def _decision_metrics(y: np.ndarray, flagged: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """False-reject rate, escape rate, F1 and the good images' median z of one category's decisions."""
    good, bad = y == 0, y == 1
    tp = int(np.count_nonzero(flagged & bad))
    fp = int(np.count_nonzero(flagged & good))
    fn = int(np.count_nonzero(~flagged & bad))
    return {
        "false_reject_rate": fp / int(good.sum()) if good.any() else math.nan,
        "escape_rate": fn / int(bad.sum()) if bad.any() else math.nan,
        "f1_at_threshold": 2 * tp / (2 * tp + fp + fn) if bad.any() else math.nan,
        "median_z_good": float(np.median(z[good])) if good.any() else math.nan,
    }


def _pct(value: object) -> str:
    """A metric in [0, 1] as a percentage with one decimal, or 'n/a' when undefined or not measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100.0 * float(value):.1f}"


def _rows(result: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(name, formatted metric cells) for every category, then 'mean'."""
    rows = [(cat, [_pct(e.get(k)) for k, _ in METRIC_COLUMNS]) for cat, e in result["per_category"].items()]
    rows.append(("mean", [_pct(result["mean"].get(k)) for k, _ in METRIC_COLUMNS]))
    return rows


def format_table(result: dict[str, Any], title: str | None = None) -> str:
    """Fixed-width text table: one row per category plus 'mean', metrics in percent ('n/a' where not
    measured: pixel metrics without masks, decisions without a threshold); warnings follow the table."""
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
    out += [f"note: {w}" for w in result.get("warnings", [])]
    return "\n".join(out)


def to_markdown(result: dict[str, Any]) -> str:
    """Markdown table: one row per category plus 'mean', metrics in percent."""
    headers = ["Category"] + [h for _, h in METRIC_COLUMNS]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * len(METRIC_COLUMNS)) + "|"]
    for name, cells in _rows(result):
        out.append("| " + " | ".join([name.replace("|", "\\|"), *cells]) + " |")
    return "\n".join(out)
