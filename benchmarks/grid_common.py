"""The shared engine of the paper-grid benchmarks (paper_grid.py, unified_vs_oneclass.py, quantization.py).

- data: MVTec-layout splits capped per category (:func:`load_splits`), the synthetic set on demand;
- training: :func:`trained_model` trains one-class or unified models with :func:`anomopt.train.train_model`
  or loads them from a checkpoint cache keyed by dataset / model / mode / category / size / epochs / seed;
- variants: FP32, PTQ INT8 (any calibration method x data source x scope) and QAT INT8, all through
  :func:`anomopt.api.optimize` with the shipped cpu pipelines, lowered to ONNX Runtime (:func:`build_variant`);
- measurement: image AUROC, pixel AUROC and AUPRO computed from the lowered ONNX artifact's own outputs on
  the test split, artifact sizes per role, interleaved batch-1 ONNX Runtime latency;
- a measurement cache (``measurements.json`` in the work dir) shared by all three scripts, so a
  configuration measured by one is not measured again by another; files are written atomically.

Calibration and QAT only ever see normal training images (or noise); test images are for metrics only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from anomopt.api import optimize
from anomopt.bench import onnx_parameters, onnx_weight_bytes, time_calls, torch_parameters
from anomopt.checkpoint import load_checkpoint, read_checkpoint
from anomopt.data import generate_synthetic, load_mvtec
from anomopt.data.layout import list_categories
from anomopt.inference import predict_dataset, stack_images
from anomopt.metrics import evaluate_predictions
from anomopt.models import build_model
from anomopt.runtime.predictor import make_session
from anomopt.targets.onnx_export import INPUT_NAME
from anomopt.train import TrainConfig, seed_everything, train_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_writer as rw  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REALDEV = REPO.parent / "shared" / "data" / "realdev"
SCRATCH = Path(tempfile.gettempdir()) / "anomopt-grid"
NO_DRIFT_LIMIT = {"max_score_drift": float("inf"), "max_map_drift": float("inf")}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


# ----------------------------------------------------------------------------------------- arguments


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options every grid script takes (sizes, caps, epochs, caches)."""
    p.add_argument("--models", default="stfpm,rd,us", help="comma list of stfpm, rd, us")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=15, help="training epochs of STFPM and RD")
    p.add_argument("--us-epochs", type=int, default=4, help="training epochs of Uninformed Students")
    p.add_argument("--equal-steps", action="store_true",
                   help="one-class models train (categories) x the epochs: as many optimizer steps as unified")
    p.add_argument("--max-train-per-category", type=int, default=100)
    p.add_argument("--max-test-per-category", type=int, default=100)
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--ort-threads", type=int, default=2)
    p.add_argument("--work-dir", default=str(SCRATCH))
    p.add_argument("--checkpoint-dir", default=None, help="cache of trained models (default: WORK/checkpoints)")
    p.add_argument("--synthetic-dir", default=str(SCRATCH / "synthetic"))
    rw.add_args(p)
    p.add_argument("--resume", action="store_true",
                   help="reuse the rows in WORK/measurements.json (any grid script's); without it every row "
                   "is measured again (trained checkpoints are always reused)")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, 1 epoch, a few images")


def apply_quick(args: argparse.Namespace) -> argparse.Namespace:
    """Shrink everything for a smoke run (and keep its caches apart from the real ones)."""
    if args.quick:
        args.image_size, args.epochs, args.us_epochs, args.qat_epochs = 64, 1, 1, 1
        args.max_train_per_category, args.max_test_per_category, args.calib_images = 6, 6, 8
        if args.work_dir == str(SCRATCH):
            args.work_dir = str(SCRATCH / "quick")
        if args.synthetic_dir == str(SCRATCH / "synthetic"):
            args.synthetic_dir = str(Path(args.work_dir) / "synthetic")
    return args


