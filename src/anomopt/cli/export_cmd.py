"""``anomopt export``: optimize a checkpoint for a target and write the artifact folder (``anomopt bench``
lives in :mod:`anomopt.cli.bench_cmd`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from anomopt.cli.common import flag_pass_options
from anomopt.errors import ConfigError
from anomopt.outputs import prepare_output_dir, work_dir

__all__ = ["register", "run_export"]

PRECISION_BITS = {"8": 8, "16": 16, "32": 32, "int8": 8, "fp16": 16, "fp32": 32}


def _bits(text: str) -> int:
    try:
        return PRECISION_BITS[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError("bits must be 8, 16 or 32 (or int8, fp16, fp32)") from None


def register(subparsers: Any) -> None:
    """Add the ``export`` command."""
    export = subparsers.add_parser(
        "export",
        help="optimize a trained checkpoint for a target and write the deployable artifact folder",
        description=(
            "Run the target's shipped pass pipeline (fold BN, fake-quant the student, calibrate on normal "
            "training images, lower) on CHECKPOINT and write OUT/: model.onnx, meta.json (input contract, "
            "per-category thresholds, hashes), report.json, and for Jetson targets build_engine.sh "
            "(the trtexec command) and calib.cache when needed. Test images are never used."
        ),
    )
    export.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by 'anomopt train'")
    export.add_argument("--target", default="cpu", help="cpu | xavier_nx | orin (default: cpu)")
    export.add_argument("--bits", type=_bits, default=8, help="8, 16 or 32 (default: 8)")
    export.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="artifact folder to write (replaced atomically when new, empty or an earlier artifact)",
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --out that is not an anomopt artifact"
    )
    export.add_argument(
        "--calib-data",
        metavar="DIR",
        help="MVTec-layout data set root; its normal training images calibrate INT8 "
        "(needed unless --calib-source noise)",
    )
    export.add_argument(
        "--categories",
        default=None,
        metavar="NAMES",
        help="comma-separated categories of --calib-data (default: the checkpoint's categories)",
    )
    export.add_argument(
        "--calib-source",
        choices=("train", "noise", "mixed"),
        default="train",
        help="calibration images: normal training images, random-normal noise, or half of each (default: train)",
    )
    export.add_argument(
        "--calib-method",
        choices=("max", "percentile", "entropy", "mse"),
        default=None,
        help="activation range method (default: the pipeline's: percentile for cpu, entropy for Jetson)",
    )
    export.add_argument("--calib-samples", type=int, default=64, metavar="N", help="calibration images (default: 64)")
    export.add_argument("--pipeline", metavar="TOML", help="your own pass pipeline instead of the shipped one")
    export.add_argument("--variant", default=None, help="shipped pipeline variant, e.g. 'qat' (cpu-int8-qat)")
    export.add_argument(
        "--quantizer",
        choices=("anomopt", "modelopt"),
        default="anomopt",
        help="Jetson INT8 quantizer: anomopt's own or NVIDIA ModelOpt (the '-modelopt' pipeline variant)",
    )
    export.add_argument(
        "--dla-core",
        type=int,
        default=None,
        metavar="N",
        help="Jetson: build for DLA core N (GPU fallback on)",
    )
    export.add_argument(
        "--trt-quantization",
        choices=("explicit", "implicit"),
        default="explicit",
        help="Jetson INT8: Q/DQ ONNX (explicit, default) or FP32 ONNX + calib.cache (implicit)",
    )
    export.add_argument(
        "--fp16-fallback",
        action="store_true",
        help="Jetson INT8: let the layers without Q/DQ (teacher, head) run in FP16 too (adds --fp16)",
    )
    export.add_argument(
        "--workspace-mib", type=int, default=1024, metavar="MIB", help="TensorRT workspace (default: 1024)"
    )
    export.add_argument(
        "--threshold-policy",
        default=None,
        metavar="POLICY",
        help="image threshold from the validation normals: z:K (z-score above K; default z:3) or fpr:R "
        "(target false-reject rate R, e.g. fpr:0.01); see docs/decisions.md",
    )
    export.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    export.add_argument("--quiet", action="store_true", help="no progress lines or bars; print only the summary")
    export.set_defaults(func=run_export)


def _calibration_set(args: argparse.Namespace, image_size: int, categories: list[str]) -> Any:
    if args.calib_source == "noise" and not args.calib_data:
        return None
    if not args.calib_data:
        raise ConfigError("--calib-data DIR is required (normal training images), or use --calib-source noise")
    from anomopt.data import load_mvtec

    cats: Any = (
        [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else (categories or "all")
    )
    return load_mvtec(args.calib_data, cats, split="train", image_size=image_size)


def run_export(args: argparse.Namespace) -> int:
    """``anomopt export``: optimize and write the artifact; returns the exit code."""
    from anomopt.targets import get_target

    spec = get_target(args.target)
    spec.check_bits(args.bits)
    if args.calib_samples <= 0:
        raise ConfigError("--calib-samples must be positive")
    inputs = tuple(str(p) for p in (args.checkpoint, args.calib_data, args.pipeline) if p)
    # Checked and locked before the long work: a bad --out fails in a second, not after the whole run.
    with prepare_output_dir(args.out, "artifact", overwrite=args.overwrite, inputs=inputs):
        return _export(args, inputs)


def _export(args: argparse.Namespace, inputs: tuple[str, ...]) -> int:
    from anomopt.api import optimize
    from anomopt.checkpoint import load_checkpoint, require_thresholds
    from anomopt.targets.modelopt_quant import quantizer_variant

    model, payload = load_checkpoint(args.checkpoint)
    require_thresholds(payload, args.checkpoint)
    calib = (
        _calibration_set(args, model.config.image_size, list(payload.get("categories") or []))
        if args.bits == 8
        else None
    )
    options: dict[str, dict[str, Any]] = {}
    if args.calib_method:
        options["calibrate"] = {"method": args.calib_method}
        options["modelopt_quantize"] = {"method": args.calib_method}
    lower_opts: dict[str, Any] = {
        "trt_quantization": args.trt_quantization,
        "fp16_fallback": args.fp16_fallback,
        "workspace_mib": args.workspace_mib,
    }
    if args.dla_core is not None:
        lower_opts["dla_core"] = args.dla_core
    options["lower"] = lower_opts
    variant = quantizer_variant(args.quantizer, args.variant, args.pipeline)
    pipeline, options = flag_pass_options(args.pipeline, args.target, args.bits, variant, options)
    with work_dir("anomopt-export-") as work:
        optimized = optimize(
            args.checkpoint,  # optimize() refuses one without thresholds and re-fits them on the artifact
            target=args.target,
            bits=args.bits,
            calib=calib,
            passes=pipeline,
            calib_source=args.calib_source if calib is not None else "noise",
            calib_samples=args.calib_samples,
            pass_options=options,
            workdir=work,
            seed=args.seed,
            progress=not args.quiet,
            data_root=args.calib_data,
            threshold_policy=args.threshold_policy,
        )
        out = optimized.save(args.out, overwrite=args.overwrite, inputs=inputs)
    if args.quiet:  # otherwise optimize() printed the summary with its progress lines (stderr)
        print(optimized.summary())
    meta = json.loads((Path(out) / "meta.json").read_text())
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB" for k, v in meta["files"].items())
    print(f"wrote {out} ({meta['target']} {meta['precision']}: {sizes})")
    if (Path(out) / "build_engine.sh").is_file():
        print(f"on the Jetson: copy {out} and run {Path(out) / 'build_engine.sh'}")
    return 0
