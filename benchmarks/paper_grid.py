"""The paper's experiment grid on any MVTec-layout folder (Jena et al. 2024, Tables 2 to 7).

{US, RD, STFPM} x {one-class (one model per category), unified (one model on the pooled categories)} x
{FP32, PTQ INT8 calibrated on normal training images, PTQ INT8 calibrated on random-normal noise, QAT INT8},
all lowered to ONNX Runtime on target ``cpu`` through :func:`anomopt.optimize` with the shipped pipelines
(cpu-fp32, cpu-int8, cpu-int8-qat; the student is quantized, the teacher stays FP32 as in the paper).
Image AUROC, pixel AUROC and AUPRO come from the lowered artifact's outputs on the test split; sizes are
the artifact's stored weights per role; latency is ONNX Runtime batch 1 of the unified artifacts, taken
interleaved in one run. Tables follow the paper's: 2 (one-class vs unified, FP32), 3 (PTQ, train calib),
4 (PTQ, random-normal calib), 5 (QAT), 6 (sizes), 7 (latency).

    PYTHONPATH=src .venv/bin/python benchmarks/paper_grid.py --data /work/shared/data/realdev --resume
    PYTHONPATH=src .venv/bin/python benchmarks/paper_grid.py --data DIR --quick --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grid_common as gc  # noqa: E402

MODES = ("oneclass", "unified")
VARIANTS = (gc.FP32, gc.PTQ_TRAIN, gc.PTQ_NOISE, gc.QAT)
NAMES = {"stfpm": "STFPM", "rd": "RD", "us": "US"}
MODE_NAMES = {"oneclass": "one-class", "unified": "unified"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="realdev", help="an MVTec-layout folder, or 'realdev' / 'synthetic'")
    p.add_argument("--latency-runs", type=int, default=100)
    p.add_argument("--latency-rounds", type=int, default=5)
    gc.add_common_args(p)
    args = gc.apply_quick(p.parse_args(argv))
    if args.quick:
        args.latency_runs, args.latency_rounds = 4, 2
    return args


def collect(args: argparse.Namespace) -> tuple[str, Path, dict[tuple[str, str, str], list[dict[str, Any]]]]:
    """Measure (or load) every cell of the grid; returns rows keyed by (model, mode, variant)."""
    dataset, root = gc.dataset_root(args.data, args)
    store = gc.Measurements(args)
    splits: dict[str, gc.Splits] = {}
    grid: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for model in args.models.split(","):
        for mode in MODES:
            for variant in VARIANTS:
                grid[(model, mode, variant.name)] = gc.mode_rows(store, dataset, root, model, mode, variant,
                                                                 args, splits)
    return dataset, root, grid


def _metrics(rows: list[dict[str, Any]]) -> list[str]:
    m = gc.mean_metrics(rows)
    return [gc.fmt(m["image_auroc"]), gc.fmt(m["pixel_auroc"]), gc.fmt(m["aupro"])]


def table2(models: list[str], grid: dict) -> str:
    """One-class vs unified, FP32."""
    rows = [[NAMES[m], *_metrics(grid[(m, "oneclass", "fp32")]), *_metrics(grid[(m, "unified", "fp32")])]
            for m in models]
    head = ["method", "one-class image AUROC", "one-class pixel AUROC", "one-class AUPRO",
            "unified image AUROC", "unified pixel AUROC", "unified AUPRO"]
    return "**Table 2: one-class vs unified, FP32**\n\n" + gc.md_table(head, rows)


def table_int8(models: list[str], grid: dict, variant: str, title: str) -> str:
    """FP32 vs one INT8 variant, per method and mode, with the change in points."""
    rows = []
    for m in models:
        for mode in MODES:
            fp, q = gc.mean_metrics(grid[(m, mode, "fp32")]), gc.mean_metrics(grid[(m, mode, variant)])
            cells = [NAMES[m], MODE_NAMES[mode]]
            for key in gc.METRICS:
                cells += [f"{gc.fmt(fp[key])} -> {gc.fmt(q[key])}", gc.fmt(100 * (q[key] - fp[key]), 1)]
            rows.append(cells)
    head = ["method", "mode", "image AUROC FP32 -> INT8", "points", "pixel AUROC FP32 -> INT8", "points",
            "AUPRO FP32 -> INT8", "points"]
    return f"**{title}**\n\n" + gc.md_table(head, rows)


def table6(models: list[str], grid: dict) -> str:
    """Sizes of the unified artifacts (teacher + student stored weights, MB) and parameter counts."""
    rows = []
    for m in models:
        fp = grid[(m, "unified", "fp32")][0]
        q = grid[(m, "unified", "ptq-train")][0]
        params = fp["onnx_params"]
        rows.append([NAMES[m], f"{params.get('teacher', 0) / 1e6:.3f}", f"{params.get('student', 0) / 1e6:.3f}",
                     f"{fp['sizes_mb']['teacher']:.2f}", f"{fp['sizes_mb']['student']:.2f}",
                     f"{q['sizes_mb']['teacher']:.2f}", f"{q['sizes_mb']['student']:.2f}",
                     f"{fp['sizes_mb']['file']:.2f}", f"{q['sizes_mb']['file']:.2f}",
                     f"{100 * q['sizes_mb']['student'] / fp['sizes_mb']['student']:.1f}%"])
    head = ["method", "teacher params (M)", "student params (M)", "FP32 teacher MB", "FP32 student MB",
            "INT8 teacher MB", "INT8 student MB", "FP32 model.onnx MB", "INT8 model.onnx MB",
            "INT8 / FP32 student"]
    title = ("**Table 6: model sizes (unified, ONNX artifact: stored weights per role; parameters of the layers "
             "that reach the outputs)**")
    return f"{title}\n\n" + gc.md_table(head, rows)


def table7(models: list[str], grid: dict, args: argparse.Namespace) -> str:
    """Batch-1 ONNX Runtime latency of the unified artifacts, measured interleaved now."""
    paths = [grid[(m, "unified", v.name)][0]["artifact"] for m in models for v in VARIANTS]
    lat = gc.measure_latencies(paths, args.image_size, args.ort_threads, args.latency_runs, args.latency_rounds)
    rows = []
    for m in models:
        t = {v.name: lat[grid[(m, "unified", v.name)][0]["artifact"]] for v in VARIANTS}
        fp = t["fp32"]["median_ms"]
        rows.append([NAMES[m], *[f"{t[v.name]['median_ms']:.1f} / {t[v.name]['min_ms']:.1f}" for v in VARIANTS],
                     f"{fp / t['ptq-train']['median_ms']:.2f}x", f"{fp / t['qat']['median_ms']:.2f}x"])
    head = ["method", "FP32 ms (median / min)", "PTQ INT8 train-calib ms", "PTQ INT8 noise-calib ms",
            "QAT INT8 ms", "PTQ speed-up", "QAT speed-up"]
    title = (f"**Table 7: latency, unified, ONNX Runtime CPU, batch 1, {args.ort_threads} threads, "
             f"{args.latency_runs} runs in {args.latency_rounds} interleaved rounds**")
    return f"{title}\n\n" + gc.md_table(head, rows)


def tables(models: list[str], grid: dict, args: argparse.Namespace) -> str:
    """All six tables, in the paper's order."""
    parts = [
        table2(models, grid),
        table_int8(models, grid, "ptq-train", "Table 3: PTQ INT8, calibrated on normal training images"),
        table_int8(models, grid, "ptq-noise", "Table 4: PTQ INT8, calibrated on random-normal noise"),
        table_int8(models, grid, "qat", "Table 5: QAT INT8"),
        table6(models, grid),
        table7(models, grid, args),
    ]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gc.setup(args)
    run, t0 = gc.rw.RunInfo.start(__file__, gc.threads_text(args), argv), time.perf_counter()
    dataset, root, grid = collect(args)
    models = args.models.split(",")
    text = tables(models, grid, args)
    n_cats = len(gc.categories_of(root))
    extra = [
        f"- grid: {', '.join(NAMES[m] for m in models)} x one-class ({n_cats} models, one per category) / "
        "unified (one model) x FP32 / PTQ INT8 train-calib / PTQ INT8 random-normal calib / QAT INT8; "
        "pipelines passes/cpu-fp32.toml, cpu-int8.toml (student, per-channel weights, percentile 99.99), "
        "cpu-int8-qat.toml",
        "- sizes and latency: the unified artifacts; one-class models have the same architecture",
        gc.span_line([r for rows in grid.values() for r in rows]),
    ]
    head = gc.settings_lines(args, time.perf_counter() - t0, [str(root)], extra)
    gc.rw.publish(args, "paper-grid", "Paper grid (Tables 2-7)", "benchmarks/paper_grid.py",
                  "\n".join(head) + "\n" + text, run, part=dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
