"""One-class vs unified training of STFPM, RD and US, per category (the paper's Table 2 on our data).

For each data set (realdev and the synthetic set) and model: one FP32 model per category (one-class) and
one FP32 model on the pooled categories (unified), trained (or loaded from the grid's shared checkpoint
cache), lowered through the cpu-fp32 pipeline and evaluated from the FP32 ONNX artifact on each category's
test split: image AUROC, pixel AUROC, AUPRO per category, plus training time and parameter counts.

    PYTHONPATH=src .venv/bin/python benchmarks/unified_vs_oneclass.py --resume
    PYTHONPATH=src .venv/bin/python benchmarks/unified_vs_oneclass.py --equal-steps   # one-class: cats x epochs
    PYTHONPATH=src .venv/bin/python benchmarks/unified_vs_oneclass.py --quick --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grid_common as gc  # noqa: E402

NAMES = {"stfpm": "STFPM", "rd": "RD", "us": "US"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="realdev,synthetic", help="comma list: realdev, synthetic, or folders")
    gc.add_common_args(p)
    return gc.apply_quick(p.parse_args(argv))


def collect(args: argparse.Namespace) -> tuple[list[str], dict[tuple[str, str, str], list[dict[str, Any]]]]:
    """FP32 rows keyed by (dataset, model, mode)."""
    store = gc.Measurements(args)
    roots, cells = gc.grid_cells(args)
    out = {
        (dataset, model, mode): gc.mode_rows(store, dataset, root, model, mode, gc.FP32, args, splits)
        for dataset, root, model, splits in cells
        for mode in ("oneclass", "unified")
    }
    return roots, out


def per_category_table(rows: dict) -> str:
    """Per category: one-class vs unified image AUROC, pixel AUROC, AUPRO (and the mean per data set)."""
    lines = []
    for dataset, model in dict.fromkeys((d, m) for d, m, _ in rows):
        one = gc.per_category(rows[(dataset, model, "oneclass")])
        uni = gc.per_category(rows[(dataset, model, "unified")])
        for cat in [*one, "mean"]:
            a = gc.mean_metrics(rows[(dataset, model, "oneclass")]) if cat == "mean" else one[cat]
            b = gc.mean_metrics(rows[(dataset, model, "unified")]) if cat == "mean" else uni[cat]
            cells = [dataset, NAMES[model], f"**{cat}**" if cat == "mean" else cat]
            for key in gc.METRICS:
                cells += [gc.fmt(a[key]), gc.fmt(b[key]), gc.fmt(100 * (b[key] - a[key]), 1)]
            lines.append(cells)
    head = ["data", "method", "category", "image AUROC one-class", "unified", "points",
            "pixel AUROC one-class", "unified", "points", "AUPRO one-class", "unified", "points"]
    return "**One-class vs unified, FP32 ONNX artifact, per category** (points = unified - one-class)\n\n" + \
        gc.md_table(head, lines)


def cost_table(rows: dict) -> str:
    """Training time (as recorded when each model was trained) and parameter counts."""
    lines = []
    for dataset, model in dict.fromkeys((d, m) for d, m, _ in rows):
        one, uni = rows[(dataset, model, "oneclass")], rows[(dataset, model, "unified")]
        p = uni[0]["onnx_params"]
        trainable = uni[0]["params"].get("student", 0)
        lines.append([
            dataset, NAMES[model], f"{uni[0]['epochs']} / {one[0]['epochs']}",
            f"{len(one)} x", f"{sum(r['train_seconds'] for r in one):.0f}", f"{sum(r['train_images'] for r in one)}",
            f"{uni[0]['train_seconds']:.0f}", f"{uni[0]['train_images']}",
            f"{p['teacher'] / 1e6:.3f}", f"{p['student'] / 1e6:.3f}", f"{trainable / 1e6:.3f}",
            f"{len(one) * p['total'] / 1e6:.3f}", f"{p['total'] / 1e6:.3f}",
        ])
    head = ["data", "method", "epochs unified / one-class", "one-class models", "one-class train s (sum)",
            "one-class train images",
            "unified train s", "unified train images", "teacher params (M)", "student params (M)",
            "student params in torch (M, incl. blocks past the last tap)", "params to deploy one-class (M)",
            "params to deploy unified (M)"]
    return ("**Training cost and size** (train seconds as recorded when each model was trained, 1 torch thread "
            "on a shared 2-core box; parameters of the layers that reach the outputs, from the FP32 ONNX)\n\n"
            + gc.md_table(head, lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gc.setup(args)
    run, t0 = gc.rw.RunInfo.start(__file__, gc.threads_text(args), argv), time.perf_counter()
    roots, rows = collect(args)
    extra = ["- one-class: one model per category, trained on that category's normal images; unified: one "
             "model on the pooled, shuffled normal images of all categories; both evaluated per category",
             "- budget: " + ("equal optimizer steps (--equal-steps: each one-class model trains categories x "
                             "the epochs)" if args.equal_steps else "equal epochs (a unified model takes "
                             "categories x the optimizer steps of each one-class model)"),
             gc.span_line([r for group in rows.values() for r in group])]
    head = gc.settings_lines(args, time.perf_counter() - t0, roots, extra)
    gc.rw.publish(args, "unified-vs-oneclass", "Unified vs one-class (paper Table 2 on our data)",
                  "benchmarks/unified_vs_oneclass.py",
                  "\n".join(head) + "\n" + per_category_table(rows) + "\n\n" + cost_table(rows), run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
