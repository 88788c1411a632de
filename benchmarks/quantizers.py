"""anomopt's INT8 quantizer vs NVIDIA ModelOpt's, side by side, for the Jetson (xavier_nx) artifact.

For every trained unified checkpoint ``MODELS/<model>-<data>/model.ckpt`` (model: stfpm, rd; data: realdev,
synth) it builds, through :func:`anomopt.api.optimize` with the shipped pipelines:

- ``FP32``: ``xavier_nx-fp32`` (the FP32 ONNX);
- ``anomopt``: ``xavier_nx-int8`` (our symmetric int8 fake quant, entropy calibration, our QDQ export), and
  ``anomopt-max`` (the same with max calibration);
- ``modelopt``: ``xavier_nx-int8-modelopt`` (``mtq.quantize`` INT8_DEFAULT_CFG on the student, ModelOpt's
  default MaxCalibrator), and ``modelopt-entropy`` (its HistogramCalibrator with entropy, 2048 bins);

calibrated on the same normal training images, and measures each QDQ ONNX as ONNX Runtime runs it (the
functional stand-in for the TensorRT engine: same int8 grid): image / pixel AUROC on the test split, drift
of scores and maps against FP32, the number of quantized convs and where the placements differ
(quantized tensors, and the activation scales of the convs both quantize).

    python benchmarks/quantizers.py --models-dir /work/models --data realdev,synth
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import torch
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grid_common as gc  # noqa: E402
from anomopt.api import optimize  # noqa: E402
from anomopt.checkpoint import load_checkpoint  # noqa: E402
from anomopt.data import load_mvtec  # noqa: E402

VARIANTS: dict[str, tuple[int, str | None, dict[str, dict[str, Any]]]] = {
    "FP32": (32, None, {}),
    "anomopt": (8, None, {"calibrate": {"method": "entropy"}}),
    "anomopt-max": (8, None, {"calibrate": {"method": "max"}}),
    "modelopt": (8, "modelopt", {"modelopt_quantize": {"method": "max"}}),
    "modelopt-entropy": (8, "modelopt", {"modelopt_quantize": {"method": "entropy"}}),
}


PAIRS = (("anomopt", "modelopt"), ("anomopt-max", "modelopt"), ("modelopt", "modelopt-entropy"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", default="/work/models", help="holds <model>-<data>/model.ckpt")
    p.add_argument("--models", default="stfpm,rd")
    p.add_argument("--data", default="realdev,synth", help="realdev and/or synth (MODELS/synth)")
    p.add_argument("--realdev", default=str(gc.REALDEV))
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--max-test-per-category", type=int, default=100)
    p.add_argument("--num-bins", type=int, default=2048, help="ModelOpt histogram bins (TensorRT uses 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--work-dir", default=str(gc.SCRATCH / "quantizers"))
    gc.rw.add_args(p)
    p.add_argument("--resume", action="store_true", help="reuse rows in WORK/quantizers.json")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- placement


def qdq_placement(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a QDQ ONNX quantizes: ``convs`` {Conv node: activation scale} for convs whose data input comes
    through a DequantizeLinear, ``other`` {node: op} for non-conv nodes fed by an activation DQ, and
    ``weight_dq`` (weights stored int8 behind a DequantizeLinear)."""
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}

    def scale_of(dq: onnx.NodeProto) -> float | None:
        t = inits.get(dq.input[1])
        if t is None:
            prod = producers.get(dq.input[1])
            if prod is not None and prod.op_type == "Constant":
                return float(numpy_helper.to_array(prod.attribute[0].t).ravel()[0])
            return None
        return float(numpy_helper.to_array(t).ravel()[0])

    convs: dict[str, float | None] = {}
    other: dict[str, str] = {}
    weight_dq = 0
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            weight_dq += 1
        for k, name in enumerate(n.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                continue
            if n.op_type == "Conv" and k == 0:
                convs[n.name] = scale_of(dq)
            elif n.op_type != "Conv":
                other[n.name] = n.op_type
    return {"convs": convs, "other": other, "weight_dq": weight_dq}


def placement_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Convs / other nodes quantized by only one of two placements, and the activation-scale ratio
    (b / a) over the convs both quantize."""
    ca, cb = a["convs"], b["convs"]
    both = sorted(set(ca) & set(cb))
    ratios = [cb[n] / ca[n] for n in both if ca[n] and cb[n]]
    return {
        "only_a": sorted(set(ca) - set(cb)) + sorted(set(a["other"]) - set(b["other"])),
        "only_b": sorted(set(cb) - set(ca)) + sorted(set(b["other"]) - set(a["other"])),
        "shared_convs": len(both),
        "scale_ratio_median": float(np.median(ratios)) if ratios else float("nan"),
        "scale_ratio_min": float(np.min(ratios)) if ratios else float("nan"),
        "scale_ratio_max": float(np.max(ratios)) if ratios else float("nan"),
    }


# ----------------------------------------------------------------------------------------- measuring


def build(ckpt: Path, variant: str, calib: torch.Tensor, work: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """Optimize ``ckpt`` for xavier_nx with the variant's pipeline; returns the lowered ONNX and seconds."""
    bits, pipeline_variant, options = VARIANTS[variant]
    options = {k: dict(v) for k, v in options.items()}
    if "modelopt_quantize" in options:
        options["modelopt_quantize"]["num_bins"] = args.num_bins
    model, _ = load_checkpoint(ckpt)
    t0 = time.perf_counter()
    om = optimize(model, "xavier_nx", bits, calib=calib if bits == 8 else None, variant=pipeline_variant,
                  tolerance=gc.NO_DRIFT_LIMIT, calib_samples=args.calib_images, pass_options=options,
                  workdir=work, seed=args.seed, progress=False)
    return Path(om.graph.state.artifact["model"]), time.perf_counter() - t0


def mean_of(per_cat: dict[str, dict[str, float]], key: str) -> float:
    return float(np.mean([v[key] for v in per_cat.values()]))


def measure_pair(model_name: str, data: str, args: argparse.Namespace, store: dict[str, Any]) -> dict[str, Any]:
    """All variants of one checkpoint (cached by model/data/variant in ``store``)."""
    ckpt = Path(args.models_dir) / f"{model_name}-{data}" / "model.ckpt"
    root = Path(args.realdev) if data == "realdev" else Path(args.models_dir) / "synth"
    if not ckpt.is_file() or not root.is_dir():
        print(f"skip {model_name}-{data}: {ckpt if not ckpt.is_file() else root} missing", flush=True)
        return {}
    model, payload = load_checkpoint(ckpt)
    size = int(model.config.image_size)
    cats = list(payload.get("categories") or []) or "all"
    train = load_mvtec(root, cats, split="train", image_size=size, seed=args.seed)
    test = gc.per_category_subset(load_mvtec(root, cats, split="test", image_size=size), args.max_test_per_category,
                                  args.seed)
    calib = gc.calibration_pool(train, argparse.Namespace(seed=args.seed))
    rows: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        key = f"{model_name}|{data}|{variant}|{args.calib_images}|{args.num_bins}|{args.max_test_per_category}"
        work = Path(args.work_dir) / f"{model_name}-{data}-{variant}"
        cached = store.get(key) if args.resume else None
        if cached and Path(cached["artifact"]).is_file():
            rows[variant], paths[variant] = cached, Path(cached["artifact"])
            continue
        print(f"{model_name}-{data} {variant}: optimize ...", flush=True)
        path, seconds = build(ckpt, variant, calib, work, args)
        t0 = time.perf_counter()
        per_cat = gc.evaluate_artifact(path, test, args.ort_threads)
        row = {
            "artifact": str(path),
            "optimize_seconds": seconds,
            "eval_seconds": time.perf_counter() - t0,
            "image_auroc": mean_of(per_cat, "image_auroc"),
            "pixel_auroc": mean_of(per_cat, "pixel_auroc"),
            "per_category": per_cat,
            "test_images": len(test),
            "date": gc.utc_now(),
        }
        if variant != "FP32":
            row["placement"] = qdq_placement(path)
        rows[variant], paths[variant] = row, path
        store[key] = row
        gc.write_json(Path(args.work_dir) / "quantizers.json", store)
        print(f"  image AUROC {row['image_auroc']:.4f} pixel AUROC {row['pixel_auroc']:.4f} ({seconds:.0f} s)",
              flush=True)
    if "FP32" in paths:
        for variant, path in paths.items():
            if variant != "FP32":
                rows[variant]["drift"] = gc.output_drift(path, paths["FP32"], test, args.ort_threads)
                # label-free: the same drift on normal training images (what a user can measure to choose)
                rows[variant]["train_drift"] = gc.output_drift(path, paths["FP32"], train, args.ort_threads)
    return rows


# ------------------------------------------------------------------------------------------ reporting


def _pair(test: dict[str, float], train: dict[str, float], key: str) -> str:
    if not test:
        return ""
    return f"{gc.fmt(test.get(key, float('nan')), 4)} / {gc.fmt(train.get(key, float('nan')), 4)}"


def tables(results: dict[tuple[str, str], dict[str, Any]]) -> str:
    """The comparison table and the placement table (markdown)."""
    head = ["model", "data", "quantizer", "image AUROC", "pixel AUROC", "d image (pts)", "d pixel (pts)",
            "score drift test / train", "map drift test / train", "quantized convs", "optimize s"]
    body = []
    diffs = []
    for (model, data), rows in results.items():
        ref = rows.get("FP32")
        for variant, r in rows.items():
            di = 100 * (r["image_auroc"] - ref["image_auroc"]) if ref else float("nan")
            dp = 100 * (r["pixel_auroc"] - ref["pixel_auroc"]) if ref else float("nan")
            drift = r.get("drift", {})
            convs = len(r["placement"]["convs"]) if "placement" in r else 0
            body.append([model, data, variant, gc.fmt(r["image_auroc"]), gc.fmt(r["pixel_auroc"]),
                         gc.fmt(di, 2) if variant != "FP32" else "", gc.fmt(dp, 2) if variant != "FP32" else "",
                         _pair(drift, r.get("train_drift", {}), "score"), _pair(drift, r.get("train_drift", {}), "map"),
                         str(convs) if variant != "FP32" else "", f"{r['optimize_seconds']:.0f}"])
        for a, b in PAIRS:
            if a not in rows or b not in rows:
                continue
            d = placement_diff(rows[a]["placement"], rows[b]["placement"])
            diffs.append([model, data, f"{a} / {b}", str(d["shared_convs"]), ", ".join(d["only_a"]) or "none",
                          ", ".join(d["only_b"]) or "none",
                          f"{gc.fmt(d['scale_ratio_median'], 2)} ({gc.fmt(d['scale_ratio_min'], 2)}-"
                          f"{gc.fmt(d['scale_ratio_max'], 2)})"])
    out = gc.md_table(head, body)
    if diffs:
        out += "\n\n" + gc.md_table(
            ["model", "data", "A / B", "convs both quantize", "only A", "only B",
             "B / A activation scale, median (min-max)"], diffs)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.torch_threads))
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    store = gc.read_json(Path(args.work_dir) / "quantizers.json", {})
    threads = f"torch {args.torch_threads}, ONNX Runtime {args.ort_threads}"
    run, t0 = gc.rw.RunInfo.start(__file__, threads, argv), time.perf_counter()
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for data in [d.strip() for d in args.data.split(",") if d.strip()]:
            rows = measure_pair(model_name, data, args, store)
            if rows:
                results[(model_name, data)] = rows
    if not results:
        print("nothing measured (no checkpoints found)")
        return 1
    dates = sorted(r["date"] for rows in results.values() for r in rows.values())
    body = "\n".join([
        f"- wall time: {(time.perf_counter() - t0) / 60:.1f} min; rows measured {dates[0]} to {dates[-1]} "
        "(--resume reuses rows of earlier runs of the same settings; 'optimize s' is each row's own build time)",
        f"- checkpoints: {args.models_dir}/<model>-<data>/model.ckpt (unified, 128 px); calibration: "
        f"{args.calib_images} normal training images; test: at most {args.max_test_per_category} images per "
        f"category; ModelOpt histogram {args.num_bins} bins",
        "- metrics: mean over categories, from each xavier_nx artifact's ONNX as ONNX Runtime (CPU) runs it: a "
        "functional stand-in for the TensorRT engine (same int8 grid), NOT a TensorRT build; drift = relative L2 "
        "of scores / maps vs the FP32 artifact on 16 test images and on 16 normal training images (no labels)",
        "",
        tables(results),
    ])
    gc.rw.publish(args, "quantizers", "Jetson INT8 quantizers: anomopt vs NVIDIA ModelOpt", "benchmarks/quantizers.py",
                  body, run, part=[f"{m}-{d}" for m, d in results])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