def epochs_of(model: str, args: argparse.Namespace, mode: str = "unified", dataset: str | None = None) -> int:
    """Training epochs of one model kind; with ``--equal-steps`` a one-class model gets (categories of its
    data set) x the epochs, so it takes as many optimizer steps as the unified model (equal caps)."""
    base = int(args.us_epochs if model == "us" else args.epochs)
    if mode == "oneclass" and getattr(args, "equal_steps", False):
        return base * int(getattr(args, "category_counts", {}).get(dataset, 1))
    return base


def load_now() -> tuple[float, ...]:
    """The 1/5/15-minute load average."""
    return rw.load_average()


def utc_now() -> str:
    return rw.utc_now()


def threads_text(args: argparse.Namespace) -> str:
    """The thread counts of a grid run, for the results header."""
    return f"torch {args.torch_threads}, ONNX Runtime {args.ort_threads}"


# ---------------------------------------------------------------------------------------------- data


def per_category_subset(ds: Dataset, limit: int, seed: int) -> Dataset:
    """At most ``limit`` items per category, drawn at random (labels keep their mix)."""
    cats = [s.category for s in ds.samples]  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for cat in dict.fromkeys(cats):
        idx = [i for i, c in enumerate(cats) if c == cat]
        if len(idx) > limit:
            idx = sorted(rng.choice(idx, size=limit, replace=False).tolist())
        keep.extend(idx)
    return ds if len(keep) == len(cats) else Subset(ds, keep)


def grid_cells(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, Path, str, dict[str, Splits]]]]:
    """The data set roots of ``--datasets`` and one ``(dataset, root, model, splits)`` cell per data set x
    ``--models`` entry; the cells of one data set share its ``splits`` cache."""
    roots, cells = [], []
    for name in args.datasets.split(","):
        dataset, root = dataset_root(name, args)
        roots.append(str(root))
        splits: dict[str, Splits] = {}
        cells += [(dataset, root, model, splits) for model in args.models.split(",")]
    return roots, cells


def dataset_root(name: str, args: argparse.Namespace) -> tuple[str, Path]:
    """``(label, root)`` of ``synthetic``, ``realdev`` or any MVTec-layout folder (generated on demand)."""
    if name == "synthetic":
        root = Path(args.synthetic_dir)
        if not (root / "synthetic.json").is_file():
            n_train, n_test, cats = (8, 6, 2) if args.quick else (40, 30, 5)
            print(f"[synthetic] generating {cats} categories into {root}", flush=True)
            generate_synthetic(root, categories=cats, n_train=n_train, n_test=n_test, image_size=256,
                               seed=0, progress=False)
        return "synthetic", root
    root = REALDEV if name == "realdev" else Path(name)
    if not root.is_dir():
        raise FileNotFoundError(f"data set folder {root} not found")
    return ("realdev" if name == "realdev" else root.name), root


def categories_of(root: Path) -> list[str]:
    """The categories of an MVTec-layout folder, sorted."""
    return sorted(list_categories(root))


@dataclass
class Splits:
    """Capped train / val / test splits of some categories of one data set."""

    train: Dataset
    val: Dataset
    test: Dataset


def load_splits(root: Path, categories: list[str], args: argparse.Namespace) -> Splits:
    """Train (capped per category), val (the seeded hold-out of train/good) and test (capped) splits."""
    size = args.image_size
    train = load_mvtec(root, categories, "train", size, seed=args.seed)
    val = load_mvtec(root, categories, "val", size, seed=args.seed)
    test = load_mvtec(root, categories, "test", size, seed=args.seed)
    train = per_category_subset(train, args.max_train_per_category, args.seed)
    test = per_category_subset(test, args.max_test_per_category, args.seed + 1)
    return Splits(train, val, test)


# ------------------------------------------------------------------------------------------ training


def checkpoint_dir(args: argparse.Namespace) -> Path:
    folder = Path(args.checkpoint_dir or Path(args.work_dir) / "checkpoints")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def model_key(dataset: str, model: str, mode: str, category: str, args: argparse.Namespace) -> str:
    """The cache key of one trained model: dataset, model, mode, category, size, epochs, caps, seed."""
    return (f"{dataset}-{model}-{mode}-{category}-{args.image_size}px-{epochs_of(model, args, mode, dataset)}ep-"
            f"{args.max_train_per_category}pc-s{args.seed}")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


