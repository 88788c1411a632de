"""``anomopt demo``: the main job end to end, offline, on the embedded synthetic data (or ``--data``).

1. generate the synthetic multi-category set; 2. train a unified STFPM on the offline backbone;
3. optimize it for ``cpu`` at 8 bits (PTQ with training-image and noise calibration, and QAT);
4. export the INT8 artifact; 5. evaluate FP32 vs INT8 per category; 6. benchmark latency;
7. print a summary table; 8. write a report folder (one HTML file with every picture inlined).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomopt.io import write_json_atomic


@dataclass
class DemoConfig:
    """Knobs of the demo; the defaults finish in about 10 minutes on 2 CPU cores."""

    out: str = "runs/demo"
    data: str | None = None
    categories: str = "all"
    image_size: int = 128
    n_train: int = 40
    n_test: int = 20
    epochs: int = 10
    qat_epochs: int = 1
    threads: int = 2
    seed: int = 0
    progress: bool = True


def _variant_eval(graph_predict, test, desc: str, progress: bool, normalization: dict[str, Any] | None = None):
    from anomopt.inference import predict_dataset
    from anomopt.metrics import evaluate_predictions

    preds = predict_dataset(graph_predict, test, batch_size=8, progress=progress, desc=desc)
    metrics = evaluate_predictions(
        preds.categories, preds.labels, preds.scores, preds.masks, preds.maps,
        normalization=normalization, has_mask=preds.has_mask,
    )
    return preds, metrics


def _overlays(preds, normalization: dict[str, Any], test, per_category: int = 2) -> list[dict[str, Any]]:
    from anomopt.normalization import category_entry

    out = []
    cats = sorted(set(preds.categories))
    for cat in cats:
        idx = [i for i, (c, y) in enumerate(zip(preds.categories, preds.labels)) if c == cat and y == 1]
        idx = sorted(idx, key=lambda i: -float(preds.masks[i].sum()))[:per_category]
        entry = category_entry(normalization, cat)
        for i in idx:
            amap = preds.maps[i]
            z = (amap - entry.get("map_mean", float(amap.mean()))) / entry.get(
                "map_std", float(amap.std()) + 1e-12
            )
            pred = z > entry.get("pixel_threshold_z", 4.0)
            image = test[i]["image"].permute(1, 2, 0).numpy()
            out.append(
                {
                    "image": image,
                    "gt": preds.masks[i],
                    "map": amap,
                    "pred": pred,
                    "caption": f"{cat}: {Path(preds.paths[i]).parent.name}/{Path(preds.paths[i]).name}",
                }
            )
    return out


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the whole demo; returns the summary dict that is also written to ``<out>/summary.json``."""
    from anomopt.api import optimize
    from anomopt.bench import measure_ort, measure_torch
    from anomopt.data import generate_synthetic, load_mvtec
    from anomopt.inference import torch_scorer
    from anomopt.metrics import format_table
    from anomopt.models import build_model
    from anomopt.report import ReportVariant, write_report
    from anomopt.train import TrainConfig, seed_everything, train_model

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    say = print
    if cfg.data is None:
        data_root = out / "data"
        if not (data_root / "synthetic.json").is_file():
            say(f"[1/8] generating the synthetic data set in {data_root}")
            generate_synthetic(
                data_root,
                categories=5,
                n_train=cfg.n_train,
                n_test=cfg.n_test,
                image_size=256,
                seed=cfg.seed,
                progress=cfg.progress,
            )
        else:
            say(f"[1/8] reusing the synthetic data set in {data_root}")
    else:
        data_root = Path(cfg.data)
        say(f"[1/8] using the data set in {data_root}")
    common = dict(image_size=cfg.image_size, seed=cfg.seed)
    train = load_mvtec(data_root, cfg.categories, split="train", **common)
    val = load_mvtec(data_root, cfg.categories, split="val", **common)
    test = load_mvtec(data_root, cfg.categories, split="test", **common)

    say(f"[2/8] training a unified STFPM on {len(train)} normal images of {len(train.categories)} categories")
    seed_everything(cfg.seed)
    model = build_model("stfpm", image_size=cfg.image_size)
    ckpt = out / "stfpm-unified.ckpt"
    result = train_model(
        model,
        train,
        TrainConfig(
            epochs=cfg.epochs, seed=cfg.seed, checkpoint=str(ckpt), progress=cfg.progress, precision="fp32"
        ),
        val_set=val,
        categories=list(train.categories),
    )
    norm = result.normalization
    say(f"      {result.epochs_run} epochs, {result.images_per_second:.1f} images/s, checkpoint {ckpt}")

    say("[3/8] optimizing for cpu: FP32, PTQ (training-image / noise calibration), QAT")
    common_opt = dict(
        calib=train,
        categories=list(train.categories),
        normalization=norm,
        val=val,  # thresholds re-fitted on each artifact, on the validation normals training used
        seed=cfg.seed,
        progress=cfg.progress,
    )
    runs = {
        "FP32 (ORT)": optimize(model, "cpu", 32, workdir=out / "work" / "fp32", **common_opt),
        "PTQ train-calib": optimize(model, "cpu", 8, workdir=out / "work" / "ptq-train", **common_opt),
        # Noise calibration is the paper's weak baseline: its drift usually breaks the pipeline's safety net
        # (cpu-int8: score drift 0.6), which would refuse it. The demo runs it anyway to show its AUROC cost.
        "PTQ noise-calib": optimize(
            model,
            "cpu",
            8,
            calib_source="noise",
            tolerance={"max_score_drift": float("inf"), "max_map_drift": float("inf")},
            workdir=out / "work" / "ptq-noise",
            **common_opt,
        ),
        "QAT": optimize(
            model,
            "cpu",
            8,
            variant="qat",
            workdir=out / "work" / "qat",
            pass_options={"qat_finetune": {"epochs": cfg.qat_epochs}},
            **common_opt,
        ),
    }

    say("[4/8] exporting the INT8 artifact")
    artifact = runs["PTQ train-calib"].save(out / "artifact-int8")
    runs["FP32 (ORT)"].save(out / "artifact-fp32")
    say(f"      {artifact}")

    say("[5/8] evaluating FP32 vs INT8 per category on the test split")
    variants: list[ReportVariant] = []
    evals = {"FP32 (torch)": _variant_eval(torch_scorer(model), test, "fp32 torch", cfg.progress, norm)}
    for name, om in runs.items():
        evals[name] = _variant_eval(om.predict, test, name, cfg.progress, om.normalization)

    say(f"[6/8] benchmarking batch-1 latency ({cfg.threads} threads)")
    latency = {"FP32 (torch)": measure_torch(model, cfg.image_size, threads=cfg.threads, iters=30)}
    sizes: dict[str, int | None] = {"FP32 (torch)": None}
    for name, om in runs.items():
        path = om.graph.meta["artifact"]["model"]
        latency[name] = measure_ort(path, cfg.image_size, threads=cfg.threads, iters=30)
        sizes[name] = Path(path).stat().st_size
    for name, (preds, metrics) in evals.items():
        variants.append(
            ReportVariant(
                name=name,
                metrics=metrics,
                labels=preds.labels,
                scores=preds.scores,
                categories=preds.categories,
                latency_ms=latency[name]["p50_ms"],
                size_bytes=sizes.get(name),
            )
        )

    fp32_ms = latency["FP32 (ORT)"]["p50_ms"]
    int8_ms = latency["PTQ train-calib"]["p50_ms"]
    lines = [f"{'variant':18s} {'img AUROC':>9s} {'pix AUROC':>9s} {'AUPRO':>6s} {'p50 ms':>7s} {'MB':>6s}"]
    for v in variants:
        m = v.metrics["mean"]
        mb = f"{v.size_bytes / 1e6:6.2f}" if v.size_bytes else "     -"
        lines.append(
            f"{v.name:18s} {100 * m['image_auroc']:9.1f} {100 * m['pixel_auroc']:9.1f} "
            f"{100 * m['aupro']:6.1f} {v.latency_ms:7.1f} {mb}"
        )
    lines.append(f"INT8 vs FP32 ONNX Runtime speed-up at batch 1: {fp32_ms / int8_ms:.2f}x")
    summary_text = "\n".join(lines)
    say(
        "[7/8] summary\n"
        + format_table(evals["PTQ train-calib"][1], title="INT8 (PTQ, train calibration) per category")
    )
    say(summary_text)

    say("[8/8] writing the report")
    int8_preds = evals["PTQ train-calib"][0]
    overlays = _overlays(int8_preds, runs["PTQ train-calib"].normalization, test)
    report = write_report(
        out / "report" / "index.html",
        "anomopt demo: unified STFPM, CPU INT8",
        variants,
        runs["PTQ train-calib"].report["passes"],
        overlays,
        summary=summary_text,
    )
    summary = {
        "seconds": time.perf_counter() - t_start,
        "report": str(report),
        "artifact": str(artifact),
        "checkpoint": str(ckpt),
        "variants": {
            v.name: {"metrics": v.metrics["mean"], "latency": latency[v.name], "size_bytes": v.size_bytes}
            for v in variants
        },
        "int8_vs_fp32_ort_speedup": fp32_ms / int8_ms,
        "train_images_per_second": result.images_per_second,
    }
    write_json_atomic(out / "summary.json", summary)
    say(f"report: {report}\ndone in {summary['seconds'] / 60:.1f} min")
    return summary


def demo_summary_ok(summary: dict[str, Any]) -> bool:
    """Whether every variant produced finite metrics (used by tests)."""
    return all(np.isfinite(v["metrics"]["image_auroc"]) for v in summary["variants"].values())
