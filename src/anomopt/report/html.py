"""Assemble the report: one HTML file a person opens, with every picture inlined and no JavaScript."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomopt.io import write_text_atomic
from anomopt.report import figures
from anomopt.report.decisions import THRESHOLD_KEYS, threshold_results


@dataclass
class ReportVariant:
    """One model variant in the report (FP32, a PTQ variant, QAT...).

    ``latency``: a :mod:`anomopt.bench` measurement (``p50_ms`` ... ``throughput_ips``, ``peak_rss_mb``);
    ``normalization``: the variant's per-category statistics and thresholds (decisions at the shipped
    threshold are computed from them when ``metrics`` lacks them).
    """

    name: str
    metrics: dict[str, Any]  # evaluate_predictions() result
    labels: np.ndarray
    scores: np.ndarray
    categories: list[str]
    latency_ms: float | None = None
    size_bytes: int | None = None
    latency: dict[str, Any] | None = None
    normalization: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latency_ms is None and self.latency:
            self.latency_ms = self.latency.get("p50_ms")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    if x is None or isinstance(x, str):
        return "n/a" if x is None else _esc(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return fmt.format(scale * v) if np.isfinite(v) else "n/a"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape before)."""
    h = "".join(f"<th>{c}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{h}</tr>{body}</table>'


def _metrics_table(variants: list[ReportVariant], baseline: str | None) -> str:
    base = next((v for v in variants if v.name == baseline), None)
    head = ["variant", "image AUROC %", "pixel AUROC %", "AUPRO %", "F1-max %", "p50 ms", "p90 ms", "p99 ms",
            "speed-up vs " + _esc(baseline or "-"), "img/s (batch)", "peak RSS MiB", "size MB"]
    rows = []
    for v in variants:
        m, lat = v.metrics["mean"], v.latency or {}
        speed = (
            f"{base.latency_ms / v.latency_ms:.2f}x" if base and base.latency_ms and v.latency_ms else "n/a"
        )
        thr = _num(lat.get("throughput_ips")) + (f" ({lat['batch']})" if lat.get("batch") else "")
        rows.append([
            _esc(v.name), _num(m.get("image_auroc"), scale=100), _num(m.get("pixel_auroc"), scale=100),
            _num(m.get("aupro"), scale=100), _num(m.get("f1_max"), scale=100),
            _num(v.latency_ms, "{:.2f}"), _num(lat.get("p90_ms"), "{:.2f}"), _num(lat.get("p99_ms"), "{:.2f}"),
            speed, thr, _num(lat.get("peak_rss_mb"), "{:.0f}"),
            _num(v.size_bytes, "{:.2f}", 1e-6) if v.size_bytes else "n/a",
        ])
    return _table(head, rows, "num")


def _threshold_table(variants: list[ReportVariant], cats: list[str]) -> str:
    head = ["category"] + [
        f"{_esc(v.name)}<br/><small>false rejects / escapes / F1</small>" for v in variants
    ]
    per_variant = [threshold_results(v) for v in variants]
    rows = []
    for cat in [*cats, "mean"]:
        cells = [f"<b>{_esc(cat)}</b>" if cat == "mean" else _esc(cat)]
        for res in per_variant:
            r = res.get(cat, {})
            cells.append(" / ".join(_num(r.get(k), scale=100) for k in THRESHOLD_KEYS))
        rows.append(cells)
    return _table(head, rows, "num")


def _value_html(v: Any, depth: int = 0) -> str:
    """A pass note value as readable HTML: numbers rounded, long lists shortened with a count, dicts as
    nested lists; never a raw Python repr cut mid-text."""
    if isinstance(v, float):
        return _esc(f"{v:.4g}")
    if isinstance(v, dict):
        if not v:
            return "none"
        items = list(v.items())
        shown = items[:10] if depth else items[:16]
        lis = "".join(f"<li>{_esc(k)}: {_value_html(x, depth + 1)}</li>" for k, x in shown)
        more = f"<li>... {len(items) - len(shown)} more</li>" if len(items) > len(shown) else ""
        return f"<ul>{lis}{more}</ul>"
    if isinstance(v, (list, tuple)):
        if not v:
            return "none"
        if all(isinstance(x, (int, float, str, bool)) or x is None for x in v):
            shown = [_value_html(x, depth + 1) for x in v[:8]]
            tail = f", ... ({len(v)} in all)" if len(v) > 8 else ""
            return ", ".join(shown) + tail
        return _value_html({str(i): x for i, x in enumerate(v)}, depth)
    return _esc(v)


def _drift_table(passes: list[dict[str, Any]]) -> str:
    head = ["pass", "seconds", "score drift", "map drift", "tolerance", "rank corr.", "notes"]
    rows = []
    for p in passes:
        d = p.get("drift")
        tol = p.get("tolerance") or {}
        tol_text = ", ".join(f"{k.replace('max_', '').replace('_', ' ')} &le; {v:g}" for k, v in tol.items()) or "none"
        if d is None:
            reason = p.get("drift_note") or "not measured"
            drift_cells = [f"n/a <small>({_esc(reason)})</small>", "n/a"]
            corr = ""
        else:
            drift_cells = [_num(d.get("score"), "{:.3g}"), _num(d.get("map"), "{:.3g}")]
            corr = _num(d.get("score_rank_corr"), "{:.4f}")
        notes = p.get("notes") or {}
        rows.append([_esc(p["name"]), f"{p['seconds']:.2f}", *drift_cells, tol_text, corr,
                     f'<div class="notes">{_value_html(notes)}</div>'])
    return _table(head, rows)


def _context_table(context: dict[str, Any]) -> str:
    return _table(["", ""], [[_esc(k), _value_html(v)] for k, v in context.items()], "ctx")


def _roc_section(variants: list[ReportVariant], cats: list[str]) -> str:
    per_cat: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for c in cats:
        for v in variants:
            sel = np.asarray(v.categories) == c
            labels = np.asarray(v.labels)[sel]
            if len(set(labels.tolist())) == 2:
                per_cat.setdefault(c, {})[v.name] = (labels, np.asarray(v.scores)[sel])
    if not per_cat:
        return "<p>No category has both normal and defective test images.</p>"
    return (
        "<p>Variants have their own colour, dash pattern and markers; a curve identical to an earlier variant's "
        "is marked <code>(= name)</code> in the legend, since it is drawn on top of it.</p>"
        + _img(figures.roc_grid(per_cat), "ROC curves")
    )


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;
vertical-align:top}th{background:#f0f0f0}table.num td{text-align:right}table.num td:first-child{text-align:left}
table.ctx th{display:none}img{max-width:100%;margin:4px 0}h2{border-bottom:1px solid #ddd;margin-top:1.5em}
.notes{font-size:12px;max-width:520px;overflow-wrap:anywhere}.notes ul{margin:0;padding-left:1.1em}
p.note{background:#f6f8fa;border-left:4px solid #888;padding:.4em .8em}pre{background:#f6f8fa;padding:.5em}"""


def write_report(
    path: str | os.PathLike[str],
    title: str,
    variants: list[ReportVariant],
    passes: list[dict[str, Any]],
    map_panels: list[dict[str, Any]],
    summary: str = "",
    *,
    context: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    baseline: str | None = None,
    pass_title: str = "the INT8 pipeline",
) -> Path:
    """Write the report HTML atomically.

    ``map_panels``: dicts with ``category``, ``variants`` (names, in column order), ``threshold_z`` and
    ``rows`` (see :func:`figures.map_panel`). ``context``: machine / threads / image size / versions,
    shown as a table. ``notes``: sentences shown under the main table (e.g. why INT8 is only so much
    faster). ``baseline``: the variant the speed-up column divides by.
    """
    cats = sorted({c for v in variants for c in v.metrics["per_category"]})
    parts = [f"<h1>{_esc(title)}</h1>"]
    if context:
        parts.append("<h2>Machine and settings</h2>" + _context_table(context))
    parts.append("<h2>Accuracy, latency, memory and size</h2>" + _metrics_table(variants, baseline))
    parts.append(
        "<p><small>Latency: batch 1 after warm-up, ONNX Runtime or torch on the CPU with the threads above; "
        "speed-up = p50 of the baseline / p50 of the row; img/s at the batch size in brackets; peak RSS of the "
        "benchmark process (model, runtime and buffers).</small></p>"
    )
    parts += [f'<p class="note">{_esc(n)}</p>' for n in notes]
    parts.append(
        "<h2>Decisions at the shipped threshold</h2><p>Per category, with each variant's shipped "
        "per-category image threshold: false rejects (normal images flagged, % of normal), escapes (defective "
        "images passed, % of defective) and F1 of the decisions. n/a: not measurable (no normal or no "
        "defective image, or no threshold).</p>" + _threshold_table(variants, cats)
    )
    parts.append("<h2>AUROC per category</h2>")
    for key, name in (("image_auroc", "Image AUROC"), ("pixel_auroc", "Pixel AUROC")):
        series = {v.name: [v.metrics["per_category"][c].get(key, float("nan")) for c in cats] for v in variants}
        parts.append(_img(figures.auroc_bars(cats, series, f"{name} per category"), name))
    pts = [
        {"name": v.name, "latency_ms": v.latency_ms, "image_auroc": v.metrics["mean"]["image_auroc"]}
        for v in variants
        if v.latency_ms is not None
    ]
    if pts:
        parts.append("<h2>Accuracy vs latency</h2>" + _img(figures.accuracy_vs_latency(pts, title=""), "acc-lat"))
    parts.append("<h2>ROC curves (image level)</h2>" + _roc_section(variants, cats))
    if map_panels:
        parts.append(
            "<h2>Anomaly maps: FP32 beside INT8</h2><p>For each category: the defects with the largest masks "
            "and a normal test image. Maps are in the category's normalized units (z-score over the normal "
            "validation pixels), one colour scale for every panel, so a calm normal image looks calm and the "
            "threshold is a level on the colour bar.</p>"
        )
        for panel in map_panels:
            png = figures.map_panel(panel["rows"], panel["variants"], panel["threshold_z"], panel["category"])
            parts.append(_img(png, f"maps {panel['category']}"))
    parts.append(
        f"<h2>Per-pass drift of {_esc(pass_title)}</h2><p>Relative L2 change of image scores and anomaly maps "
        "against the input model on a held batch of normal images, after each pass, beside the tolerance the "
        "pass had to meet.</p>" + _drift_table(passes)
    )
    if summary:
        parts.append(f"<h2>Console summary</h2><pre>{_esc(summary)}</pre>")
    doc = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    out = Path(path)
    write_text_atomic(out, doc)
    return out
