"""Do QAT and pruning only repair? FP32 vs the shipped cpu-int8-qat and cpu-int8-prune artifacts of models
trained by benchmarks/recipe_selection.py (its ``--checkpoint-dir``), old vs new recipe, same splits.

A model whose recipe finishes well gains (almost) nothing from the two extra low-learning-rate epochs of
QAT or pruning's fine-tune; one left mid-descent gains. Metrics come from each lowered ONNX artifact's own
outputs on the test split (ONNX Runtime, CPU). Drift limits are lifted: this measures, it does not gate.

    PYTHONPATH=src .venv/bin/python benchmarks/repair_check.py --data realdev \
        --candidates stfpm-constant,stfpm-cosine --seeds 0 --checkpoint-dir /tmp/sched/ckpt --out /tmp/rep.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import grid_common as gc  # noqa: E402
import recipe_selection as rs  # noqa: E402
import results_writer as rw  # noqa: E402
from anomopt.api import optimize  # noqa: E402
from anomopt.checkpoint import load_checkpoint  # noqa: E402
from anomopt.data.layout import list_categories  # noqa: E402
from anomopt.inference import onnx_scorer, predict_dataset, stack_images  # noqa: E402

PIPELINES = {"fp32": "cpu-fp32.toml", "qat": "cpu-int8-qat.toml", "prune": "cpu-int8-prune.toml"}
PASSES = Path(__file__).resolve().parent.parent / "passes"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="realdev")
    p.add_argument("--candidates", default="stfpm-constant,stfpm-cosine")
    p.add_argument("--seeds", default="0")
    p.add_argument("--variants", default="fp32,qat,prune")
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--summarize", action="store_true", help="print the table of --out (no runs)")
    p.add_argument("--part", default=None, help="with --summarize: write it as this part of the "
                   "recipe-selection section of the results file")
    rw.add_args(p)
    args = p.parse_args(argv)
    defaults = rs.parse_args([])  # the splits of recipe_selection.py's defaults
    for key in ("image_size", "val_fraction", "max_train_per_category", "max_val_per_category",
                "max_test_per_category", "split_seed"):
        setattr(args, key, getattr(defaults, key))
    return args


def summary(rows: list[dict[str, Any]]) -> str:
    head = ["data", "candidate", "variant", "seeds", "test image AUROC", "points vs FP32 (mean, per seed)",
            "test pixel AUROC", "points vs FP32"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fp32 = {(r["data"], r["candidate"], r["seed"]): r for r in rows if r["variant"] == "fp32"}
    keys = dict.fromkeys((r["data"], r["candidate"], r["variant"]) for r in rows)
    for data, cand, var in keys:
        rr = [r for r in rows if (r["data"], r["candidate"], r["variant"]) == (data, cand, var)]
        img = [r["image_auroc"] for r in rr]
        pix = [r["pixel_auroc"] for r in rr]
        d_img = [100 * (r["image_auroc"] - fp32[(data, cand, r["seed"])]["image_auroc"]) for r in rr
                 if (data, cand, r["seed"]) in fp32]
        d_pix = [100 * (r["pixel_auroc"] - fp32[(data, cand, r["seed"])]["pixel_auroc"]) for r in rr
                 if (data, cand, r["seed"]) in fp32]
        out.append("| " + " | ".join([
            data, cand, var, ",".join(str(r["seed"]) for r in rr), rs._ms(img),
            f"{statistics.mean(d_img):+.1f} ({', '.join(f'{d:+.1f}' for d in d_img)})" if d_img else "-",
            rs._ms(pix), f"{statistics.mean(d_pix):+.1f}" if d_pix else "-"]) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    rows: list[dict[str, Any]] = json.loads(out.read_text()) if out.is_file() else []
    if args.summarize:
        if not args.part:
            print(summary(rows))
            return 0
        run = rw.RunInfo.start("benchmarks/repair_check.py", os.environ.get("OMP_NUM_THREADS", "1"))
        run.notes.append("re-summarizes runs made with the same script (--data, --candidates, --seeds as listed); "
                         "128 px, torch threads 1, ONNX Runtime 1 thread, niced, 2 cores shared by six jobs")
        body = ("Test AUROC of each artifact (FP32 = cpu-fp32; QAT = cpu-int8-qat, 2 epochs Adam lr 1e-4 with "
                "fake quantizers; prune = cpu-int8-prune, 50 % of the student's channels, 2 epochs Adam lr 1e-3, "
                "teacher + student INT8). Points = artifact - FP32 of the same trained model.\n\n" + summary(rows))
        title = "QAT and pruning repair check: each artifact vs the FP32 model of the same recipe"
        rw.publish(args, "repair-check", title, "benchmarks/repair_check.py", body, run, part=args.part.split(","))
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    label, root = rs.dataset_of(args.data)
    cats = sorted(list_categories(root))
    train, _, test = rs.splits(root, cats, args)
    pool = stack_images(train)
    pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))]
    for cand in args.candidates.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            ckpt = Path(args.checkpoint_dir) / f"{cand}-unified-all-s{seed}.pt"
            for var in args.variants.split(","):
                if any((r["data"], r["candidate"], r["seed"], r["variant"]) == (label, cand, seed, var) for r in rows):
                    continue
                model, _ = load_checkpoint(ckpt)
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory(prefix="repair-") as work:
                    om = optimize(model, "cpu", 32 if var == "fp32" else 8, calib=pool,
                                  passes=str(PASSES / PIPELINES[var]),
                                  tolerance={"max_score_drift": float("inf"), "max_map_drift": float("inf")},
                                  train=pool if var != "fp32" else None, workdir=work, seed=seed, progress=False)
                    path = (om.graph.state.artifact or {})["model"]
                    preds = predict_dataset(onnx_scorer(path), test, batch_size=16)
                m = rs.metrics(preds, None)["mean"]
                row = {"data": label, "candidate": cand, "seed": seed, "variant": var,
                       "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(f"[{label}] {cand} s{seed} {var}: image {m['image_auroc']:.3f} pixel {m['pixel_auroc']:.3f} "
                      f"({row['seconds']:.0f}s)", flush=True)
                gc.write_json(out, rows)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