@dataclass
class Trained:
    """A trained model with what its training cost."""

    model: Any
    key: str
    train_seconds: float
    train_images: int
    epochs: int
    params: dict[str, int]
    cached: bool


def trained_model(dataset: str, name: str, mode: str, category: str, splits: Splits,
                  args: argparse.Namespace) -> Trained:
    """Train ``name`` on ``splits.train`` (one category: one-class; all: unified), or load it from the
    cache when an identical run completed; the training time is recorded beside the checkpoint."""
    key = model_key(dataset, name, mode, category, args)
    if key in _TRAINED:
        return _TRAINED[key]
    _TRAINED[key] = _train_or_load(dataset, name, mode, category, splits, args, key)
    return _TRAINED[key]


_TRAINED: dict[str, Trained] = {}  # models of this process, by cache key


def _train_or_load(dataset: str, name: str, mode: str, category: str, splits: Splits, args: argparse.Namespace,
                   key: str) -> Trained:
    path = checkpoint_dir(args) / f"{key}.pt"
    info_path = path.with_suffix(".json")
    epochs = epochs_of(name, args, mode, dataset)
    if path.is_file() and read_checkpoint(path).get("training", {}).get("complete") and info_path.is_file():
        model, _ = load_checkpoint(path, expect_model=name)
        info = read_json(info_path, {})
        print(f"[{dataset}] {name} {mode} {category}: loaded {path.name}", flush=True)
        return Trained(model.eval(), key, float(info["seconds"]), int(info["images"]), epochs,
                       torch_parameters(model), True)
    seed_everything(args.seed)
    model = build_model(name, image_size=args.image_size)
    config = TrainConfig(epochs=epochs, seed=args.seed, progress=False, checkpoint=str(path),
                         resume=path.is_file() and not read_checkpoint(path).get("training", {}).get("complete"))
    t0 = time.perf_counter()
    result = train_model(model, splits.train, config, val_set=splits.val)
    seconds = time.perf_counter() - t0
    n = len(splits.train)  # type: ignore[arg-type]
    write_json(info_path, {"seconds": seconds, "images": n, "epochs": epochs, "losses": result.losses,
                           "load_after": load_now(), "date": utc_now()})
    print(f"[{dataset}] {name} {mode} {category}: trained {epochs} epochs on {n} images in {seconds:.0f}s, "
          f"last loss {result.losses[-1]:.4f}", flush=True)
    return Trained(model.eval(), key, seconds, n, epochs, torch_parameters(model), False)


# ------------------------------------------------------------------------------------------ variants


@dataclass(frozen=True)
class Variant:
    """One deployable form of a trained model: FP32, PTQ INT8 or QAT INT8 (None: the run's default)."""

    name: str
    bits: int = 8
    method: str = "percentile"  # max | percentile | entropy | mse
    source: str = "train"  # train | noise | mixed
    scope: str = "student"  # student | all
    qat: bool = False
    percentile: float = 99.99
    calib_samples: int | None = None
    qat_epochs: int | None = None
    qat_lr: float | None = None

    def describe(self) -> str:
        if self.bits == 32:
            return "FP32"
        kind = "QAT" if self.qat else "PTQ"
        extra = f" {self.percentile:g}" if self.method == "percentile" else ""
        return f"{kind} INT8 ({self.method}{extra}, {self.source} calib, {self.scope})"

    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        """Calibration sample count and QAT schedule, the variant's own or the run's."""
        return {"calib": self.calib_samples or args.calib_images,
                "qat_epochs": self.qat_epochs or args.qat_epochs, "qat_lr": self.qat_lr or args.qat_lr}

    def key(self, args: argparse.Namespace) -> str:
        """Everything that determines the artifact besides the trained model."""
        if self.bits == 32:
            return "fp32"
        s = self.settings(args)
        key = f"{'qat' if self.qat else 'ptq'}-{self.method}-{self.percentile:g}-{self.source}-{self.scope}"
        key += f"|calib{s['calib']}"
        return key + (f"|qat{s['qat_epochs']}x{s['qat_lr']:g}" if self.qat else "")


