"""INT8 check of a US model saved by ``us_study.py --save``: the shipped cpu-fp32, cpu-int8 (PTQ) and
cpu-int8-qat pipelines through :func:`anomopt.optimize`, each artifact evaluated with ONNX Runtime on the
test split (image / pixel AUROC, mean over categories). Appends one JSON line per pipeline to ``--out``.

    PYTHONPATH=src python benchmarks/us_quant_check.py --dataset synthetic --model us-s0.pt --max-train 60
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grid_common as gc  # noqa: E402
from anomopt import optimize  # noqa: E402
from anomopt.data import load_mvtec  # noqa: E402
from anomopt.inference import stack_images  # noqa: E402
from anomopt.metrics import evaluate_predictions  # noqa: E402
from anomopt.models import build_model  # noqa: E402

PIPELINES = Path(__file__).resolve().parents[1] / "src" / "anomopt" / "pipelines"


#: a data producer: its JSON lines are reported (RESULTS.md) by this script
WRITES_RESULTS = False
REPORTED_BY = "benchmarks/us_report.py"

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--synthetic-dir", default="/work/models2/synth")
    p.add_argument("--model", required=True)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-train", type=int, default=60)
    p.add_argument("--max-test", type=int, default=100)
    p.add_argument("--pipelines", default="cpu-fp32,cpu-int8,cpu-int8-qat")
    p.add_argument("--out", default="us_quant.jsonl")
    args = p.parse_args(argv)
    dataset, root = gc.dataset_root(args.dataset, argparse.Namespace(synthetic_dir=args.synthetic_dir, quick=False))
    cats = gc.categories_of(root)
    size = args.image_size
    train = gc.per_category_subset(load_mvtec(root, cats, "train", size, seed=0), args.max_train, 0)
    val = load_mvtec(root, cats, "val", size, seed=0)
    test = gc.per_category_subset(load_mvtec(root, cats, "test", size, seed=0), args.max_test, 1)
    saved = torch.load(args.model, weights_only=False)
    model = build_model("us", image_size=size, **saved["extra"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    pool = stack_images(train)
    pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))]
    for name in args.pipelines.split(","):
        bits = 32 if name.endswith("fp32") else 8
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            om = optimize(model, "cpu", bits, calib=pool, passes=str(PIPELINES / f"{name}.toml"),
                          tolerance={"max_score_drift": float("inf"), "max_map_drift": float("inf")},
                          train=pool if "qat" in name else None, val=val, categories=cats,
                          normalization=saved["normalization"], workdir=work, seed=0, progress=False)
            path = Path(om.graph.state.artifact["model"])
            preds = gc.artifact_predictions(path, test, threads=1)
            res = evaluate_predictions(preds.categories, preds.labels, preds.scores, preds.masks, preds.maps,
                                       normalization=om.normalization)
        row = {"dataset": dataset, "model": args.model, "pipeline": name, "seconds": round(time.perf_counter() - t0, 1),
               "mean": {k: float(res["mean"][k]) for k in ("image_auroc", "pixel_auroc", "aupro")},
               "per_category": {c: {k: float(v[k]) for k in ("image_auroc", "pixel_auroc")}
                                for c, v in res["per_category"].items()},
               "refit": [r.notes.get("refit") for r in om.passes_report.records if r.notes.get("refit")]}
        with open(args.out, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        m = row["mean"]
        print(f"{dataset} {name}: image {m['image_auroc']:.4f} pixel {m['pixel_auroc']:.4f} ({row['seconds']:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
