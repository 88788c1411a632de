"""``anomopt bench``: latency, throughput and memory of an artifact folder or a checkpoint, against its FP32
baseline, with the machine's load and what ran in integer kernels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from anomopt.errors import ConfigError
from anomopt.outputs import work_dir

__all__ = ["register", "run_bench"]


def register(subparsers: Any) -> None:
    """Add the ``bench`` command."""
    bench = subparsers.add_parser(
        "bench",
        help="measure latency, throughput and memory of an artifact folder or a checkpoint against FP32",
        description=(
            "Benchmark ARTIFACT_OR_CHECKPOINT on this CPU against its FP32 baseline. An INT8 artifact folder is "
            "timed in ONNX Runtime next to its FP32 twin (the same ONNX with Q/DQ folded away); a checkpoint is "
            "timed as FP32 torch eager, FP32 ONNX Runtime and INT8 ONNX Runtime, both from one lowering "
            "(calibrated on --data, or on random-normal noise when absent, which times the same kernels). "
            "Batch-1 latency p50/p90/p99 after warm-up, the speed-up over FP32 ONNX Runtime, batch-N throughput, "
            "peak RSS per backend (each in its own process), the convs that run in integer kernels per role, "
            "and the machine's load."
        ),
    )
    bench.add_argument(
        "target", metavar="ARTIFACT_OR_CHECKPOINT", help="artifact folder (meta.json) or checkpoint file"
    )
    bench.add_argument("--threads", type=int, default=2, help="intra-op threads (default: 2)")
    bench.add_argument("--iters", type=int, default=50, help="timed batch-1 runs (default: 50)")
    bench.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs (default: 10)")
    bench.add_argument("--batch", type=int, default=8, help="throughput batch size (default: 8)")
    bench.add_argument("--data", metavar="DIR", help="checkpoint mode: calibration data set root")
    bench.add_argument("--calib-data", dest="data", help=argparse.SUPPRESS)  # the old spelling
    bench.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    bench.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """``anomopt bench``: print the table, the load warning and the INT8 notes; returns the exit code."""
    from anomopt.bench import cpu_info, machine_load

    if args.threads <= 0 or args.iters <= 0 or args.batch <= 0 or args.warmup < 0:
        raise ConfigError("--threads, --iters and --batch must be positive and --warmup not negative")
    path = Path(args.target)
    common = {"threads": args.threads, "iters": args.iters, "warmup": args.warmup, "batch": args.batch}
    load = machine_load(args.threads)  # before our own processes add to it
    with work_dir("anomopt-bench-") as work:
        if path.is_dir():
            rows, size = _bench_artifact(path, common, Path(work))
        elif path.is_file():
            rows, size = _bench_checkpoint(path, args, common, Path(work))
        else:
            raise ConfigError(f"{path}: neither an artifact folder nor a checkpoint file")
    result = summarize(rows, load, size, args.threads, args.batch, cpu_info())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_result(result))
    return 0


def summarize(
    rows: list[dict[str, Any]], load: dict[str, Any], image_size: int, threads: int, batch: int, cpu: dict[str, Any]
) -> dict[str, Any]:
    """Add the speed-up over the baseline row to every row; collect the warnings and INT8 notes."""
    from anomopt.bench import slow_int8_reasons

    base = next((r for r in rows if r.get("baseline")), None)
    notes: list[str] = []
    for r in rows:
        r["speedup"] = base["p50_ms"] / r["p50_ms"] if base and r.get("p50_ms") else None
        if r.get("precision") == "int8" and r["speedup"] is not None and r["speedup"] < 1.0:
            notes.append(f"{r['name']} is slower than FP32 ({r['speedup']:.2f}x); it may be because:")
            notes += [f"  - {why}" for why in slow_int8_reasons(r.get("profile"), load)]
        elif r.get("profile"):
            share = r["profile"]["integer_mac_share"]
            notes.append(f"{r['name']}: {100 * share:.0f}% of the conv multiply-adds run in integer kernels")
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        ort_version = None
    return {
        "machine": {**cpu, "threads": threads, "image_size": image_size, "batch": batch, "onnxruntime": ort_version},
        "load": load,
        "rows": rows,
        "notes": notes,
    }


def format_result(result: dict[str, Any]) -> str:
    """The human-readable bench output."""
    from anomopt.bench import kernels_text, markdown_table

    m, load = result["machine"], result["load"]
    lines = [
        f"CPU: {m['model']} ({m['logical_cores']} logical cores), {m['threads']} threads, "
        f"{m['image_size']}x{m['image_size']} px, onnxruntime {m['onnxruntime']}, "
        f"1-min load average {load.get('load1')} before the run"
    ]
    if load.get("warning"):
        lines.append(load["warning"])
    rows = [
        {**r, "kernels": kernels_text(r.get("profile")), "name": r["name"] + (" (baseline)" * bool(r.get("baseline")))}
        for r in result["rows"]
    ]
    lines.append(
        markdown_table(
            rows,
            [
                ("backend", "name", ""),
                ("p50 ms", "p50_ms", "{:.2f}"),
                ("p90 ms", "p90_ms", "{:.2f}"),
                ("p99 ms", "p99_ms", "{:.2f}"),
                ("speed-up", "speedup", "{:.2f}x"),
                (f"batch-{m['batch']} img/s", "throughput_ips", "{:.1f}"),
                ("peak RSS MiB", "peak_rss_mb", "{:.0f}"),
                ("integer convs / all (per role)", "kernels", ""),
            ],
        )
    )
    lines.append("speed-up: p50 of the FP32 ONNX Runtime baseline / p50 of the row (higher is faster)")
    lines += result["notes"]
    return "\n".join(lines)


def _ort_row(name: str, onnx_path: Path, size: int, common: dict[str, Any], precision: str, **extra: Any) -> dict:
    from anomopt.bench import quantization_profile, run_isolated

    row = run_isolated({"backend": "ort", "path": str(onnx_path), "image_size": size, **common})
    profile = quantization_profile(onnx_path) if precision == "int8" else None
    return {"name": name, "precision": precision, **row, "profile": profile, **extra}


def _bench_artifact(path: Path, common: dict[str, Any], work: Path) -> tuple[list[dict[str, Any]], int]:
    from anomopt.bench import strip_qdq
    from anomopt.runtime import read_meta

    meta = read_meta(path)
    size = int(meta["image_size"])
    precision = str(meta["precision"]).lower()
    model = path / "model.onnx"
    label = f"{meta['model']} {precision.upper()} ORT ({meta['target']} artifact)"
    if precision != "int8":
        return [_ort_row(label, model, size, common, "fp32", baseline=True)], size
    fp32 = strip_qdq(model, work / "fp32.onnx")
    rows = [
        _ort_row(f"{meta['model']} FP32 ORT (the artifact, Q/DQ folded away)", fp32, size, common, "fp32",
                 baseline=True),
        _ort_row(label, model, size, common, "int8"),
    ]
    return rows, size


def _bench_checkpoint(
    path: Path, args: argparse.Namespace, common: dict[str, Any], work: Path
) -> tuple[list[dict[str, Any]], int]:
    from anomopt.api import optimize
    from anomopt.bench import run_isolated
    from anomopt.checkpoint import load_checkpoint

    model, payload = load_checkpoint(path)
    size = int(model.config.image_size)
    rows = [
        {
            "name": "FP32 torch eager",
            "precision": "fp32",
            **run_isolated({"backend": "torch", "path": str(path), "image_size": size, **common}),
        }
    ]
    calib = None
    source = "noise"
    if args.data:
        from anomopt.data import load_mvtec

        calib = load_mvtec(args.data, list(payload.get("categories") or []) or "all", "train", image_size=size)
        source = "train"
    # one lowering: the INT8 one keeps the FP32 ONNX it quantizes (the graph the cpu-fp32 pipeline would lower)
    om = optimize(model, "cpu", 8, calib=calib, calib_source=source, workdir=work / "int8", progress=False,
                  pass_options={"lower": {"keep_fp32_onnx": True}})
    record = om.graph.state.artifact
    rows.append(_ort_row("FP32 ONNX Runtime", Path(record["fp32_model"]), size, common, "fp32", baseline=True))
    rows.append(_ort_row(f"INT8 ONNX Runtime ({source} calibration)", Path(record["model"]), size, common, "int8"))
    return rows, size
