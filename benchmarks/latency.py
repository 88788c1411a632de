"""CPU latency benchmark: FP32 torch eager vs FP32 ONNX Runtime vs INT8 ONNX Runtime for STFPM, RD and US.

Unified models on the offline EfficientNet-Lite0 teacher at 256 x 256. Weights: trained checkpoints from
``--checkpoint-dir`` (``stfpm.pt``, ``rd.pt``, ``us.pt``) when given, otherwise untrained students with the
pretrained teacher (latency, memory and size do not depend on the weights' values; the output says which).
INT8 = the shipped ``cpu-int8`` pipeline (student scope, per-channel weights, percentile calibration),
calibrated on normal training images of ``--calib-data`` (default: the realdev metal_plate set when
present) or on random-normal noise. An extra row quantizes the teacher as well (``scope=all``).

Every backend is timed in its own process (so peak RSS is its own), in interleaved rounds (so a load
change on a shared machine hits every backend alike), batch 1 after warm-up at ``--threads`` threads
(``torch.set_num_threads`` / ``intra_op_num_threads``), plus batch-8 throughput. Prints a markdown table
that replaces the part of the latency section of ``benchmarks/RESULTS.md`` for these models
(``results_writer.py``: command, date, machine, threads, load).

    PYTHONPATH=src .venv/bin/python benchmarks/latency.py [--models stfpm,rd,us] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_writer as rw  # noqa: E402
from anomopt.api import optimize  # noqa: E402
from anomopt.bench import (  # noqa: E402
    markdown_table,
    merge_rounds,
    onnx_conv_macs,
    onnx_parameters,
    onnx_weight_bytes,
    run_isolated,
)
from anomopt.calibration_data import noise_images  # noqa: E402
from anomopt.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from anomopt.cost.measure import mac_rate  # noqa: E402
from anomopt.inference import onnx_scorer, predict_dataset, torch_scorer  # noqa: E402
from anomopt.metrics import evaluate_predictions  # noqa: E402
from anomopt.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REALDEV = REPO.parent / "shared" / "data" / "realdev"


def _calibration(args: argparse.Namespace, size: int) -> tuple[torch.Tensor, str]:
    """``--calib-samples`` normal training images of ``--calib-category`` ('all': every category, a seeded
    random draw), or noise when the folder is missing."""
    root = Path(args.calib_data) if args.calib_data else REALDEV
    every = args.calib_category == "all"
    if (root / args.calib_category / "train").is_dir() or (every and root.is_dir()):
        from anomopt.data import load_mvtec

        data = load_mvtec(root, "all" if every else [args.calib_category], split="train", image_size=size)
        n = min(len(data), args.calib_samples)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist() if every else range(n)
        images = torch.stack([data[i]["image"] for i in list(order)[:n]])
        return images, f"{n} normal training images of {root.name}/{args.calib_category} (seeded draw)" if every \
            else f"{n} normal training images of {root.name}/{args.calib_category}"
    return noise_images(args.calib_samples, size, "efficientnet_lite0", seed=0), (
        f"{args.calib_samples} random-normal noise images (no calibration data found)"
    )


def _eval_set(args: argparse.Namespace, size: int) -> Any:
    """The test split of ``--eval-data`` (all its categories), at most ``--eval-per-category`` per category."""
    from anomopt.data import load_mvtec

    test = load_mvtec(args.eval_data, "all", split="test", image_size=size)
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0)).tolist()  # good and defective
    taken: dict[str, int] = {}
    keep = []
    for i in order:
        category = test.samples[i].category
        if taken.get(category, 0) < args.eval_per_category:
            taken[category] = taken.get(category, 0) + 1
            keep.append(i)
    return torch.utils.data.Subset(test, sorted(keep))


def _model(name: str, args: argparse.Namespace) -> tuple[Any, str]:
    if args.checkpoint_dir:
        path = Path(args.checkpoint_dir) / f"{name}.pt"
        if path.is_file():
            model, _ = load_checkpoint(path)
            return model, f"trained checkpoint {path.name}"
    torch.manual_seed(0)
    model = build_model(name, image_size=args.image_size)
    return model, "untrained student(s) + pretrained EfficientNet-Lite0 teacher"


floors: dict[str, dict[str, float]] = {}
fast_notes: dict[str, dict[str, Any]] = {}


def _fast_summary(notes: dict[str, Any]) -> str:
    if not notes:
        return "no pass notes"
    est = notes.get("estimate_us", {})
    layers = notes.get("layers", [])
    fp = [r for r in layers if r["choice"] == "fp32"]
    return (f"{len(layers) - len(fp)} of {len(layers)} convs INT8, {len(fp)} FP32 for latency "
            f"({', '.join(sorted({r['shape'] for r in fp})) or 'none'}), "
            f"{len(notes.get('fp32_for_accuracy') or [])} FP32 for accuracy; cost-model estimate of the convs + "
            f"conversions {est.get('chosen', 0) / 1000:.2f} ms vs all-INT8 {est.get('all_int8', 0) / 1000:.2f} ms "
            f"vs all-FP32 {est.get('all_fp32', 0) / 1000:.2f} ms.")


def bench_model(name: str, args: argparse.Namespace, calib: torch.Tensor, work: Path) -> tuple[list[dict], str]:
    """Lower ``name`` three (four) ways and time every variant; returns table rows and the weights note."""
    model, weights = _model(name, args)
    size = model.config.image_size
    ckpt = work / f"{name}.pt"
    save_checkpoint(ckpt, model, categories=[])
    variants: dict[str, dict[str, Any]] = {"FP32 torch eager": {"backend": "torch", "path": str(ckpt)}}
    onnx_files: dict[str, Path] = {}
    plans: list[tuple[str, int, dict[str, Any] | None, str | None]] = [
        ("FP32 ORT", 32, None, None),
        ("INT8 ORT", 8, None, None),
    ]
    if not args.no_scope_all:
        plans.append(("INT8 ORT, teacher too", 8, {"insert_fake_quant": {"scope": "all"}}, None))
    if not args.no_fast:
        plans.append(("INT8 ORT, latency-aware (cpu-int8-fast)", 8, None, "fast"))
    if not args.no_prune:
        plans.append(("INT8 ORT, pruned 0.5 + teacher (cpu-int8-prune)", 8, None, "prune"))
    for label, bits, options, variant in plans:
        om = optimize(
            model,
            "cpu",
            bits,
            calib=calib,
            calib_samples=len(calib),
            pass_options=options,
            variant=variant,
            workdir=work / f"{name}-{bits}-{len(onnx_files)}",
            progress=False,
        )
        onnx_files[label] = Path(om.graph.state.artifact["model"])
        variants[label] = {"backend": "ort", "path": str(onnx_files[label])}
        if variant == "fast":
            fast_notes[name] = next(
                (r.notes for r in om.passes_report.records if r.name == "latency_aware_precision"), {}
            )
        if bits == 8:
            kernels = om.graph.state.artifact["notes"]["integer_kernels"]["by_role"]
            variants[label]["kernels"] = kernels
    common = {
        "image_size": size,
        "threads": args.threads,
        "warmup": args.warmup,
        "iters": args.iters,
        "batch": 8,
        "batch_iters": args.batch_iters,
        "spin": args.spin,
        "max_seconds": args.max_seconds,
    }
    if args.eval_data:
        test = _eval_set(args, size)
        for spec in variants.values():
            scorer = torch_scorer(model) if spec["backend"] == "torch" else onnx_scorer(spec["path"])
            preds = predict_dataset(scorer, test, batch_size=8)
            mean = evaluate_predictions(preds.categories, preds.labels, preds.scores, preds.masks, preds.maps)["mean"]
            spec["auroc"] = f"{mean['image_auroc']:.3f} / {mean['pixel_auroc']:.3f}"
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    rates: list[float] = []
    for _ in range(args.rounds):
        rates.append(mac_rate("int8", threads=args.threads))  # the int8 MAC roofline, in the same rounds
        for label, spec in variants.items():
            runs[label].append(run_isolated({"backend": spec["backend"], "path": spec["path"], **common}))
    macs = onnx_conv_macs(onnx_files["FP32 ORT"])
    floor_ms = macs["total"] / (max(rates) * 1e9) * 1000.0
    floors[name] = {"gmacs_per_s": max(rates), "floor_ms": floor_ms, "gmacs": macs["total"] / 1e9}
    params = onnx_parameters(onnx_files["FP32 ORT"])
    fp32_bytes = onnx_weight_bytes(onnx_files["FP32 ORT"])
    rows = []
    for label in variants:
        row = merge_rounds(runs[label])
        sizes = onnx_weight_bytes(onnx_files[label]) if label in onnx_files else None
        row.update(
            model=name.upper() if name != "stfpm" else "STFPM",
            variant=label,
            file_mb=sizes["file"] / 1e6 if sizes else None,
            student_mb=sizes["student"] / 1e6 if sizes else None,
            student_ratio=sizes["student"] / fp32_bytes["student"] if sizes else None,
            params_m=params["total"] / 1e6,
            student_params_m=params["student"] / 1e6,
            gmacs=macs["total"] / 1e9,
            student_gmacs=macs["student"] / 1e9,
        )
        row["auroc"] = variants[label].get("auroc", "")
        kernels = variants[label].get("kernels")
        if kernels:
            s = kernels.get("student", {"integer": 0, "float": 0})
            t = kernels.get("teacher", {"integer": 0, "float": 0})
            row["int_convs"] = (
                f"S {s['integer']}/{s['integer'] + s['float']}, T {t['integer']}/{t['integer'] + t['float']}"
            )
        rows.append(row)
    fp32 = next(r for r in rows if r["variant"] == "FP32 ORT")
    for r in rows:
        r["speedup"] = fp32["p50_ms"] / r["p50_ms"]
        r["vs_floor"] = r["p50_ms"] / floor_ms
    return rows, weights


COLUMNS = [
    ("model", "model", ""),
    ("variant", "variant", ""),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p90 ms", "p90_ms", "{:.1f}"),
    ("p99 ms", "p99_ms", "{:.1f}"),
    ("vs FP32 ORT (p50)", "speedup", "{:.2f}x"),
    ("p50 / int8 MAC floor", "vs_floor", "{:.2f}x"),
    ("image / pixel AUROC", "auroc", ""),
    ("batch-8 img/s", "throughput_ips", "{:.1f}"),
    ("peak RSS MiB", "peak_rss_mb", "{:.0f}"),
    ("model.onnx MB", "file_mb", "{:.2f}"),
    ("student weights MB", "student_mb", "{:.2f}"),
    ("student vs FP32", "student_ratio", "{:.2%}"),
    ("integer convs", "int_convs", ""),
    ("params M (student)", "params_label", ""),
    ("GMACs (student)", "macs_label", ""),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="stfpm,rd,us", help="comma-separated subset of stfpm,rd,us")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=40, help="timed batch-1 runs per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-iters", type=int, default=5, help="timed batch-8 runs per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the backends")
    parser.add_argument(
        "--spin",
        action="store_true",
        help="let idle threads busy-wait (OpenMP / ORT defaults); off by default: on a shared, "
        "oversubscribed box spinning threads slow each other down (2-thread torch was 8x slower so)",
    )
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap per timing loop (min 10 runs)")
    parser.add_argument("--checkpoint-dir", default=None, help="folder with stfpm.pt / rd.pt / us.pt")
    parser.add_argument("--calib-data", default=None, help="MVTec-layout root (default: ../shared/data/realdev)")
    parser.add_argument("--calib-category", default="metal_plate",
                        help="a category of --calib-data, or 'all' (a seeded draw over every category)")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--eval-data", default=None,
                        help="MVTec-layout root: also give each variant's image / pixel AUROC on its test split "
                        "(meaningful with --checkpoint-dir models trained on it)")
    parser.add_argument("--eval-per-category", type=int, default=100)
    parser.add_argument("--no-scope-all", action="store_true", help="skip the teacher-quantized INT8 row")
    parser.add_argument("--no-prune", action="store_true", help="skip the cpu-int8-prune row (prunes and "
                        "fine-tunes the student on the calibration images first)")
    parser.add_argument("--no-fast", action="store_true", help="skip the cpu-int8-fast row (latency-aware "
                        "precision from the CPU cost model, teacher and student)")
    rw.add_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the optimizing here; timing threads are set in each worker
    run = rw.RunInfo.start(__file__, f"{args.threads} (torch.set_num_threads / ORT intra_op_num_threads)", argv)
    calib, calib_note = _calibration(args, args.image_size)
    rows: list[dict[str, Any]] = []
    weights_notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="anomopt-latency-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            model_rows, weights_notes[name] = bench_model(name, args, calib, Path(tmp))
            rows += model_rows
            print(f"{name}: done", file=sys.stderr)
    for r in rows:
        r["params_label"] = f"{r['params_m']:.2f} ({r['student_params_m']:.2f})"
        r["macs_label"] = f"{r['gmacs']:.2f} ({r['student_gmacs']:.2f})"
    table = markdown_table(rows, COLUMNS)
    ratios = "; ".join(
        f"{r['model']} {r['variant'].removeprefix('INT8 ORT').strip(', ') or 'student'} {r['speedup']:.2f}x"
        for r in rows
        if r["variant"].startswith("INT8")
    )
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    lines = [
        f"- {args.image_size}x{args.image_size}, batch 1 latency after {args.warmup} warm-up runs, "
        f"{args.rounds} interleaved rounds x {args.iters} runs per backend, each backend in its own process; "
        f"{args.threads} threads (torch.set_num_threads / ORT intra_op_num_threads); throughput at batch 8. "
        + (
            "Thread pools spin (library defaults)."
            if args.spin
            else "Thread pools do not busy-wait (OMP_WAIT_POLICY=PASSIVE, ORT allow_spinning=0): on this "
            "shared box spinning 2-thread pools slowed torch eager about 8x."
        ),
        "- Weights: " + "; ".join(f"{k}: {v}" for k, v in weights_notes.items()) + ".",
        f"- INT8 calibration: {calib_note}; shipped cpu-int8 pipeline (student scope, per-channel int8 "
        "weights, uint8 activations, percentile 99.99). 'teacher too' = the same with scope=all. 'pruned' = the "
        "shipped cpu-int8-prune pipeline (50% of the student's prunable channels, 2 fine-tune epochs on the "
        "calibration images, then teacher and student INT8).",
        "- Sizes: model.onnx = the whole artifact; student weights = bytes of the student's stored tensors "
        "(int8 weights + per-channel scales + int32 biases vs FP32). Params and conv MACs (batch 1) count "
        "the layers that reach the outputs, from the FP32 ONNX graph; torch eager also runs the backbone "
        "stages after the last tap (timm's features_only forward), which the ONNX export drops.",
        f"- INT8 / FP32 ONNX Runtime speed-up at batch 1, {args.threads} threads (p50): {ratios}.",
        "- int8 MAC floor (measured in the same rounds: a 1x1 conv 256->256 at 64x64, QDQ U8S8, best round): "
        + "; ".join(f"{k} {v['gmacs']:.2f} GMAC at {v['gmacs_per_s']:.0f} GMAC/s = {v['floor_ms']:.2f} ms"
                    for k, v in floors.items()) + ". 'p50 / int8 MAC floor' = a row's p50 over that floor.",
        *(f"- cpu-int8-fast on {k}: {_fast_summary(v)}" for k, v in fast_notes.items()),
        "",
        table,
        "",
    ]
    rw.publish(args, "latency", "Latency, CPU", "benchmarks/latency.py", "\n".join(lines), run, part=models,
               part_title=", ".join(m.upper() for m in models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
