"""``anomopt demo``."""

from __future__ import annotations

import argparse

from anomopt.cli.common import DefaultsHelpFormatter, require_positive
from anomopt.outputs import prepare_output_dir


def register(sub: argparse._SubParsersAction) -> None:
    from anomopt.demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on the embedded synthetic data (offline)",
        description="Generate data, train a unified STFPM, optimize it for CPU INT8 (PTQ and QAT), export, "
        "evaluate FP32 vs INT8 per category, benchmark latency, print a summary and write an HTML report. "
        "--out must be new, empty or an earlier demo folder (else pass --overwrite).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--out", default=d.out, help="output folder")
    p.add_argument("--data", default=None, help="an MVTec-layout data set instead of the synthetic one")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out that is not a demo run")
    p.add_argument("--categories", default=d.categories, help="'all' or a comma-separated list")
    p.add_argument("--image-size", type=int, default=d.image_size, help="model input size in pixels")
    p.add_argument("--n-train", type=int, default=d.n_train, help="synthetic training images per category")
    p.add_argument("--n-test", type=int, default=d.n_test, help="synthetic test images per category")
    p.add_argument(
        "--val-fraction", type=float, default=d.val_fraction,
        help="normal training images per category held out to fit the thresholds",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--qat-epochs", type=int, default=d.qat_epochs, help="quantization-aware fine-tuning epochs")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from anomopt.demo import DemoConfig, run_demo

    for value, flag in ((args.image_size, "--image-size"), (args.n_train, "--n-train"), (args.epochs, "--epochs")):
        require_positive(value, flag)
    require_positive(args.threads, "--threads")
    inputs = (args.data,) if args.data else ()
    with prepare_output_dir(args.out, "demo", overwrite=args.overwrite, inputs=inputs):
        run_demo(
            DemoConfig(
                out=args.out,
                data=args.data,
                categories=args.categories,
                image_size=args.image_size,
                n_train=args.n_train,
                n_test=args.n_test,
                val_fraction=args.val_fraction,
                epochs=args.epochs,
                qat_epochs=args.qat_epochs,
                threads=args.threads,
                seed=args.seed,
                progress=not args.quiet,
            )
        )
    return 0
