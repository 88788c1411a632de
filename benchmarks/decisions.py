"""Decisions at the shipped threshold: does every pipeline's artifact decide like the FP32 artifact?

For each given checkpoint (and the data set it was trained on) this runs the pipelines (cpu-fp32 as the
reference, cpu-int8, cpu-int8-qat, cpu-int8-prune, xavier_nx-int8 by default) through
:func:`anomopt.optimize` -- which re-fits the per-category thresholds on each lowered artifact over the
checkpoint's validation normals -- saves each artifact, evaluates it on the test split through the
torch-free runtime (:func:`anomopt.evaluate.evaluate_artifact`, as it deploys), and prints / records per
category: image AUROC, false-reject rate on good test images, escape rate on anomalous ones, F1 at the
threshold, and the median z-score of the good test images, next to the FP32 artifact's.

Acceptance (issue 13): |FR - FR_fp32| <= 2 points and |median z - median z_fp32| <= 0.5 per category.
Beside it, the threshold's own noise: each artifact's threshold is re-fitted on B bootstrap resamples of
its validation normals (same policy) and the good test images' false-reject rate measured at each; the 5-95 %
band of the FP32 artifact says how far FR moves from the finite validation set alone, with no model change.

    PYTHONPATH=src nice python benchmarks/decisions.py \\
        --run /work/models/stfpm-realdev/model.ckpt=../shared/data/realdev  # --no-write: print only

Checkpoints trained before anomopt recorded its validation split get it re-derived from the data root
(``val_fraction`` 0.1, seed 0: ``anomopt train``'s defaults). Test images never calibrate or threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import grid_common as gc  # noqa: E402
from anomopt.api import optimize  # noqa: E402
from anomopt.checkpoint import read_checkpoint  # noqa: E402
from anomopt.data import load_mvtec  # noqa: E402
from anomopt.data.dataset import load_validation  # noqa: E402
from anomopt.data.images import read_model_input  # noqa: E402
from anomopt.data.layout import scan_mvtec  # noqa: E402
from anomopt.evaluate import evaluate_artifact  # noqa: E402
from anomopt.normalization import fit_normalization  # noqa: E402
from anomopt.runtime import Predictor  # noqa: E402

#: name -> (target, bits, variant)
PIPELINES: dict[str, tuple[str, int, str | None]] = {
    "cpu-fp32": ("cpu", 32, None),
    "cpu-int8": ("cpu", 8, None),
    "cpu-int8-qat": ("cpu", 8, "qat"),
    "cpu-int8-prune": ("cpu", 8, "prune"),
    "cpu-int8-fast": ("cpu", 8, "fast"),
    "xavier_nx-int8": ("xavier_nx", 8, None),
}
KEYS = ("image_auroc", "false_reject_rate", "escape_rate", "f1_at_threshold", "median_z_good")
FR_LIMIT, Z_LIMIT = 0.02, 0.5


def run_one(ckpt: Path, root: Path, pipeline: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Optimize, save and evaluate one pipeline; returns per-category metrics and timings."""
    target, bits, variant = PIPELINES[pipeline]
    payload = read_checkpoint(ckpt)
    size = int(payload["config"]["image_size"])
    cats = list(payload.get("categories") or [])
    calib = None
    if bits == 8:  # the training split (validation normals excluded), capped per category like the grid
        calib = load_mvtec(root, cats, split="train", image_size=size, val_fraction=0.1, seed=0)
        if args.max_train_per_category > 0:
            calib = gc.per_category_subset(calib, args.max_train_per_category, 0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        om = optimize(
            str(ckpt), target, bits, calib=calib, variant=variant, calib_samples=args.calib_samples,
            tolerance=gc.NO_DRIFT_LIMIT, data_root=root, threshold_policy=args.threshold_policy,
            workdir=out / "work" / pipeline, seed=0, progress=False,
        )
    art = om.save(out / pipeline)
    optimize_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = evaluate_artifact(art, root, cats, threads=args.threads, progress=False)
    meta = json.loads((art / "meta.json").read_text())
    return {
        **stale(art, ckpt, root, cats, args),
        **threshold_band(art, ckpt, root, cats, args),
        "per_category": {c: {k: float(e[k]) for k in KEYS} for c, e in res["per_category"].items()},
        "mean": {k: float(res["mean"][k]) for k in KEYS},
        "thresholds_from": (meta.get("normalization_source") or {}).get("model"),
        "validation": (meta.get("normalization_source") or {}).get("validation"),
        "optimize_s": optimize_s,
        "eval_s": time.perf_counter() - t0,
    }


def stale(art: Path, ckpt: Path, root: Path, cats: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """What the artifact would decide with the checkpoint's FP32 statistics (before issue 13: no re-fit)."""
    norm = read_checkpoint(ckpt)["normalization"]
    res = evaluate_artifact(art, root, cats, threads=args.threads, progress=False, normalization=norm)
    return {"stale": {c: {k: float(e[k]) for k in ("false_reject_rate", "escape_rate", "median_z_good")}
                      for c, e in res["per_category"].items()}}


def _raw_scores(predictor: Predictor, paths: list[Path], batch: int = 16) -> np.ndarray:
    size = predictor.image_size
    out = [predictor.run(np.stack([read_model_input(p, size) for p in paths[i:i + batch]]))[0]
           for i in range(0, len(paths), batch)]
    return np.concatenate(out).astype(np.float64)


def threshold_band(art: Path, ckpt: Path, root: Path, cats: list[str], args: argparse.Namespace,
                   n_boot: int = 1000) -> dict[str, Any]:
    """Per category, the 5 / 50 / 95 % false-reject rates of the good test images when the threshold is
    re-fitted (the artifact's policy) on bootstrap resamples of the validation normals: threshold noise."""
    payload = read_checkpoint(ckpt)
    predictor = Predictor(art, threads=args.threads)
    val, _ = load_validation(payload.get("data_split"), predictor.image_size, data_root=root, categories=cats)
    splits = scan_mvtec(root, cats, require_test=True)
    rng = np.random.default_rng(0)
    band: dict[str, list[float]] = {}
    for cat in cats:
        v = _raw_scores(predictor, [s.path for s in val.samples if s.category == cat])
        g = _raw_scores(predictor, [s.path for s in splits[cat].test if s.label == 0])
        policy = predictor.normalization[cat].get("threshold_policy", "z:3")
        frs = []
        for _ in range(n_boot):
            r = rng.choice(v, v.size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                e = fit_normalization([cat] * r.size, r, policy=policy)[cat]
            frs.append(float(np.mean((g - e["score_mean"]) / e["score_std"] > e["image_threshold_z"])))
        band[cat] = [float(q) for q in np.percentile(frs, [5, 50, 95])]
    return {"fr_band": band}


def verdicts(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """Per pipeline and category: FR within 2 points and median z within 0.5 of the FP32 artifact's."""
    ref = rows["cpu-fp32"]["per_category"]
    out: dict[str, dict[str, bool]] = {}
    for name, row in rows.items():
        if name == "cpu-fp32":
            continue
        out[name] = {
            c: abs(e["false_reject_rate"] - ref[c]["false_reject_rate"]) <= FR_LIMIT + 1e-9
            and abs(e["median_z_good"] - ref[c]["median_z_good"]) <= Z_LIMIT
            for c, e in row["per_category"].items()
        }
    return out


def in_band(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """Per pipeline and category: FR inside the FP32 artifact's 5-95 % threshold-noise band."""
    band = rows["cpu-fp32"].get("fr_band")
    if not band:
        return {}
    return {name: {c: band[c][0] - 1e-9 <= e["false_reject_rate"] <= band[c][2] + 1e-9
                   for c, e in row["per_category"].items()}
            for name, row in rows.items() if name != "cpu-fp32"}


def _band_text(row: dict[str, Any], cat: str) -> str:
    b = row.get("fr_band", {}).get(cat)
    return f"{100 * b[0]:.0f}-{100 * b[2]:.0f}" if b else "n/a"


def table(label: str, rows: dict[str, dict[str, Any]]) -> str:
    ok, inside = verdicts(rows), in_band(rows)
    lines = []
    for name, row in rows.items():
        for cat, e in row["per_category"].items():
            mark = "ref" if name == "cpu-fp32" else ("yes" if ok[name][cat] else "NO")
            where = "" if name == "cpu-fp32" or not inside else ("in" if inside[name][cat] else "outside")
            noise = _band_text(row, cat) + (f" ({where} FP32's)" if where else "")
            old = row.get("stale", {}).get(cat, {})
            lines.append([label, name, cat, gc.fmt(e["image_auroc"]), gc.fmt(100 * e["false_reject_rate"], 1),
                          gc.fmt(100 * e["escape_rate"], 1), gc.fmt(e["f1_at_threshold"]),
                          gc.fmt(e["median_z_good"], 2), mark, noise,
                          gc.fmt(100 * old.get("false_reject_rate", float("nan")), 1),
                          gc.fmt(100 * old.get("escape_rate", float("nan")), 1),
                          gc.fmt(old.get("median_z_good", float("nan")), 2)])
    header = ["model / data", "pipeline", "category", "image AUROC", "FR % (good flagged)",
              "escape % (bad passed)", "F1@thr", "median z good", "within 2 pt / 0.5 z of FP32",
              "FR % band from threshold noise (5-95 %)",
              "FR % with FP32 stats", "escape % with FP32 stats", "median z with FP32 stats"]
    return gc.md_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="CKPT=DATA",
                   help="a checkpoint and the data root it was trained on (repeatable)")
    p.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated (cpu-fp32 always runs)")
    p.add_argument("--threshold-policy", default=None, help="z:3 (default) or fpr:R")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--max-train-per-category", type=int, default=100,
                   help="training images per category for calibration / QAT / prune fine-tuning (0: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(gc.SCRATCH / "decisions"), help="artifacts and decisions.json")
    gc.rw.add_args(p)
    p.add_argument("--reuse", action="store_true", help="reuse rows already in OUT/decisions.json")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    names = ["cpu-fp32"] + [n for n in args.pipelines.split(",") if n and n != "cpu-fp32"]
    unknown = [n for n in names if n not in PIPELINES]
    if unknown:
        p.error(f"unknown pipeline(s) {unknown}; known: {', '.join(PIPELINES)}")
    run, t_start = gc.rw.RunInfo.start(__file__, args.threads, argv), time.perf_counter()
    wall = lambda: (time.perf_counter() - t_start) / 60  # noqa: E731
    out = Path(args.out)
    store = gc.read_json(out / "decisions.json", {})
    sections: list[str] = []
    labels: list[str] = []
    reused = 0
    for item in args.run:
        ckpt_s, _, root_s = item.partition("=")
        ckpt, root = Path(ckpt_s), Path(root_s)
        label = f"{ckpt.parent.name}"
        rows: dict[str, dict[str, Any]] = {}
        for name in names:
            if args.reuse and name in store.get(label, {}):
                rows[name] = store[label][name]
                if "stale" not in rows[name] and (out / label / name).is_dir():
                    cats = list(read_checkpoint(ckpt).get("categories") or [])
                    rows[name].update(stale(out / label / name, ckpt, root, cats, args))
                    gc.write_json(out / "decisions.json", store)
                if "fr_band" not in rows[name] and (out / label / name).is_dir():
                    cats = list(read_checkpoint(ckpt).get("categories") or [])
                    rows[name].update(threshold_band(out / label / name, ckpt, root, cats, args))
                    gc.write_json(out / "decisions.json", store)
                print(f"[{label}] {name}: reused from {out / 'decisions.json'}", flush=True)
                reused += 1
                continue
            print(f"[{label}] {name} ...", flush=True)
            rows[name] = run_one(ckpt, root, name, out / label, args)
            print(f"[{label}] {name}: mean FR {100 * rows[name]['mean']['false_reject_rate']:.1f} %, escapes "
                  f"{100 * rows[name]['mean']['escape_rate']:.1f} %, median z good "
                  f"{rows[name]['mean']['median_z_good']:.2f} ({rows[name]['optimize_s']:.0f} s)", flush=True)
            store[label] = {**store.get(label, {}), **rows}
            gc.write_json(out / "decisions.json", store)
        labels.append(label)
        ok, inside = verdicts(rows), in_band(rows)
        cells = [(n, c) for n in ok for c in ok[n]]
        n_ok = sum(ok[n][c] for n, c in cells)
        summary = f"{label}: the bar holds in {n_ok} of {len(cells)} pipeline x category cells"
        if inside:
            summary += (f"; FR inside the FP32 artifact's threshold-noise band in "
                        f"{sum(inside[n][c] for n, c in cells)} of {len(cells)}")
        sections += [f"#### {label}", "", summary, "", table(label, rows), ""]
        print(sections[-2], flush=True)
    body = "\n".join([
        f"- wall time: {wall():.1f} min" + (f" ({reused} rows reused from an earlier run's decisions.json, "
                                           "their optimize time not counted)" if reused else ""),
        "- FR band: the false-reject rate of good test images when the artifact's threshold is re-fitted on "
        "1000 bootstrap resamples of its validation normals (5-95 %): the threshold's own noise from a finite "
        "validation set; a pipeline's mark says whether its FR lies inside the FP32 artifact's band",
        "- thresholds: re-fitted by optimize() on each lowered artifact (ONNX Runtime; xavier_nx = its QDQ "
        f"ONNX as stand-in) over the checkpoint's validation normals, policy {args.threshold_policy or 'z:3'}",
        f"- calibration / QAT / prune fine-tuning: at most {args.max_train_per_category} normal training images "
        "per category (validation normals excluded); shipped pipeline settings otherwise",
        "- metrics: test split, evaluated through anomopt.runtime.Predictor (as deployed); FR = good test "
        "images flagged, escape = anomalous test images passed, F1 and median z of good images at that threshold",
        "",
        *sections,
    ])
    gc.rw.publish(args, "decisions", "Decisions at the shipped threshold: every pipeline vs the FP32 artifact",
                  "benchmarks/decisions.py", body, run, part=labels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
