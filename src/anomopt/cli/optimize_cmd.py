"""``anomopt optimize``: run a pipeline on a trained checkpoint and write the deployable artifact."""

from __future__ import annotations

import argparse

from anomopt.cli.common import DefaultsHelpFormatter, flag_pass_options, require_positive
from anomopt.io import write_json_atomic
from anomopt.outputs import prepare_output_dir, work_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        help="optimize a trained checkpoint for a target (pipeline of passes) and write the artifact",
        description="Resolve the target x precision pipeline (passes/<target>-<precision>.toml) or your own, "
        "run it with drift checks after every pass, optionally gate on AUROC, and save the artifact folder. "
        "--out is replaced whole when it is an earlier artifact; any other non-empty folder needs --overwrite, "
        "and a folder holding the checkpoint or the data is never replaced.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint written by `anomopt train`")
    p.add_argument("--data", required=True, help="MVTec-layout data: its training split calibrates")
    p.add_argument("--categories", default="all", help="'all' (the checkpoint's categories) or a comma-separated list")
    p.add_argument("--target", default="cpu", help="cpu | xavier_nx | orin")
    p.add_argument("--bits", type=int, default=8, choices=[8, 16, 32], help="precision")
    p.add_argument("--pipeline", default=None, help="a pipeline TOML file to use instead of the shipped one")
    p.add_argument("--variant", default=None, help="a shipped variant, e.g. qat or prune (cpu-int8-qat.toml)")
    p.add_argument(
        "--quantizer",
        default="anomopt",
        choices=["anomopt", "modelopt"],
        help="INT8 quantizer of the Jetson targets: anomopt's own or NVIDIA ModelOpt (the '-modelopt' pipeline)",
    )
    p.add_argument(
        "--calib-source",
        default="train",
        choices=["train", "noise", "mixed"],
        help="calibration images: normal training images, random-normal noise, or half of each",
    )
    p.add_argument("--calib-samples", type=int, default=64, help="calibration images")
    p.add_argument(
        "--calib-method",
        default=None,
        choices=["max", "percentile", "entropy", "mse"],
        help="override the pipeline's calibration method",
    )
    p.add_argument("--scope", default=None, choices=["student", "all"], help="quantize the student or both")
    p.add_argument("--evaluate", action="store_true", help="measure AUROC before/after on the test split")
    p.add_argument("--max-image-auroc-drop", type=float, default=None, help="gate: AUROC points")
    p.add_argument("--max-pixel-auroc-drop", type=float, default=None, help="gate: AUROC points")
    p.add_argument(
        "--threshold-policy",
        default=None,
        metavar="POLICY",
        help="image threshold from the validation normals: z:K (z-score above K; default z:3) or fpr:R "
        "(target false-reject rate R, e.g. fpr:0.01); see docs/decisions.md",
    )
    p.add_argument("--out", required=True, help="artifact folder to write (replaced atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that is not an artifact")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars; print only the final summary")
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> tuple[str, ...]:
    """What the command reads: a folder replaced whole must never hold one of them."""
    return tuple(str(p) for p in (args.checkpoint, args.data, args.pipeline) if p)


def run(args: argparse.Namespace) -> int:
    require_positive(args.calib_samples, "--calib-samples")
    # Checked and locked before the long work: a bad --out fails in a second, not after the whole run.
    with prepare_output_dir(args.out, "artifact", overwrite=args.overwrite, inputs=_inputs(args)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from anomopt.api import optimize
    from anomopt.checkpoint import read_checkpoint
    from anomopt.data import load_mvtec
    from anomopt.errors import ConfigError
    from anomopt.metrics import format_table
    from anomopt.targets.modelopt_quant import quantizer_variant

    if not args.evaluate:
        given = [f for f, v in (("--max-image-auroc-drop", args.max_image_auroc_drop),
                                ("--max-pixel-auroc-drop", args.max_pixel_auroc_drop)) if v is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} needs --evaluate (AUROC is measured on the test split)")
    payload = read_checkpoint(args.checkpoint)
    size = int(payload["config"]["image_size"])
    cats = args.categories if args.categories != "all" else (payload.get("categories") or "all")
    calib = load_mvtec(args.data, cats, split="train", image_size=size, seed=args.seed)
    test = load_mvtec(args.data, cats, split="test", image_size=size) if args.evaluate else None
    options: dict[str, dict] = {}
    if args.calib_method:
        options.setdefault("calibrate", {})["method"] = args.calib_method
        options.setdefault("modelopt_quantize", {})["method"] = args.calib_method
    if args.scope:
        options.setdefault("insert_fake_quant", {})["scope"] = args.scope
    tolerance = {}
    if args.max_image_auroc_drop is not None:
        tolerance["max_image_auroc_drop"] = args.max_image_auroc_drop
    if args.max_pixel_auroc_drop is not None:
        tolerance["max_pixel_auroc_drop"] = args.max_pixel_auroc_drop
    variant = quantizer_variant(args.quantizer, args.variant, args.pipeline)
    pipeline, options = flag_pass_options(args.pipeline, args.target, args.bits, variant, options)
    with work_dir("anomopt-optimize-") as work:  # lowering's files; removed on success and on failure
        om = optimize(
            args.checkpoint,
            target=args.target,
            bits=args.bits,
            calib=calib,
            eval=test,
            tolerance=tolerance or None,
            passes=pipeline,
            calib_source=args.calib_source,
            calib_samples=args.calib_samples,
            pass_options=options,
            workdir=work,
            seed=args.seed,
            progress=not args.quiet,
            data_root=args.data,
            threshold_policy=args.threshold_policy,
        )
        if args.quiet:  # otherwise optimize() printed the summary with its progress lines (stderr)
            print(om.summary())
        if om.metrics_before is not None and om.metrics_after is not None:
            print(format_table(om.metrics_before, title="before (FP32 checkpoint, its own thresholds)"))
            print(format_table(om.metrics_after, title="after (the artifact, at the thresholds it ships)"))
        folder = om.save(args.out, overwrite=args.overwrite, inputs=_inputs(args))
    write_json_atomic(folder / "optimize.json", {"command": "optimize", "checkpoint": str(args.checkpoint)})
    print(f"artifact: {folder}")
    return 0
