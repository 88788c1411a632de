"""Choose training recipes without test labels: validation normals + pasted synthetic defects, several seeds.

For each candidate recipe (optimizer / learning-rate schedule / model options) and seed, a unified model
is trained on the capped training split; the held-out normal validation split, paired with a copy of each
image carrying a pasted defect (:class:`anomopt.data.pasted.PastedDefects`), gives the selection metrics
(image and pixel AUROC). The test split is scored too, for the report only: the choice reads the
validation columns. Per-category thresholds are fitted on the validation normals, as ``anomopt train``
does, so the test rows also carry the false-reject rate, escape rate and F1 at the shipped threshold.
One-class runs (``--mode oneclass``) train one model per category at ``categories x`` the epochs, so both
modes see the same number of optimizer steps.

    PYTHONPATH=src .venv/bin/python benchmarks/recipe_selection.py --data synthetic=/work/models2/synth \
        --candidates stfpm-constant,stfpm-cosine --seeds 0,1,2 --out /tmp/sel.json
    PYTHONPATH=src .venv/bin/python benchmarks/recipe_selection.py --summarize /tmp/sel.json,/tmp/rd.json \
        --part stfpm,rd      # prints the tables and replaces that part of the recipe-selection section of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import grid_common as gc  # noqa: E402
import results_writer as rw  # noqa: E402
from anomopt.data import load_mvtec  # noqa: E402
from anomopt.data.layout import list_categories  # noqa: E402
from anomopt.data.pasted import PastedDefects  # noqa: E402
from anomopt.inference import predict_dataset, torch_scorer  # noqa: E402
from anomopt.metrics import evaluate_predictions  # noqa: E402
from anomopt.models import build_model  # noqa: E402
from anomopt.train import TrainConfig, seed_everything, train_model  # noqa: E402

HERE = Path(__file__).resolve().parent
REALDEV = HERE.parent.parent / "shared" / "data" / "realdev"

_RD_PLAIN = {"bottleneck_dropout": 0.0, "feature_jitter": 0.0}  # whatever the recipe's default becomes

#: name -> (model, TrainConfig overrides, build_model extras); every setting explicit, so a candidate
#: keeps meaning the same thing when the recipe defaults change
CANDIDATES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "stfpm-constant": ("stfpm", {"lr": 0.8, "warmup": 0.0, "decay": "constant", "final_lr": 1.0}, {}),
    "stfpm-cosine": ("stfpm", {"lr": 0.8, "warmup": 0.05, "decay": "cosine", "final_lr": 0.01}, {}),
    "stfpm-cosine-lr1.6": ("stfpm", {"lr": 1.6, "warmup": 0.05, "decay": "cosine", "final_lr": 0.01}, {}),
    "stfpm-cosine-lr0.4": ("stfpm", {"lr": 0.4, "warmup": 0.05, "decay": "cosine", "final_lr": 0.01}, {}),
    "rd-constant": ("rd", {"lr": 3e-3, "warmup": 0.0, "decay": "constant", "final_lr": 1.0}, _RD_PLAIN),
    "rd-cosine": ("rd", {"lr": 3e-3, "warmup": 0.05, "decay": "cosine", "final_lr": 0.01}, _RD_PLAIN),
    "rd-cosine-lr6e-3": ("rd", {"lr": 6e-3, "warmup": 0.05, "decay": "cosine", "final_lr": 0.01}, _RD_PLAIN),
    # RD unified fixes (training-only perturbations of the bottleneck input), on the constant schedule
    "rd-drop0.2": ("rd", {"lr": 3e-3, "warmup": 0.0, "decay": "constant", "final_lr": 1.0},
                   {"bottleneck_dropout": 0.2, "feature_jitter": 0.0}),
    "rd-drop0.4": ("rd", {"lr": 3e-3, "warmup": 0.0, "decay": "constant", "final_lr": 1.0},
                   {"bottleneck_dropout": 0.4, "feature_jitter": 0.0}),
    "rd-jitter0.5": ("rd", {"lr": 3e-3, "warmup": 0.0, "decay": "constant", "final_lr": 1.0},
                     {"bottleneck_dropout": 0.0, "feature_jitter": 0.5}),
    "rd-jitter1": ("rd", {"lr": 3e-3, "warmup": 0.0, "decay": "constant", "final_lr": 1.0},
                   {"bottleneck_dropout": 0.0, "feature_jitter": 1.0}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="realdev", help="realdev, or LABEL=FOLDER (MVTec layout)")
    p.add_argument("--candidates", default="stfpm-constant,stfpm-cosine")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=10, help="unified epochs (one-class: x categories)")
    p.add_argument("--mode", default="unified", choices=("unified", "oneclass"))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--max-train-per-category", type=int, default=40)
    p.add_argument("--max-val-per-category", type=int, default=30)
    p.add_argument("--max-test-per-category", type=int, default=60)
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation hold-out and the caps")
    p.add_argument("--out", required=False, help="JSON file of rows (appended to; done rows are skipped)")
    p.add_argument("--checkpoint-dir", default=None, help="keep each trained model here")
    p.add_argument("--summarize", default=None, help="comma list of JSON files: print their tables (no training)")
    p.add_argument("--part", default=None, help="with --summarize: write the tables as this part of the results file")
    rw.add_args(p)
    return p.parse_args(argv)


def dataset_of(spec: str) -> tuple[str, Path]:
    label, _, folder = spec.partition("=")
    return (label, Path(folder)) if folder else (label, REALDEV if label == "realdev" else Path(label))


def splits(root: Path, categories: list[str], args: argparse.Namespace) -> tuple[Any, Any, Any]:
    kw = {"image_size": args.image_size, "val_fraction": args.val_fraction, "seed": args.split_seed}
    cap = gc.per_category_subset
    train = cap(load_mvtec(root, categories, "train", **kw), args.max_train_per_category, args.split_seed)
    val = cap(load_mvtec(root, categories, "val", **kw), args.max_val_per_category, args.split_seed)
    test = cap(load_mvtec(root, categories, "test", **kw), args.max_test_per_category, args.split_seed + 1)
    return train, val, test


def metrics(preds: Any, normalization: dict[str, Any] | None) -> dict[str, Any]:
    r = evaluate_predictions(preds.categories, preds.labels, preds.scores, preds.masks, preds.maps,
                             normalization=normalization, has_mask=preds.has_mask)
    keep = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "false_reject_rate", "escape_rate", "f1_at_threshold")
    per = {c: {k: float(v) for k, v in e.items() if k in keep} for c, e in r["per_category"].items()}
    return {"mean": {k: float(v) for k, v in r["mean"].items() if k in keep}, "per_category": per}


def run_one(cand: str, seed: int, root: Path, args: argparse.Namespace, ckpt: Path | None) -> dict[str, Any]:
    """Train one candidate at one seed (unified, or one model per category) and measure val + test."""
    model_name, overrides, extras = CANDIDATES[cand]
    cats = sorted(list_categories(root))
    groups = [cats] if args.mode == "unified" else [[c] for c in cats]
    epochs = args.epochs if args.mode == "unified" else args.epochs * len(cats)
    val_preds, test_preds, norms, seconds, losses = [], [], {}, 0.0, []
    for group in groups:
        train, val, test = splits(root, group, args)
        seed_everything(seed)
        model = build_model(model_name, image_size=args.image_size, **extras)
        path = None
        if ckpt is not None:
            path = ckpt / f"{cand}-{args.mode}-{'+'.join(group) if len(group) == 1 else 'all'}-s{seed}.pt"
        config = TrainConfig(epochs=epochs, seed=seed, progress=False, checkpoint=str(path) if path else None,
                             **overrides)
        t0 = time.perf_counter()
        result = train_model(model, train, config, val_set=val)
        seconds += time.perf_counter() - t0
        losses.append(result.losses[-1])
        norms.update(result.normalization)
        scorer = torch_scorer(model.eval())
        val_preds.append(predict_dataset(scorer, PastedDefects(val, seed=seed), batch_size=16))
        test_preds.append(predict_dataset(scorer, test, batch_size=16))
    row = {"candidate": cand, "seed": seed, "mode": args.mode, "epochs": epochs, "train_seconds": seconds,
           "date": rw.utc_now(), "load_after": list(rw.load_average()),
           "last_loss": losses, "image_size": args.image_size,
           "val": metrics(_cat(val_preds), None), "test": metrics(_cat(test_preds), norms)}
    return row


def _cat(preds: list[Any]) -> Any:
    if len(preds) == 1:
        return preds[0]
    first = preds[0]
    return type(first)(
        scores=np.concatenate([p.scores for p in preds]), maps=np.concatenate([p.maps for p in preds]),
        labels=np.concatenate([p.labels for p in preds]), masks=np.concatenate([p.masks for p in preds]),
        categories=[c for p in preds for c in p.categories], paths=[x for p in preds for x in p.paths],
        has_mask=np.concatenate([p.has_mask for p in preds]))


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summary(rows: list[dict[str, Any]]) -> str:
    """Mean ± standard deviation over seeds per (data, mode, candidate): validation (selection) columns
    first, then the test columns (report only)."""
    head = ["data", "mode", "candidate", "seeds", "val image AUROC", "val pixel AUROC", "test image AUROC",
            "test pixel AUROC", "test FR", "test escape", "test F1", "train s (mean)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("data", "?"), r["mode"], r["candidate"]), []).append(r)
    for (data, mode, cand), rs in groups.items():
        def col(split: str, key: str, rs: list[dict[str, Any]] = rs) -> str:
            return _ms([r[split]["mean"][key] for r in rs])
        out.append("| " + " | ".join([
            data, mode, cand, ",".join(str(r["seed"]) for r in rs), col("val", "image_auroc"),
            col("val", "pixel_auroc"), col("test", "image_auroc"), col("test", "pixel_auroc"),
            col("test", "false_reject_rate"), col("test", "escape_rate"), col("test", "f1_at_threshold"),
            f"{statistics.mean(r['train_seconds'] for r in rs):.0f}"]) + " |")
    return "\n".join(out)


def per_category_table(rows: list[dict[str, Any]]) -> str:
    """Test image AUROC per category, mean over seeds, per (data, mode, candidate)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("data", "?"), r["mode"], r["candidate"]), []).append(r)
    out = []
    for data in dict.fromkeys(k[0] for k in groups):
        keys = [k for k in groups if k[0] == data]
        cats = list(groups[keys[0]][0]["test"]["per_category"])
        out += [f"Test image AUROC per category, {data} (mean over seeds):", "",
                "| mode | candidate | " + " | ".join(cats) + " |", "|---|---|" + "---:|" * len(cats)]
        for k in keys:
            vals = [statistics.mean(r["test"]["per_category"][c]["image_auroc"] for r in groups[k]) for c in cats]
            out.append(f"| {k[1]} | {k[2]} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        run = rw.RunInfo.start("benchmarks/recipe_selection.py", os.environ.get("OMP_NUM_THREADS", "1"))
        rows = [r for f in args.summarize.split(",") for r in json.loads(Path(f).read_text())]
        run.notes.append(f"runs {min(r.get('date', '?') for r in rows)} to {max(r.get('date', '?') for r in rows)}"
                         f" (the command above re-summarizes them); each run: `--seeds 0,1,2 --epochs "
                         f"{rows[0]['epochs'] if rows[0]['mode'] == 'unified' else '?'}` at "
                         f"{rows[0]['image_size']} px, torch threads 1, niced, 2 cores shared by six jobs")
        body = ("Mean ± standard deviation over seeds. Selection columns: `val` = held-out normal validation images "
                "+ the same images with a pasted defect; `test` columns are for the report only.\n\n"
                + summary(rows) + "\n\n" + per_category_table(rows))
        if args.part:
            rw.publish(args, "recipe-selection", "Training recipes chosen on validation + pasted defects",
                       "benchmarks/recipe_selection.py", body, run, part=args.part.split(","))
        else:
            print(body)
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    label, root = dataset_of(args.data)
    out = Path(args.out) if args.out else None
    rows: list[dict[str, Any]] = json.loads(out.read_text()) if out and out.is_file() else []
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    if ckpt:
        ckpt.mkdir(parents=True, exist_ok=True)
    for cand in args.candidates.split(","):
        if cand not in CANDIDATES:
            raise SystemExit(f"unknown candidate {cand!r}; choose from {', '.join(CANDIDATES)}")
        for seed in (int(s) for s in args.seeds.split(",")):
            done = [r for r in rows if (r.get("data"), r["mode"], r["candidate"], r["seed"], r["epochs"] if
                    args.mode == "unified" else r["epochs"] // max(1, len(list_categories(root)))) ==
                    (label, args.mode, cand, seed, args.epochs)]
            if done:
                continue
            row = {"data": label, **run_one(cand, seed, root, args, ckpt)}
            rows.append(row)
            v, t = row["val"]["mean"], row["test"]["mean"]
            print(f"[{label}] {args.mode} {cand} seed {seed}: val image {v['image_auroc']:.3f} pixel "
                  f"{v['pixel_auroc']:.3f} | test image {t['image_auroc']:.3f} pixel {t['pixel_auroc']:.3f} "
                  f"({row['train_seconds']:.0f}s)", flush=True)
            if out:
                gc.write_json(out, rows)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
