"""The final plain-text summary of an ``optimize()`` run: per-pass drift beside its tolerance, AUROC before
and after (when labelled data was given) and the size of the lowered artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

AUROC_ROWS = (("image AUROC", "image_auroc", "max_image_auroc_drop"), ("pixel AUROC", "pixel_auroc",
                                                                         "max_pixel_auroc_drop"))


def _pct(x: Any) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * float(x):.2f}"


def auroc_lines(
    before: dict[str, Any] | None, after: dict[str, Any] | None, limits: dict[str, float] | None = None
) -> list[str]:
    """``image/pixel AUROC  before, after, change, limit`` lines, or one line saying it was not measured;
    ``limits``: ``max_image_auroc_drop`` / ``max_pixel_auroc_drop`` in points."""
    if before is None or after is None:
        return ["AUROC: not measured (give eval=... / --evaluate to measure it before and after)"]
    lines = [f"{'AUROC (mean of ' + str(len(after.get('per_category', {}))) + ' categories)':32s} "
             f"{'before':>7s} {'after':>7s} {'change':>7s}  limit"]
    for label, key, tol_key in AUROC_ROWS:
        b, a = before["mean"].get(key), after["mean"].get(key)
        change = "n/a" if b is None or a is None or not np.isfinite(a - b) else f"{100 * (a - b):+.2f}"
        limit = float((limits or {}).get(tol_key, float("inf")))
        limit_text = f"drop <= {limit:g} points" if np.isfinite(limit) else "none"
        lines.append(f"{label:32s} {_pct(b):>7s} {_pct(a):>7s} {change:>7s}  {limit_text}")
    return lines


def artifact_line(record: dict[str, Any] | None) -> str:
    """``artifact: model.onnx 1.23 MB (int8, onnxruntime)``, or a line saying nothing was lowered."""
    if not record:
        return "artifact: none yet (the pipeline has no 'lower' pass; save() lowers)"
    folder = Path(record.get("dir", Path(record["model"]).parent))
    parts = []
    for name in record.get("files", [Path(record["model"]).name]):
        f = folder / name
        if f.is_file():
            parts.append(f"{name} {f.stat().st_size / 1e6:.2f} MB")
    sizes = ", ".join(parts) or "files not found"
    where = f"{record.get('target', '?')}/{record.get('runtime', '?')}"
    return f"artifact: {sizes} ({record.get('precision', '?')}, {where})"


def optimize_summary(om: Any) -> str:
    """The summary of an :class:`anomopt.api.OptimizedModel`."""
    gate = [r for r in om.passes_report.records if r.name == "accuracy_gate"]
    limits = gate[-1].tolerance if gate else {}
    lines = [
        f"{om.pipeline.name} for {om.target.name} at {om.bits} bits; drift = relative L2 change of image scores "
        "and anomaly maps on held normal images, against the input model",
        om.passes_report.table(),
        *auroc_lines(om.metrics_before, om.metrics_after, limits),
        artifact_line(om.graph.state.artifact),
    ]
    return "\n".join(lines)
