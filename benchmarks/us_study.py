"""Uninformed Students recipe study: train one US configuration, score it on a validation set with pasted
defects (normal validation images plus CutPaste-like copies, never test labels) and on the test split.

One JSON line per (data set, configuration, seed) is appended to ``--out``; choose settings on the ``val``
numbers, report the ``test`` ones.

    PYTHONPATH=src python benchmarks/us_study.py --dataset synthetic --name backbone \
        --extra '{"teacher": "backbone"}' --epochs 10 --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grid_common as gc  # noqa: E402
from anomopt.data import load_mvtec  # noqa: E402
from anomopt.inference import predict_dataset, torch_scorer  # noqa: E402
from anomopt.metrics import evaluate_predictions  # noqa: E402
from anomopt.models import build_model  # noqa: E402
from anomopt.models.base import MapHead  # noqa: E402
from anomopt.train import TrainConfig, seed_everything, train_model  # noqa: E402

#: a data producer: its JSON lines are reported (RESULTS.md) by this script
WRITES_RESULTS = False
REPORTED_BY = "benchmarks/us_report.py"

def pasted_defect(x: torch.Tensor, source: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One CutPaste-like defect on image ``x`` (3, H, W): a patch of ``source`` (another normal image of the
    same category), recoloured, a solid blob or a thin scar; returns ``(image, mask)``."""
    _, h, w = x.shape
    out, mask = x.clone(), torch.zeros(1, h, w)
    kind = int(torch.randint(0, 4, (1,), generator=g))
    if kind == 3:  # scar: a thin long stripe
        ph = int(torch.randint(2, max(3, h // 24), (1,), generator=g))
        pw = int(torch.randint(w // 6, w // 3, (1,), generator=g))
        if float(torch.rand(1, generator=g)) < 0.5:
            ph, pw = pw, ph
    else:
        ph = int(torch.randint(max(4, h // 12), max(5, h // 4), (1,), generator=g))
        pw = int(torch.randint(max(4, w // 12), max(5, w // 4), (1,), generator=g))
    dy = int(torch.randint(0, h - ph + 1, (1,), generator=g))  # one draw at a time: the validation set
    dx = int(torch.randint(0, w - pw + 1, (1,), generator=g))  # stays the one every run was chosen on
    sy = int(torch.randint(0, h - ph + 1, (1,), generator=g))
    sx = int(torch.randint(0, w - pw + 1, (1,), generator=g))
    patch = source[:, sy : sy + ph, sx : sx + pw].clone()
    if kind == 1:  # recoloured patch
        gain, shift = 0.5 + torch.rand(3, 1, 1, generator=g), 0.2 * (torch.rand(3, 1, 1, generator=g) - 0.5)
        patch = (patch * gain + shift).clamp(0, 1)
    elif kind in (2, 3):  # solid colour with a little noise
        patch = (torch.rand(3, 1, 1, generator=g) + 0.05 * torch.randn(3, ph, pw, generator=g)).clamp(0, 1)
    out[:, dy : dy + ph, dx : dx + pw] = patch
    mask[:, dy : dy + ph, dx : dx + pw] = 1.0
    return out, mask


class ValWithDefects(Dataset):
    """Normal validation images plus one pasted-defect copy of each (label 1, with its mask)."""

    def __init__(self, val: Dataset, pool: Dataset, seed: int = 0) -> None:
        self.items: list[dict[str, Any]] = []
        g = torch.Generator().manual_seed(seed)
        pool_by_cat: dict[str, list[int]] = {}
        for i in range(len(pool)):  # type: ignore[arg-type]
            pool_by_cat.setdefault(pool[i]["category"], []).append(i)
        for i in range(len(val)):  # type: ignore[arg-type]
            item = val[i]
            self.items.append({**item, "label": 0, "mask": torch.zeros_like(item["image"][:1])})
            idx = pool_by_cat[item["category"]]
            src = pool[idx[int(torch.randint(0, len(idx), (1,), generator=g))]]["image"]
            image, mask = pasted_defect(item["image"], src, g)
            self.items.append({**item, "image": image, "mask": mask, "label": 1, "path": item["path"] + "#paste"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def metrics(model: torch.nn.Module, data: Dataset, normalization: dict[str, Any] | None) -> dict[str, Any]:
    preds = predict_dataset(torch_scorer(model), data, batch_size=16)
    res = evaluate_predictions(
        preds.categories, preds.labels, preds.scores, preds.masks, preds.maps, normalization=normalization
    )
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "false_reject_rate", "escape_rate", "f1_at_threshold")
    rows = {"mean": res["mean"], **res["per_category"]}
    return {c: {k: float(v[k]) for k in keys if k in v} for c, v in rows.items()}


def run(args: argparse.Namespace) -> None:
    dataset, root = gc.dataset_root(args.dataset, argparse.Namespace(synthetic_dir=args.synthetic_dir, quick=False))
    cats = gc.categories_of(root)
    size = args.image_size
    train = load_mvtec(root, cats, "train", size, seed=0)
    val = load_mvtec(root, cats, "val", size, seed=0)
    test = load_mvtec(root, cats, "test", size, seed=0)
    train = gc.per_category_subset(train, args.max_train, 0)
    val = gc.per_category_subset(val, args.max_val, 0)
    test = gc.per_category_subset(test, args.max_test, 1)
    val_defects = ValWithDefects(val, train, seed=0)
    extra = json.loads(args.extra)
    for seed in [int(s) for s in args.seeds.split(",")]:
        seed_everything(seed)
        model = build_model("us", image_size=size, **extra)
        t0 = time.perf_counter()
        if args.load:  # rescore a model saved by --save (scoring options only)
            saved = torch.load(f"{args.load}-s{seed}.pt", weights_only=False)
            model.load_state_dict(saved["state_dict"])
            normalization = saved["normalization"]
        else:
            config = TrainConfig(epochs=args.epochs, seed=seed, progress=args.progress, precision=args.precision,
                                 lr=args.lr)
            normalization = train_model(model, train, config, val_set=val).normalization
        train_s = time.perf_counter() - t0
        model.eval()
        for key, value in json.loads(args.score_options).items():
            if key == "blur_sigma":  # pixels at this image size
                model.head = MapHead(size, combine="sum", blur_sigma=float(value))
            else:
                setattr(model, key, value)
        row = {
            "dataset": dataset, "name": args.name, "extra": extra, "epochs": args.epochs, "seed": seed,
            "image_size": size, "train_images": len(train), "lr": args.lr,  # type: ignore[arg-type]
            "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(),
            "val": metrics(model, val_defects, None),
            "test": metrics(model, test, normalization),
            "score_options": json.loads(args.score_options), "loaded": bool(args.load),
        }
        for vw in [float(v) for v in args.rescore_variance.split(",") if v]:  # scoring only: no retraining
            base = model.variance_weight
            model.variance_weight = vw
            row[f"variance_weight={vw:g}"] = {"val": metrics(model, val_defects, None)["mean"],
                                              "test": metrics(model, test, None)["mean"]}
            model.variance_weight = base
        if args.save:
            torch.save({"extra": extra, "state_dict": model.state_dict(), "normalization": normalization},
                       f"{args.save}-s{seed}.pt")
        line = json.dumps(row)
        with open(args.out, "a") as f:
            f.write(line + "\n")
        v, t = row["val"]["mean"], row["test"]["mean"]
        print(f"{dataset} {args.name} s{seed} {train_s:.0f}s  val img/pix {v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}"
              f"  test img/pix {t['image_auroc']:.3f}/{t['pixel_auroc']:.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--synthetic-dir", default=os.environ.get("ANOMOPT_SYNTH", "/work/models2/synth"))
    p.add_argument("--name", required=True)
    p.add_argument("--extra", default="{}", help="JSON dict of build_model('us', ...) keyword arguments")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seeds", default="0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-train", type=int, default=60)
    p.add_argument("--max-val", type=int, default=20)
    p.add_argument("--max-test", type=int, default=100)
    p.add_argument("--precision", default="auto")
    p.add_argument("--out", default="us_study.jsonl")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--load", default=None, help="score models saved with --save LOAD instead of training")
    p.add_argument("--score-options", default="{}", help='JSON, e.g. {"variance_weight": 1, "blur_sigma": 1}')
    p.add_argument("--rescore-variance", default="", help="comma list of variance weights to score with too")
    p.add_argument("--save", default=None, help="save each trained model to SAVE-s<seed>.pt")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
