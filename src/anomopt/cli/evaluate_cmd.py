"""``anomopt evaluate``: score a checkpoint or an artifact folder on a data set's test split."""

from __future__ import annotations

import argparse

from anomopt.cli.common import DefaultsHelpFormatter
from anomopt.io import write_json_atomic
from anomopt.outputs import check_output_file


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command."""
    e = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint or an artifact folder: AUROC, AUPRO, F1-max and decisions at the threshold",
        description="Evaluate a trained checkpoint (torch, its own thresholds) or a deployable artifact folder "
        "(through the torch-free runtime, at the thresholds in its meta.json) on the test split: per category "
        "image/pixel AUROC, AUPRO, F1-max, and the false-reject rate (good images flagged), escape rate "
        "(anomalous images passed) and F1 at the shipped threshold. Pixel metrics are n/a where masks are "
        "missing. Prints a table and writes JSON.",
        formatter_class=DefaultsHelpFormatter,
    )
    e.add_argument(
        "checkpoint", metavar="CHECKPOINT_OR_ARTIFACT", help="a checkpoint of `anomopt train` or an artifact folder"
    )
    e.add_argument("--data", required=True, help="data set root in MVTec AD layout (its test split is scored)")
    e.add_argument("--categories", default="all", help="'all' or a comma-separated list")
    e.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (artifact, or --engine onnx)")
    e.add_argument("--engine", default="onnx", choices=["onnx", "torch"],
                   help="checkpoint: run its FP32 ONNX export in ONNX Runtime (fast) or torch eager")
    e.add_argument("--json", default=None, help="write the metrics to this JSON file")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")  # before the long work, not after it
    from anomopt.evaluate import is_artifact

    if is_artifact(args.checkpoint):
        from anomopt.evaluate import evaluate_artifact

        result = evaluate_artifact(
            args.checkpoint, args.data, args.categories, threads=args.threads, progress=not args.quiet
        )
    else:
        from anomopt.evaluate import evaluate_checkpoint

        result = evaluate_checkpoint(args.checkpoint, args.data, args.categories, progress=not args.quiet,
                                     engine=args.engine, threads=args.threads)
    from anomopt.metrics import format_table

    print(format_table(result, title=f"{args.checkpoint}"))
    if args.json:
        write_json_atomic(args.json, result)
    return 0
