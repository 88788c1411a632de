"""``anomopt train`` (``anomopt evaluate`` lives in :mod:`anomopt.cli.evaluate_cmd`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from anomopt.cli.common import DefaultsHelpFormatter, non_category_folders, require_positive, warn
from anomopt.errors import CheckpointError, ConfigError, DataError
from anomopt.io import write_json_atomic
from anomopt.outputs import TRAIN_FORMAT, OutputDir, prepare_output_dir

#: Fewest normal images a category holds out to fit its threshold (a spread from 1-2 images is noise).
MIN_VAL_IMAGES = 5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a unified (or one-class) KD anomaly model",
        description="Train STFPM, Reverse Distillation or Uninformed Students on an MVTec-layout data set. "
        "Unified mode trains one model on the pooled normal images of every category; one-class mode "
        "trains one model per category. Checkpoints are written atomically every epoch. --out must be new, "
        "empty or an earlier training run: a finished run is only continued with --resume or replaced "
        "with --overwrite.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=["stfpm", "rd", "us"], default="stfpm", help="distillation method")
    p.add_argument("--data", required=True, help="data set root in MVTec AD layout")
    p.add_argument("--categories", default="all", help="'all' or a comma-separated list")
    p.add_argument("--mode", choices=["unified", "one-class"], default="unified", help="one model or one per category")
    p.add_argument("--backbone", default="efficientnet_lite0", help="teacher backbone (offline weights)")
    p.add_argument("--weights", default=None, help="backbone weights file (resnet18 / wide_resnet50_2)")
    p.add_argument("--image-size", type=int, default=256, help="square input size in pixels")
    p.add_argument("--epochs", type=int, default=20, help="total epochs (with --resume: the total to reach)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step")
    p.add_argument(
        "--optimizer", choices=["sgd", "adam"], default=None, help="default: the model's recipe (STFPM sgd, RD/US adam)"
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's recipe)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the model's recipe")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: the recipe's 0.9)")
    p.add_argument(
        "--warmup", type=float, default=None, help="fraction of the steps spent warming the lr up (default: recipe)"
    )
    p.add_argument(
        "--decay",
        choices=["constant", "cosine", "linear"],
        default=None,
        help="lr decay after warm-up (default: recipe)",
    )
    p.add_argument(
        "--final-lr", type=float, default=None, help="lr at the last step, as a fraction of --lr (default: recipe)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "mixed", "fp32"],
        default="auto",
        help="autocast for the student. mixed: bf16 with depthwise convs in fp32 (fastest on bf16 CPUs); "
        "auto: mixed where the CPU has bf16, bf16 on CUDA, else fp32",
    )
    p.add_argument("--no-cache", action="store_true", help="do not cache the frozen teacher's features")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help=f"share of each category's normal images held out to fit its threshold (at least "
        f"{MIN_VAL_IMAGES} images)",
    )
    p.add_argument("--out", required=True, help="output folder for checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    p.add_argument(
        "--overwrite", action="store_true", help="train a new model over a finished run or a folder of other files"
    )
    p.add_argument(
        "--nproc", type=int, default=1, help="processes for DDP training (gloo on CPU, via torchrun)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)


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


def _check_options(args: argparse.Namespace) -> None:
    require_positive(args.epochs, "--epochs")
    require_positive(args.batch_size, "--batch-size")
    require_positive(args.nproc, "--nproc")
    require_positive(args.image_size, "--image-size", 64)
    if not 0.0 < args.val_fraction < 1.0:
        raise ConfigError(
            f"--val-fraction must be in (0, 1), not {args.val_fraction}: every category holds out normal images "
            "to fit its threshold"
        )
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: pass only one")


def _check_run_folder(od: OutputDir, args: argparse.Namespace) -> None:
    """Refuse to train over a finished or interrupted run unless --resume or --overwrite says what to do."""
    if args.resume or args.overwrite or not od.checkpoints:
        return
    from anomopt.checkpoint import read_checkpoint

    ckpt = od.checkpoints[0]
    state = read_checkpoint(ckpt).get("training") or {}
    epoch = int(state.get("epoch", 0))
    if state.get("complete"):
        raise ConfigError(
            f"{od.path}: --out holds a finished training run ({ckpt.name}, {epoch} epochs); pass --resume to "
            "continue it (with more --epochs), --overwrite to train a new model over it, or choose another --out"
        )
    raise ConfigError(
        f"{od.path}: --out holds an interrupted training run ({ckpt.name} after epoch {epoch}); pass --resume "
        "to continue it, --overwrite to start over, or choose another --out"
    )


def _split(args: argparse.Namespace, group: list[str], loud: bool):
    """Train and validation sets of ``group``; each category holds out at least MIN_VAL_IMAGES images."""
    from anomopt.data import AnomalyDataset, scan_mvtec, split_validation

    splits = scan_mvtec(args.data, group, require_test=False)
    if args.val_fraction > 0:
        for name, cs in splits.items():
            n = len(cs.train)
            if n <= MIN_VAL_IMAGES:
                raise DataError(
                    f"{Path(args.data) / name / 'train' / 'good'}: category '{name}' has {n} normal training "
                    f"image(s); {MIN_VAL_IMAGES} are held out to fit its threshold and more are needed to train: "
                    f"add normal images (at least {2 * MIN_VAL_IMAGES} are advised)"
                )
            if n < 2 * MIN_VAL_IMAGES and loud:
                warn(
                    f"category '{name}': {n} normal training images, {MIN_VAL_IMAGES} held out for its "
                    f"threshold, {n - MIN_VAL_IMAGES} left to train on"
                )
    samples = [s for cs in splits.values() for s in cs.train]
    train, val = split_validation(samples, args.val_fraction, args.seed, min_val=MIN_VAL_IMAGES)
    val_set = AnomalyDataset(val, args.image_size)
    for i in range(len(val_set)):  # decoded (and cached) now: a bad file fails before training, not after
        val_set[i]
    return AnomalyDataset(train, args.image_size), val_set


def _announce_resume(ckpt: Path, name: str, epochs: int) -> int:
    """Print where ``--resume`` continues; returns the epochs already done."""
    from anomopt.checkpoint import read_checkpoint

    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt}: --resume: no checkpoint to resume from (train without --resume first)")
    done = int((read_checkpoint(ckpt).get("training") or {}).get("epoch", 0))
    if done > epochs:
        raise ConfigError(
            f"{ckpt}: --resume: the checkpoint has {done} epochs, more than --epochs {epochs}; "
            f"pass --epochs {done} or more"
        )
    if done == epochs:
        print(f"{name}: resuming from {ckpt}: all {epochs} epochs done; refitting the thresholds only")
    else:
        print(f"{name}: resuming from {ckpt}: {done} of {epochs} epochs done, continuing at epoch {done + 1}")
    return done


def run_train(args: argparse.Namespace) -> int:
    _check_options(args)
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.nproc > 1 and not under_torchrun:
        with prepare_output_dir(args.out, "train", overwrite=args.overwrite) as od:  # fail before spawning
            _check_run_folder(od, args)
        return _relaunch_with_torchrun(args)
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 owns the folder (lock, checks, files)
        return _train(args, None)
    with prepare_output_dir(args.out, "train", overwrite=args.overwrite) as od:
        _check_run_folder(od, args)
        return _train(args, od)


def _train(args: argparse.Namespace, od: OutputDir | None) -> int:
    from anomopt.data.dataset import split_record
    from anomopt.data.layout import list_categories, parse_categories
    from anomopt.models import build_model
    from anomopt.train import TrainConfig, init_distributed_from_env, seed_everything, train_model

    init_distributed_from_env()
    available = list_categories(args.data)
    if args.categories.strip() == "all" and od is not None:
        for folder in non_category_folders(args.data):
            warn(f"{folder}: no train/good folder, so '{folder.name}' is not a category and is not trained")
    cats = parse_categories(args.categories, available)
    groups = [cats] if args.mode == "unified" else [[c] for c in cats]
    out = Path(args.out)
    summary = {}
    for group in groups:
        name = "unified" if args.mode == "unified" else group[0]
        ckpt = out / "model.ckpt" if args.mode == "unified" else out / group[0] / "model.ckpt"
        resume = args.resume
        if resume and args.mode == "one-class" and not ckpt.is_file():  # the interrupted run never got here
            resume = False
            if od is not None:
                print(f"{name}: no checkpoint at {ckpt} yet; training it from the start")
        done = _announce_resume(ckpt, name, args.epochs) if resume and od is not None else 0
        train_set, val_set = _split(args, group, loud=od is not None)
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
            warmup=args.warmup,
            decay=args.decay,
            final_lr=args.final_lr,
            seed=args.seed,
            precision=args.precision,
            cache_features=not args.no_cache,
            checkpoint=str(ckpt),
            resume=resume,
            progress=not args.quiet,
            device=args.device,
        )
        split = split_record(args.data, group, args.val_fraction, args.seed, val_set)
        result = train_model(model, train_set, cfg, val_set=val_set, categories=group, split=split)
        summary[name] = {
            "checkpoint": str(ckpt),
            "categories": group,
            "epochs": args.epochs,  # the checkpoint's total, also after --resume
            "epochs_this_run": result.epochs_run,
            "resumed_from_epoch": done if resume else None,
            "final_loss": result.losses[-1] if result.losses else None,
            "seconds": result.seconds,
            "images_per_second": result.images_per_second,
            "train_images": len(train_set),
            "val_images": len(val_set),
        }
        loss = summary[name]["final_loss"]
        print(
            f"{name}: {args.epochs} epochs ({result.epochs_run} in this run), "
            f"loss {loss if loss is None else f'{loss:.4f}'}, {result.images_per_second:.1f} images/s -> {ckpt}"
        )
    if od is not None:
        write_json_atomic(
            out / "train.json", {"format": TRAIN_FORMAT, "model": args.model, "mode": args.mode, "runs": summary}
        )
    return 0