def _migrate_key(key: str) -> str:
    """Keys of the first runs carried the calibration count and QAT schedule for every variant."""
    parts = key.split("|")
    if len(parts) != 4 or not parts[3].startswith("qat"):
        return key
    trained, vkey, calib, qat = parts
    if vkey == "fp32":
        return f"{trained}|fp32"
    return "|".join([trained, vkey, calib] + ([qat] if vkey.startswith("qat") else []))


FP32 = Variant("fp32", bits=32)
PTQ_TRAIN = Variant("ptq-train")  # the shipped cpu-int8 pipeline
PTQ_NOISE = Variant("ptq-noise", source="noise")
QAT = Variant("qat", qat=True)  # the shipped cpu-int8-qat pipeline


def calibration_pool(train: Dataset, args: argparse.Namespace) -> torch.Tensor:
    """All normal training images of a split, shuffled by seed (the calibration / QAT pool)."""
    images = stack_images(train)
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))]


def build_variant(trained: Trained, variant: Variant, pool: torch.Tensor, work: Path,
                  args: argparse.Namespace) -> tuple[Path, dict[str, Any], float]:
    """Run the variant's cpu pipeline through :func:`optimize`; returns the lowered ONNX artifact, the
    optimize report and the seconds it took. Drift limits are lifted: the benchmark measures instead."""
    pipeline = REPO / "passes" / ("cpu-fp32.toml" if variant.bits == 32 else
                                  "cpu-int8-qat.toml" if variant.qat else "cpu-int8.toml")
    options: dict[str, dict[str, Any]] = {}
    if variant.bits == 8:
        options["insert_fake_quant"] = {"scope": variant.scope}
        options["calibrate"] = {"method": variant.method, "percentile": variant.percentile}
        if variant.qat:
            settings = variant.settings(args)
            options["qat_finetune"] = {"epochs": settings["qat_epochs"], "lr": settings["qat_lr"]}
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    om = optimize(trained.model, "cpu", variant.bits, calib=pool, passes=str(pipeline), tolerance=NO_DRIFT_LIMIT,
                  calib_source=variant.source, calib_samples=variant.settings(args)["calib"], pass_options=options,
                  train=pool if variant.qat else None, workdir=work, seed=args.seed, progress=False)
    seconds = time.perf_counter() - t0
    artifact = om.graph.state.artifact or {}
    path = Path(artifact["model"])
    report = om.report
    return path, {"calibration": report.get("calibration"), "quant": report.get("quant"),
                  "qat": om.graph.state.qat.to_dict() if om.graph.state.qat else None}, seconds


def artifact_predictions(path: Path, test: Dataset, threads: int) -> Any:
    """Scores and maps of the test split from the ONNX artifact itself (ONNX Runtime, CPU)."""
    sess = make_session(path, threads=threads, spinning=False)

    def scorer(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        score, amap = sess.run(None, {INPUT_NAME: images.numpy().astype(np.float32)})
        return score, amap[:, 0] if amap.ndim == 4 else amap

    return predict_dataset(scorer, test, batch_size=8)


def evaluate_artifact(path: Path, test: Dataset, threads: int) -> dict[str, dict[str, float]]:
    """Per-category image AUROC, pixel AUROC and AUPRO of the artifact on ``test``."""
    p = artifact_predictions(path, test, threads)
    result = evaluate_predictions(p.categories, p.labels, p.scores, p.masks, p.maps)
    return {cat: {m: float(e[m]) for m in METRICS} for cat, e in result["per_category"].items()}


def output_drift(path: Path, reference: Path, test: Dataset, threads: int, n: int = 16) -> dict[str, float]:
    """Relative L2 difference of scores and maps between two artifacts on ``n`` test images spread over
    the split (how far INT8 moved the outputs from FP32)."""
    idx = np.unique(np.linspace(0, len(test) - 1, n).astype(int))  # type: ignore[arg-type]
    x = torch.stack([test[int(i)]["image"] for i in idx]).numpy().astype(np.float32)
    (sa, ma), (sb, mb) = (make_session(p, threads=threads, spinning=False).run(None, {INPUT_NAME: x})
                          for p in (path, reference))
    return {"score": _rel_l2(sa, sb), "map": _rel_l2(ma, mb)}


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))


