"""``anomopt export`` (optimize a checkpoint for a target and write the artifact folder) and
``anomopt bench`` (latency / throughput / memory of an artifact folder or a checkpoint)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from anomopt.errors import ConfigError
from anomopt.outputs import prepare_output_dir, work_dir

__all__ = ["register", "run_bench", "run_export"]

PRECISION_BITS = {"8": 8, "16": 16, "32": 32, "int8": 8, "fp16": 16, "fp32": 32}


def _bits(text: str) -> int:
    try:
        return PRECISION_BITS[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError("bits must be 8, 16 or 32 (or int8, fp16, fp32)") from None


def register(subparsers: Any) -> None:
    """Add the ``export`` and ``bench`` commands."""
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
    export.add_argument("--quiet", action="store_true", help="no progress bars")
    export.set_defaults(func=run_export)

    bench = subparsers.add_parser(
        "bench",
        help="measure latency, throughput and memory of an artifact folder or a checkpoint",
        description=(
            "Benchmark ARTIFACT_OR_CHECKPOINT on this CPU. An artifact folder is timed in ONNX Runtime; a "
            "checkpoint is timed as FP32 torch eager, FP32 ONNX Runtime and INT8 ONNX Runtime (calibrated on "
            "--calib-data, or on random-normal noise when absent, which times the same kernels). Batch-1 "
            "latency p50/p90/p99 after warm-up, batch-8 throughput, peak RSS per backend "
            "(each in its own process)."
        ),
    )
    bench.add_argument(
        "target", metavar="ARTIFACT_OR_CHECKPOINT", help="artifact folder (meta.json) or checkpoint file"
    )
    bench.add_argument("--threads", type=int, default=2, help="intra-op threads (default: 2)")
    bench.add_argument("--iters", type=int, default=50, help="timed batch-1 runs (default: 50)")
    bench.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs (default: 10)")
    bench.add_argument("--batch", type=int, default=8, help="throughput batch size (default: 8)")
    bench.add_argument("--calib-data", metavar="DIR", help="checkpoint mode: calibration data set root")
    bench.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    bench.set_defaults(func=run_bench)


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
    with work_dir("anomopt-export-") as work:
        optimized = optimize(
            args.checkpoint,  # optimize() refuses one without thresholds and re-fits them on the artifact
            target=args.target,
            bits=args.bits,
            calib=calib,
            passes=args.pipeline,
            variant=quantizer_variant(args.quantizer, args.variant, args.pipeline),
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
    print(optimized.passes_report.table())
    meta = json.loads((Path(out) / "meta.json").read_text())
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB" for k, v in meta["files"].items())
    print(f"wrote {out} ({meta['target']} {meta['precision']}: {sizes})")
    if (Path(out) / "build_engine.sh").is_file():
        print(f"on the Jetson: copy {out} and run {Path(out) / 'build_engine.sh'}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """``anomopt bench``: print a latency table; returns the exit code."""
    from anomopt.bench import cpu_info, markdown_table, run_isolated

    path = Path(args.target)
    common = {"threads": args.threads, "iters": args.iters, "warmup": args.warmup, "batch": args.batch}
    rows: list[dict[str, Any]] = []
    if path.is_dir():
        from anomopt.runtime import read_meta

        meta = read_meta(path)
        size = int(meta["image_size"])
        row = run_isolated({"backend": "ort", "path": str(path / "model.onnx"), "image_size": size, **common})
        rows.append({"name": f"{meta['model']} {meta['precision'].upper()} ORT ({meta['target']} artifact)", **row})
    elif path.is_file():
        rows = _bench_checkpoint(path, args, common)
    else:
        raise ConfigError(f"{path}: neither an artifact folder nor a checkpoint file")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    info = cpu_info()
    print(
        f"CPU: {info['model']} ({info['logical_cores']} logical cores), {args.threads} threads, "
        f"load average {info['loadavg']}"
    )
    print(
        markdown_table(
            rows,
            [
                ("backend", "name", ""),
                ("p50 ms", "p50_ms", "{:.2f}"),
                ("p90 ms", "p90_ms", "{:.2f}"),
                ("p99 ms", "p99_ms", "{:.2f}"),
                (f"batch-{args.batch} img/s", "throughput_ips", "{:.1f}"),
                ("peak RSS MiB", "peak_rss_mb", "{:.0f}"),
            ],
        )
    )
    return 0


def _bench_checkpoint(path: Path, args: argparse.Namespace, common: dict[str, Any]) -> list[dict[str, Any]]:
    from anomopt.api import optimize
    from anomopt.bench import run_isolated
    from anomopt.checkpoint import load_checkpoint

    model, payload = load_checkpoint(path)
    size = int(model.config.image_size)
    rows = [
        {
            "name": "FP32 torch eager",
            **run_isolated({"backend": "torch", "path": str(path), "image_size": size, **common}),
        }
    ]
    with tempfile.TemporaryDirectory(prefix="anomopt-bench-") as work:
        for bits in (32, 8):
            calib = None
            source = "noise"
            if bits == 8 and args.calib_data:
                from anomopt.data import load_mvtec

                calib = load_mvtec(
                    args.calib_data, list(payload.get("categories") or []) or "all", "train", image_size=size
                )
                source = "train"
            om = optimize(
                model,
                "cpu",
                bits,
                calib=calib,
                calib_source=source,
                workdir=Path(work) / str(bits),
                progress=False,
            )
            onnx_path = om.graph.meta["artifact"]["model"]
            row = run_isolated({"backend": "ort", "path": onnx_path, "image_size": size, **common})
            rows.append({"name": f"{'INT8' if bits == 8 else 'FP32'} ONNX Runtime", **row})
    return rows
