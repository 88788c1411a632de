"""Assemble the report: one HTML file a person opens, with every picture inlined."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomopt.io import write_text_atomic
from anomopt.report import figures


@dataclass
class ReportVariant:
    """One model variant in the report (FP32, a PTQ variant, QAT...)."""

    name: str
    metrics: dict[str, Any]  # evaluate_predictions() result
    labels: np.ndarray
    scores: np.ndarray
    categories: list[str]
    latency_ms: float | None = None
    size_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


def _metrics_table(variants: list[ReportVariant]) -> str:
    head = (
        "<tr><th>variant</th><th>image AUROC</th><th>pixel AUROC</th><th>AUPRO</th><th>F1-max</th>"
        "<th>latency (ms, b=1)</th><th>size (MB)</th></tr>"
    )
    rows = []
    for v in variants:
        m = v.metrics["mean"]

        def pct(k: str, m=m) -> str:
            x = m.get(k, float("nan"))
            return "-" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"

        lat = f"{v.latency_ms:.1f}" if v.latency_ms is not None else "-"
        size = f"{v.size_bytes / 1e6:.2f}" if v.size_bytes else "-"
        rows.append(
            f"<tr><td>{html.escape(v.name)}</td><td>{pct('image_auroc')}</td><td>{pct('pixel_auroc')}</td>"
            f"<td>{pct('aupro')}</td><td>{pct('f1_max')}</td><td>{lat}</td><td>{size}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _drift_table(passes: list[dict[str, Any]]) -> str:
    head = (
        "<tr><th>pass</th><th>seconds</th><th>score drift</th><th>map drift</th><th>rank corr.</th>"
        "<th>tolerance</th><th>notes</th></tr>"
    )
    rows = []
    for p in passes:
        d = p.get("drift") or {}

        def f(k: str, d=d) -> str:
            x = d.get(k)
            return "-" if x is None else f"{x:.4g}"

        tol = ", ".join(f"{k.replace('max_', '')} {v:g}" for k, v in (p.get("tolerance") or {}).items())
        notes = html.escape(str({k: v for k, v in (p.get("notes") or {}).items() if k != "losses"})[:160])
        rows.append(
            f"<tr><td>{html.escape(p['name'])}</td><td>{p['seconds']:.2f}</td><td>{f('score')}</td>"
            f"<td>{f('map')}</td><td>{f('score_rank_corr')}</td><td>{html.escape(tol)}</td>"
            f"<td><small>{notes}</small></td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f0f0f0}img{max-width:100%;margin:4px 0}h2{border-bottom:1px solid #ddd;margin-top:1.5em}"""


def write_report(
    path: str | os.PathLike[str],
    title: str,
    variants: list[ReportVariant],
    passes: list[dict[str, Any]],
    overlays: list[dict[str, Any]],
    summary: str = "",
) -> Path:
    """Write the report HTML atomically. ``overlays``: dicts with image, gt, map, pred, caption."""
    cats = sorted({c for v in variants for c in v.metrics["per_category"]})
    parts = [f"<h1>{html.escape(title)}</h1>", f"<pre>{html.escape(summary)}</pre>" if summary else ""]
    parts.append("<h2>Accuracy, latency and size</h2>" + _metrics_table(variants))
    for key, name in (("image_auroc", "Image AUROC"), ("pixel_auroc", "Pixel AUROC")):
        series = {
            v.name: [v.metrics["per_category"][c].get(key, float("nan")) for c in cats] for v in variants
        }
        parts.append(_img(figures.auroc_bars(cats, series, f"{name} per category"), name))
    pts = [
        {"name": v.name, "latency_ms": v.latency_ms, "image_auroc": v.metrics["mean"]["image_auroc"]}
        for v in variants
        if v.latency_ms is not None
    ]
    if pts:
        parts.append(
            "<h2>Accuracy vs latency</h2>"
            + _img(figures.accuracy_vs_latency(pts, "FP32 / PTQ / QAT"), "acc-lat")
        )
    parts.append("<h2>ROC curves (image level)</h2>")
    for c in cats:
        curves = {}
        for v in variants:
            sel = np.asarray(v.categories) == c
            if len(set(np.asarray(v.labels)[sel].tolist())) == 2:
                curves[v.name] = (np.asarray(v.labels)[sel], np.asarray(v.scores)[sel])
        if curves:
            parts.append(_img(figures.roc_curves(curves, c), f"roc {c}"))
    parts.append("<h2>Anomaly maps on test defects</h2>")
    for o in overlays:
        parts.append(
            _img(figures.overlay_row(o["image"], o["gt"], o["map"], o["pred"], o["caption"]), o["caption"])
        )
    parts.append(
        "<h2>Per-pass drift</h2><p>Relative L2 change of image scores and anomaly maps against the "
        "input model on a held batch of normal images, after each pass.</p>" + _drift_table(passes)
    )
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    out = Path(path)
    write_text_atomic(out, doc)
    return out