def artifact_sizes(path: Path) -> dict[str, float]:
    """MB (2^20 bytes) of stored teacher / student / head weights and of the whole file."""
    return {k: v / 2**20 for k, v in onnx_weight_bytes(path).items()}


# ------------------------------------------------------------------------------------ measurement cache


class Measurements:
    """Rows measured so far, keyed by everything that determines them, in ``WORK/measurements.json``
    (shared by the grid scripts; rewritten atomically after every new row)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.path = Path(args.work_dir) / "measurements.json"
        self.resume = bool(args.resume)
        self.rows: dict[str, dict[str, Any]] = {_migrate_key(k): v for k, v in read_json(self.path, {}).items()}
        self.fresh: set[str] = set()

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.rows.get(key) if self.resume or key in self.fresh else None
        return row if row is not None and Path(row.get("artifact", "")).is_file() else None

    def put(self, key: str, row: dict[str, Any]) -> None:
        self.rows[key] = row
        self.fresh.add(key)
        write_json(self.path, self.rows)


def measure(store: Measurements, dataset: str, model: str, mode: str, category: str, splits: Splits,
            variant: Variant, args: argparse.Namespace, pool: torch.Tensor | None = None) -> dict[str, Any]:
    """One row (cached): train-or-load the model, build the variant, evaluate its artifact on the test split.

    ``category`` is the one-class category or ``"unified"``; the row holds per-category metrics."""
    trained_key = model_key(dataset, model, mode, category, args)
    key = f"{trained_key}|{variant.key(args)}"
    row = store.get(key)
    if row is not None:
        if variant.bits == 8 and "drift" not in row:  # rows measured before drift was recorded
            fp32 = measure(store, dataset, model, mode, category, splits, FP32, args, pool)
            row["drift"] = output_drift(Path(row["artifact"]), Path(fp32["artifact"]), splits.test, args.ort_threads)
            store.put(key, row)
        return row
    trained = trained_model(dataset, model, mode, category, splits, args)
    pool = calibration_pool(splits.train, args) if pool is None else pool
    work = Path(args.work_dir) / "artifacts" / trained_key / variant.key(args).replace("|", "_")
    path, info, seconds = build_variant(trained, variant, pool, work, args)
    t0 = time.perf_counter()
    metrics = evaluate_artifact(path, splits.test, args.ort_threads)
    row = {
        "dataset": dataset, "model": model, "mode": mode, "category": category, "variant": variant.name,
        "variant_key": variant.key(args), "describe": variant.describe(), "metrics": metrics,
        "mean": {m: float(np.nanmean([v[m] for v in metrics.values()])) for m in METRICS},
        "sizes_mb": artifact_sizes(path), "artifact": str(path), "optimize_seconds": seconds,
        "eval_seconds": time.perf_counter() - t0, "train_seconds": trained.train_seconds,
        "train_images": trained.train_images, "epochs": trained.epochs, "params": trained.params,
        "calibration": info["calibration"], "qat": info["qat"], "date": utc_now(),
        "onnx_params": onnx_parameters(path) if variant.bits == 32 else None,
    }
    if variant.bits == 8:
        fp32 = measure(store, dataset, model, mode, category, splits, FP32, args, pool)
        row["drift"] = output_drift(path, Path(fp32["artifact"]), splits.test, args.ort_threads)
    store.put(key, row)
    mean = row["mean"]
    print(f"[{dataset}] {model} {mode} {category} {variant.describe()}: image AUROC {mean['image_auroc']:.3f}, "
          f"pixel AUROC {mean['pixel_auroc']:.3f}, AUPRO {mean['aupro']:.3f} ({seconds:.0f}s optimize)",
          flush=True)
    return row


def mode_rows(store: Measurements, dataset: str, root: Path, model: str, mode: str, variant: Variant,
              args: argparse.Namespace, cache: dict[str, Splits]) -> list[dict[str, Any]]:
    """The rows of one model in one mode: one per category for one-class, one for unified."""
    cats = categories_of(root)
    args.category_counts = {**getattr(args, "category_counts", {}), dataset: len(cats)}  # for --equal-steps
    groups = [(c, [c]) for c in cats] if mode == "oneclass" else [("unified", cats)]
    rows = []
    for label, members in groups:
        split_key = f"{root}|{label}"
        if split_key not in cache:
            cache[split_key] = load_splits(root, members, args)
        rows.append(measure(store, dataset, model, mode, label, cache[split_key], variant, args))
    return rows


def per_category(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-category metrics merged from one mode's rows (one-class: one row per category)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.update(r["metrics"])
    return out


def mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over categories of each metric."""
    cats = per_category(rows)
    return {m: float(np.nanmean([v[m] for v in cats.values()])) for m in METRICS}


