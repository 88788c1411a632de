"""``anomopt train`` and ``anomopt evaluate``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from anomopt.errors import ConfigError
from anomopt.io import write_json_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a unified (or one-class) KD anomaly model",
        description="Train STFPM, Reverse Distillation or Uninformed Students on an MVTec-layout data set. "
        "Unified mode trains one model on the pooled normal images of every category; one-class mode "
        "trains one model per category. Checkpoints are written atomically every epoch.",
    )
    p.add_argument("--model", choices=["stfpm", "rd", "us"], default="stfpm")
    p.add_argument("--data", required=True, help="data set root in MVTec AD layout")
    p.add_argument("--categories", default="all", help="'all' or a comma-separated list")
    p.add_argument("--mode", choices=["unified", "one-class"], default="unified")
    p.add_argument("--backbone", default="efficientnet_lite0", help="teacher backbone (offline default)")
    p.add_argument("--weights", default=None, help="backbone weights file (resnet18 / wide_resnet50_2)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--optimizer", choices=["sgd", "adam"], default=None, help="default: the model's recipe (STFPM sgd, RD/US adam)"
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's recipe)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the model's recipe")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: the recipe's 0.9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "mixed", "fp32"],
        default="auto",
        help="autocast for the student. mixed: bf16 with depthwise convs in fp32 (fastest on bf16 CPUs); "
        "auto: mixed where the CPU has bf16, bf16 on CUDA, else fp32",
    )
    p.add_argument("--no-cache", action="store_true", help="do not cache the frozen teacher's features")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out normal images for thresholds")
    p.add_argument("--out", required=True, help="output folder for checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.add_argument(
        "--nproc", type=int, default=1, help="processes for DDP training (gloo on CPU, via torchrun)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint or an artifact folder: AUROC, AUPRO, F1-max and decisions at the threshold",
        description="Evaluate a trained checkpoint (torch, its own thresholds) or a deployable artifact folder "
        "(through the torch-free runtime, at the thresholds in its meta.json) on the test split: per category "
        "image/pixel AUROC, AUPRO, F1-max, and the false-reject rate (good images flagged), escape rate "
        "(anomalous images passed) and F1 at the shipped threshold. Pixel metrics are n/a where masks are "
        "missing. Prints a table and writes JSON.",
    )
    e.add_argument("checkpoint", metavar="CHECKPOINT_OR_ARTIFACT")
    e.add_argument("--data", required=True)
    e.add_argument("--categories", default="all")
    e.add_argument("--threads", type=int, default=None, help="artifact: ONNX Runtime threads")
    e.add_argument("--json", default=None, help="write the metrics to this JSON file")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=run_evaluate)


def _relaunch_with_torchrun(args: argparse.Namespace) -> int:
    argv = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "anomopt.cli.main",
        *cleaned,
    ]
    return subprocess.call(cmd)


def run_train(args: argparse.Namespace) -> int:
    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _relaunch_with_torchrun(args)
    if args.epochs < 1:
        raise ConfigError("--epochs must be at least 1")
    from anomopt.data import load_mvtec
    from anomopt.data.dataset import split_record
    from anomopt.data.layout import list_categories, parse_categories
    from anomopt.models import build_model
    from anomopt.train import TrainConfig, init_distributed_from_env, seed_everything, train_model

    init_distributed_from_env()
    cats = parse_categories(args.categories, list_categories(args.data))
    groups = [cats] if args.mode == "unified" else [[c] for c in cats]
    out = Path(args.out)
    summary = {}
    for group in groups:
        name = "unified" if args.mode == "unified" else group[0]
        ckpt = out / "model.ckpt" if args.mode == "unified" else out / group[0] / "model.ckpt"
        common = dict(image_size=args.image_size, val_fraction=args.val_fraction, seed=args.seed)
        train_set = load_mvtec(args.data, group, split="train", **common)
        val_set = load_mvtec(args.data, group, split="val", **common)
        seed_everything(args.seed)
        model = build_model(
            args.model, backbone=args.backbone, image_size=args.image_size, weights=args.weights
        )
        cfg = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=args.weight_decay,
            momentum=args.momentum,
            seed=args.seed,
            precision=args.precision,
            cache_features=not args.no_cache,
            checkpoint=str(ckpt),
            resume=args.resume,
            progress=not args.quiet,
            device=args.device,
        )
        split = split_record(args.data, group, args.val_fraction, args.seed, val_set)
        result = train_model(model, train_set, cfg, val_set=val_set, categories=group, split=split)
        summary[name] = {
            "checkpoint": str(ckpt),
            "categories": group,
            "epochs": result.epochs_run,
            "final_loss": result.losses[-1] if result.losses else None,
            "seconds": result.seconds,
            "images_per_second": result.images_per_second,
        }
        print(
            f"{name}: {result.epochs_run} epochs, loss {summary[name]['final_loss']:.4f}, "
            f"{result.images_per_second:.1f} images/s -> {ckpt}"
        )
    write_json_atomic(out / "train.json", {"model": args.model, "mode": args.mode, "runs": summary})
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from anomopt.evaluate import is_artifact

    if is_artifact(args.checkpoint):
        from anomopt.evaluate import evaluate_artifact

        result = evaluate_artifact(
            args.checkpoint, args.data, args.categories, threads=args.threads, progress=not args.quiet
        )
    else:
        from anomopt.evaluate import evaluate_checkpoint

        result = evaluate_checkpoint(args.checkpoint, args.data, args.categories, progress=not args.quiet)
    from anomopt.metrics import format_table

    print(format_table(result, title=f"{args.checkpoint}"))
    if args.json:
        write_json_atomic(args.json, result)
    return 0
