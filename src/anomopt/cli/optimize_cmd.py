"""``anomopt optimize`` (alias ``anomopt export``): run a target's pipeline on a trained checkpoint and
write the deployable artifact folder. One command, one flag set; ``--calib-data`` is kept as a hidden
spelling of ``--data`` so scripts written for the old ``export`` command keep working."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from anomopt.cli.common import DefaultsHelpFormatter, flag_pass_options, require_positive
from anomopt.errors import ConfigError
from anomopt.io import write_json_atomic
from anomopt.outputs import prepare_output_dir, work_dir

__all__ = ["register", "run"]

#: the ``lower`` options the Jetson flags set (passed only when given, so a CPU target sees none)
JETSON_FLAGS = {
    "dla_core": "--dla-core",
    "trt_quantization": "--trt-quantization",
    "fp16_fallback": "--fp16-fallback",
    "workspace_mib": "--workspace-mib",
}


def _bits(text: str) -> int:
    from anomopt.precision import Precision

    try:
        return Precision.parse(text).bits
    except ConfigError:
        raise argparse.ArgumentTypeError("bits must be 8, 16 or 32 (or int8, fp16, fp32)") from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``optimize`` and its alias ``export``."""
    p = sub.add_parser(
        "optimize",
        aliases=["export"],
        help="optimize a trained checkpoint for a target (pipeline of passes) and write the artifact folder",
        description="Resolve the target x precision pipeline (passes/<target>-<precision>.toml) or your own, "
        "run it with drift checks after every pass, optionally gate on AUROC, and write OUT/: model.onnx, "
        "meta.json (input contract, per-category thresholds, hashes), report.json, and for Jetson targets "
        "build_engine.sh (the trtexec command) and calib.cache when needed. Calibration uses normal training "
        "images of --data; test images only with --evaluate. --out is replaced whole when it is an earlier "
        "artifact; any other non-empty folder needs --overwrite, and a folder holding the checkpoint or the "
        "data is never replaced. `anomopt export` is the same command.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint written by `anomopt train`")
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="MVTec-layout data set root: its normal training images calibrate INT8 and its validation split "
        "re-fits the thresholds (needed at 8 bits unless --calib-source noise)",
    )
    p.add_argument("--calib-data", dest="data", default=None, help=argparse.SUPPRESS)  # old `export` spelling
    p.add_argument("--categories", default="all", help="'all' (the checkpoint's categories) or a comma-separated list")
    p.add_argument("--target", default="cpu", help="cpu | xavier_nx | orin")
    p.add_argument("--bits", type=_bits, default=8, help="precision: 8, 16 or 32 (or int8, fp16, fp32)")
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
    jetson = p.add_argument_group("Jetson targets (xavier_nx, orin)")
    jetson.add_argument(
        "--dla-core", type=int, default=None, metavar="N", help="build for DLA core N (GPU fallback on)"
    )
    jetson.add_argument(
        "--trt-quantization",
        choices=("explicit", "implicit"),
        default=None,
        help="INT8: Q/DQ ONNX (explicit, the default) or FP32 ONNX + calib.cache (implicit)",
    )
    jetson.add_argument(
        "--fp16-fallback",
        action="store_true",
        default=None,
        help="INT8: let the layers without Q/DQ (teacher, head) run in FP16 too (adds --fp16)",
    )
    jetson.add_argument(
        "--workspace-mib", type=int, default=None, metavar="MIB", help="TensorRT workspace (default 1024)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="artifact folder to write (replaced atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that is not an artifact")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars; print only the final summary")
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> tuple[str, ...]:
    """What the command reads: a folder replaced whole must never hold one of them."""
    return tuple(str(p) for p in (args.checkpoint, args.data, args.pipeline) if p)


def run(args: argparse.Namespace) -> int:
    """Check the flags, lock ``--out``, optimize and save; returns the exit code."""
    from anomopt.targets import get_target

    get_target(args.target).check_bits(args.bits)
    require_positive(args.calib_samples, "--calib-samples")
    _check_flags(args)
    # Checked and locked before the long work: a bad --out fails in a second, not after the whole run.
    with prepare_output_dir(args.out, "artifact", overwrite=args.overwrite, inputs=_inputs(args)):
        return _run(args)


def _check_flags(args: argparse.Namespace) -> None:
    if not args.evaluate:
        given = [f for f, v in (("--max-image-auroc-drop", args.max_image_auroc_drop),
                                ("--max-pixel-auroc-drop", args.max_pixel_auroc_drop)) if v is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} needs --evaluate (AUROC is measured on the test split)")
    if args.evaluate and not args.data:
        raise ConfigError("--evaluate needs --data DIR (its test split is scored)")
    if args.bits == 8 and args.calib_source != "noise" and not args.data:
        raise ConfigError("--data DIR is required at 8 bits (normal training images calibrate), "
                          "or use --calib-source noise")


def _pass_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-pass options from the flags that were given (``flag_pass_options`` then keeps those of the
    passes the pipeline runs); the Jetson flags go to ``lower``, whose backend refuses them for ``cpu``."""
    options: dict[str, dict[str, Any]] = {}
    if args.calib_method:
        options.setdefault("calibrate", {})["method"] = args.calib_method
        options.setdefault("modelopt_quantize", {})["method"] = args.calib_method
    if args.scope:
        options.setdefault("insert_fake_quant", {})["scope"] = args.scope
    lower = {key: getattr(args, key) for key in JETSON_FLAGS if getattr(args, key) is not None}
    if lower:
        options["lower"] = lower
    return options


def _categories(args: argparse.Namespace, payload: dict[str, Any]) -> Any:
    if args.categories != "all":
        return args.categories
    return payload.get("categories") or "all"


def _run(args: argparse.Namespace) -> int:
    from anomopt.api import optimize
    from anomopt.checkpoint import read_checkpoint
    from anomopt.data import load_mvtec
    from anomopt.metrics import format_table
    from anomopt.targets.modelopt_quant import quantizer_variant

    payload = read_checkpoint(args.checkpoint)
    size = int(payload["config"]["image_size"])
    cats = _categories(args, payload)
    calib = load_mvtec(args.data, cats, split="train", image_size=size, seed=args.seed) if args.data else None
    test = load_mvtec(args.data, cats, split="test", image_size=size) if args.evaluate else None
    tolerance = {
        key: value
        for key, value in (("max_image_auroc_drop", args.max_image_auroc_drop),
                           ("max_pixel_auroc_drop", args.max_pixel_auroc_drop))
        if value is not None
    }
    variant = quantizer_variant(args.quantizer, args.variant, args.pipeline)
    pipeline, options = flag_pass_options(args.pipeline, args.target, args.bits, variant, _pass_options(args))
    with work_dir("anomopt-optimize-") as work:  # lowering's files; removed on success and on failure
        om = optimize(
            args.checkpoint,  # optimize() refuses one without thresholds and re-fits them on the artifact
            target=args.target,
            bits=args.bits,
            calib=calib,
            eval=test,
            tolerance=tolerance or None,
            passes=pipeline,
            calib_source=args.calib_source if calib is not None else "noise",
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
    _print_written(folder)
    return 0


def _print_written(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB" for k, v in meta["files"].items())
    print(f"artifact: {folder} ({meta['target']} {meta['precision']}: {sizes})")
    if (folder / "build_engine.sh").is_file():
        print(f"on the Jetson: copy {folder} and run {folder / 'build_engine.sh'}")
