"""Training throughput with feature extractors cut after their last tap ("lean") vs timm's full block list.

timm's ``features_only`` EfficientNet builds and runs every block, although nothing after the last tapped
feature reaches an output. anomopt now cuts those blocks (``anomopt.models.backbones.cut_after_last_tap``).
This measures what that buys in training, in one process: the "full" models are built with the cut
switched off (exactly the networks of earlier versions), the "lean" ones as shipped. Both variants train
the same images, interleaved epoch by epoch (the order alternates every round), so they share the machine
load. Reported per model and feature-cache mode: median training images/s over the rounds (the training
loop only), median setup seconds (stacking the images and, with the cache, the frozen teacher's
features), and, robust to other load on the machine, images per CPU-second of this process over the whole
epoch call (setup included; with one thread, CPU time is the work done). Run::

    PYTHONPATH=src .venv/bin/python benchmarks/lean_backbone.py --image-size 128 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results_writer as rw  # noqa: E402

REALDEV = HERE.parent.parent / "shared" / "data" / "realdev"


def _subset(dataset, per_category: int, seed: int):
    import numpy as np
    from torch.utils.data import Subset

    rng = np.random.default_rng(seed)
    cats = np.array([s.category for s in dataset.samples])
    keep = [int(i) for c in sorted(set(cats)) for i in rng.permutation(np.flatnonzero(cats == c))[:per_category]]
    return Subset(dataset, sorted(keep))


def _build(name: str, size: int, lean: bool):
    import torch

    import anomopt.models.backbones as backbones
    from anomopt.models import build_model

    original = backbones.cut_after_last_tap
    if not lean:
        backbones.cut_after_last_tap = lambda net: 0
    try:
        torch.manual_seed(0)
        return build_model(name, image_size=size)
    finally:
        backbones.cut_after_last_tap = original


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REALDEV)
    p.add_argument("--models", default="stfpm")
    p.add_argument("--cache", default="on,off", help="feature-cache modes to measure: on, off or both")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train-per-category", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto")
    rw.add_args(p)
    args = p.parse_args(argv)

    import torch

    from anomopt.data import load_mvtec
    from anomopt.train import TrainConfig, train_model

    if not args.data.is_dir():
        print(f"{args.data}: no such data set (realdev lives in ../shared/data/realdev)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    run = rw.RunInfo.start(__file__, args.threads, argv)
    train = _subset(load_mvtec(args.data, "all", split="train", image_size=args.image_size), args.train_per_category, 0)
    rows = []
    for name in args.models.split(","):
        for cache in args.cache.split(","):
            models = {v: _build(name, args.image_size, v == "lean") for v in ("full", "lean")}
            speed: dict[str, list[float]] = {v: [] for v in models}
            setup: dict[str, list[float]] = {v: [] for v in models}
            per_cpu: dict[str, list[float]] = {v: [] for v in models}
            for r in range(args.rounds + 1):  # round 0 warms up and is not counted
                for v in (["full", "lean"] if r % 2 == 0 else ["lean", "full"]):
                    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, precision=args.precision, progress=False,
                                      cache_features=cache == "on", seed=r)
                    t0, c0 = time.perf_counter(), time.process_time()
                    result = train_model(models[v], train, cfg)
                    if r:
                        speed[v].append(result.images_per_second)
                        setup[v].append(time.perf_counter() - t0 - result.seconds)
                        per_cpu[v].append(len(train) / (time.process_time() - c0))
            med = {v: statistics.median(speed[v]) for v in models}
            cpu_med = {v: statistics.median(per_cpu[v]) for v in models}
            rows.append((name, cache, med["full"], med["lean"], med["lean"] / med["full"],
                         statistics.median(setup["full"]), statistics.median(setup["lean"]),
                         cpu_med["full"], cpu_med["lean"], cpu_med["lean"] / cpu_med["full"]))
            print(f"{name} cache={cache}: full {med['full']:.1f} img/s, lean {med['lean']:.1f} img/s "
                  f"({med['lean'] / med['full']:.2f}x); setup {rows[-1][5]:.2f} s -> {rows[-1][6]:.2f} s", flush=True)
    lines = [
        f"- data: {args.data.name}, {len(train)} training images ({args.train_per_category} per category), "
        f"{args.image_size} px, batch {args.batch_size}, precision {args.precision}; medians of {args.rounds} "
        "interleaved epochs per variant",
        "- full = timm's block list (earlier versions), lean = cut after the last tap (this version)",
        "",
        "| model | teacher-feature cache | full images/s | lean images/s | lean / full | setup s full | setup s lean "
        "| full images/CPU-s | lean images/CPU-s | lean / full (CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f}x | {r[5]:.2f} | {r[6]:.2f} "
          f"| {r[7]:.1f} | {r[8]:.1f} | {r[9]:.2f}x |" for r in rows],
    ]
    models = [*dict.fromkeys(r[0] for r in rows)]
    rw.publish(args, "lean-backbone", "Lean feature extractors: training throughput", "benchmarks/lean_backbone.py",
               "\n".join(lines), run, part=[f"{m}@{args.image_size}" for m in models],
               part_title=f"{', '.join(m.upper() for m in models)} at {args.image_size} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