# ------------------------------------------------------------------------------------------- latency


def measure_latencies(paths: list[str], image_size: int, threads: int, runs: int = 40,
                      rounds: int = 4) -> dict[str, dict[str, float]]:
    """Batch-1 ONNX Runtime latency (ms, median and min) of each artifact, taken in ``rounds`` rounds over
    all artifacts in a shuffled order, so a change in the machine's load hits them alike."""
    sessions = {p: make_session(p, threads=threads, spinning=False) for p in dict.fromkeys(paths)}
    x = np.random.default_rng(0).random((1, 3, image_size, image_size), dtype=np.float32)
    times: dict[str, list[float]] = {p: [] for p in sessions}
    rng = np.random.default_rng(0)
    per_round = max(1, runs // max(1, rounds))
    for _ in range(max(1, rounds)):
        for p in rng.permutation(list(sessions)):
            sess = sessions[str(p)]
            times[str(p)].extend(time_calls(lambda s=sess: s.run(None, {INPUT_NAME: x}), 2, per_round).tolist())
    return {p: {"median_ms": statistics.median(t), "min_ms": min(t)} for p, t in times.items()}


# ------------------------------------------------------------------------------------------ reporting


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def settings_lines(args: argparse.Namespace, wall_s: float, roots: list[str], extra: list[str]) -> list[str]:
    """The settings of a grid section (the writer adds command, date, machine, threads and load)."""
    us_commit = os.popen(f"git -C {shlex.quote(str(REPO))} log -1 --format=%h -- src/anomopt/models/us.py").read()
    return [
        f"- wall time: {wall_s / 60:.1f} min (models trained earlier are loaded from the cache)",
        f"- data: {', '.join(roots)}; {args.image_size} px; at most {args.max_train_per_category} train / "
        f"{args.max_test_per_category} test images per category; seed {args.seed}",
        f"- training: STFPM / RD {args.epochs} epochs, US {args.us_epochs} epochs "
        f"(US model at commit {us_commit.strip() or 'n/a'})",
        f"- calibration: {args.calib_images} images from the normal training split (or noise); never test images;"
        f" QAT {args.qat_epochs} epochs at lr {args.qat_lr:g} on the normal training split",
        "- metrics: mean over categories, computed from the lowered ONNX artifact's outputs (what deploys), "
        "ONNX Runtime CPU",
        *extra,
        "",
    ]


def span_line(rows: list[dict[str, Any]]) -> str:
    """When the rows of a table were measured and what they cost (rows may come from earlier runs)."""
    dates = sorted(r["date"] for r in rows)
    train = {(r["dataset"], r["model"], r["mode"], r["category"]): r["train_seconds"] for r in rows}
    work = sum(r["optimize_seconds"] + r["eval_seconds"] for r in rows)
    return (f"- rows measured {dates[0]} to {dates[-1]} (cached rows come from the grid's shared cache); "
            f"{len(train)} trained models, {sum(train.values()) / 60:.1f} min of training; "
            f"{len(rows)} variants, {work / 60:.1f} min of optimize + evaluation")


def setup(args: argparse.Namespace) -> None:
    """Threads and seeds for a long, frugal job."""
    torch.set_num_threads(max(1, args.torch_threads))
    seed_everything(args.seed)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
