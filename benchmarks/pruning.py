"""Pruning benchmark: accuracy vs size vs latency of pruned unified STFPM and RD, FP32 and INT8.

For each data set (the synthetic set and ../shared/data/realdev) and each model: train briefly on the
pooled normal images of all categories (unified), then for every prune ratio run the ``prune`` pass
(ratio 0 only cuts dead backbone blocks, which is exact) and measure

- FP32: the pruned model exported to ONNX;
- INT8: the pruned model through the cpu-int8 pipeline (fold BN, fake-quant, percentile calibration,
  lowering to ONNX Runtime QDQ INT8) with the student quantized (the paper's scope);
- INT8-all: the same with the teacher quantized too (``--scopes student,all``; the scope of the shipped
  ``cpu-int8-prune`` pipeline);

each with its inference parameters, MACs per image, ONNX artifact size, ONNX Runtime latency at batch 1
(2 intra-op threads, median) and image / pixel AUROC (mean over categories) computed from the artifact's
own outputs on the test split. Rows go to a markdown table and an accuracy-vs-latency plot; the table
replaces this data-set list's part of the pruning section of ``benchmarks/RESULTS.md``
(``results_writer.py``: command, date, machine, threads, load).

    PYTHONPATH=src .venv/bin/python benchmarks/pruning.py --image-size 256 --epochs 10
    PYTHONPATH=src .venv/bin/python benchmarks/pruning.py --quick        # a smoke run in a few minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.data import Dataset

import results_writer as rw  # noqa: E402  (benchmarks/ is on sys.path)
from anomopt.api import optimize
from anomopt.checkpoint import load_checkpoint, read_checkpoint
from anomopt.data import generate_synthetic, load_mvtec
from anomopt.graph import capture
from anomopt.inference import predict_dataset, stack_images
from anomopt.metrics import evaluate_predictions
from anomopt.models import build_model
from anomopt.passes import load_pipeline, pipeline_path
from anomopt.passes.prune import conv_macs
from anomopt.targets.onnx_export import INPUT_NAME, export_onnx
from anomopt.train import TrainConfig, train_model
from grid_common import per_category_subset  # noqa: E402  (benchmarks/ is on sys.path)

HERE = Path(__file__).resolve().parent
PRECISIONS = {"student": "INT8", "all": "INT8-all"}  # quantization scope -> row label
REALDEV = HERE.parent.parent / "shared" / "data" / "realdev"


@dataclass
class Row:
    """One measured configuration."""

    dataset: str
    model: str
    ratio: float  # -1: the unmodified model (no prune pass at all)
    precision: str
    params: int
    student_params: int
    macs: int
    student_macs: int
    artifact_mb: float
    latency_ms: float  # median, measured interleaved with every other artifact at the end
    latency_min_ms: float
    image_auroc: float
    pixel_auroc: float
    prune_seconds: float
    artifact: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="synthetic,realdev", help="comma list: synthetic, realdev")
    p.add_argument("--models", default="stfpm,rd")
    p.add_argument("--ratios", default="0,0.25,0.5,0.75")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10, help="training epochs of each unified model")
    p.add_argument("--finetune-epochs", type=int, default=2, help="prune pass fine-tune epochs")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--scopes", default="student,all",
                   help="quantization scopes of the INT8 rows: student (INT8) and/or all (INT8-all)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the unmodified model (no prune pass: dead backbone blocks still run)")
    p.add_argument("--max-train-per-category", type=int, default=200)
    p.add_argument("--max-test-per-category", type=int, default=150)
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--latency-runs", type=int, default=60, help="timed runs per artifact, in rounds")
    p.add_argument("--latency-rounds", type=int, default=6,
                   help="rounds over all artifacts (interleaving evens out the machine's load)")
    p.add_argument("--ort-threads", type=int, default=2)
    p.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    scratch = os.path.join(tempfile.gettempdir(), "anomopt-bench")
    p.add_argument("--synthetic-dir", default=os.path.join(scratch, "synthetic"))
    p.add_argument("--realdev", default=str(REALDEV))
    p.add_argument("--work-dir", default=os.path.join(scratch, "pruning"))
    rw.add_args(p)
    p.add_argument("--plot", default=str(HERE / "pruning.png"))
    p.add_argument("--quick", action="store_true", help="smoke run: 128 px, 1 epoch, 2 ratios, few images")
    p.add_argument("--checkpoint-dir", default=None, help="cache of trained models (default: work dir)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows in the work dir's rows.json and measure only what is missing")
    p.add_argument("--remeasure", action="store_true",
                   help="only re-measure the latency of the artifacts in the work dir's rows.json and report")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.epochs, args.finetune_epochs = 128, 1, 1
        args.ratios = "0,0.5"
        args.max_train_per_category, args.max_test_per_category = 12, 8
        args.calib_images, args.latency_runs, args.latency_rounds = 16, 10, 2
    return args


def load_splits(name: str, args: argparse.Namespace) -> tuple[Dataset, Dataset, Dataset, str]:
    """Train / val / test splits of one data set, and where it came from."""
    size = args.image_size
    if name == "synthetic":
        root = Path(args.synthetic_dir)
        if not (root / "synthetic.json").is_file():
            n_train, n_test = (8, 6) if args.quick else (60, 30)
            generate_synthetic(root, categories=5, n_train=n_train, n_test=n_test, image_size=256, seed=0,
                               progress=False)
        cats: Any = "all"
    elif name == "realdev":
        root = Path(args.realdev)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} not found")
        cats = ["metal_plate", "pcb"]
    else:
        raise ValueError(f"unknown data set {name!r}")
    train = load_mvtec(root, cats, "train", size)
    val = load_mvtec(root, cats, "val", size)
    test = load_mvtec(root, cats, "test", size)
    train = per_category_subset(train, args.max_train_per_category, 0)
    test = per_category_subset(test, args.max_test_per_category, 1)
    return train, val, test, str(root)


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def measure_latencies(rows: list[Row], args: argparse.Namespace) -> None:
    """Batch-1 latency of every row's artifact, in rounds over all artifacts in a shuffled order, so a
    change in the machine's load hits all of them alike; sets the median and the minimum (ms)."""
    sessions = {r.artifact: session(Path(r.artifact), args.ort_threads) for r in rows}
    x = np.random.default_rng(0).random((1, 3, args.image_size, args.image_size), dtype=np.float32)
    times: dict[str, list[float]] = {path: [] for path in sessions}
    per_round = max(1, args.latency_runs // max(1, args.latency_rounds))
    rng = np.random.default_rng(0)
    for _ in range(max(1, args.latency_rounds)):
        for path in rng.permutation(list(sessions)):
            sess = sessions[str(path)]
            for _ in range(2):  # warm-up
                sess.run(None, {INPUT_NAME: x})
            for _ in range(per_round):
                t0 = time.perf_counter()
                sess.run(None, {INPUT_NAME: x})
                times[str(path)].append(1000.0 * (time.perf_counter() - t0))
    for r in rows:
        r.latency_ms = statistics.median(times[r.artifact])
        r.latency_min_ms = min(times[r.artifact])


def aurocs(sess: ort.InferenceSession, test: Dataset) -> tuple[float, float]:
    """Mean image and pixel AUROC of the artifact's own outputs."""

    def scorer(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        score, amap = sess.run(None, {INPUT_NAME: images.numpy().astype(np.float32)})
        return score, amap[:, 0]

    preds = predict_dataset(scorer, test, batch_size=8)
    result = evaluate_predictions(preds.categories, preds.labels, preds.scores, preds.masks, preds.maps)
    return float(result["mean"]["image_auroc"]), float(result["mean"]["pixel_auroc"])


def int8_artifact(model: torch.nn.Module, calib: torch.Tensor, work: Path, scope: str = "student") -> tuple[Path, Any]:
    """The cpu-int8 pipeline on ``model`` (quantization ``scope``: student | all); returns the INT8 ONNX
    path and the optimized graph."""
    work.mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline(pipeline_path("cpu", 8))
    if pipeline is not None:
        before = set(work.rglob("*.onnx"))
        om = optimize(model, "cpu", 8, calib=calib, passes=pipeline, workdir=work, progress=False,
                      pass_options={"insert_fake_quant": {"scope": scope}})
        artifact = om.graph.state.artifact or {}
        path = artifact.get("path") if isinstance(artifact, dict) else None
        if path is None or not str(path).endswith(".onnx"):
            fresh = sorted(set(work.rglob("*.onnx")) - before, key=lambda p: p.stat().st_mtime)
            path = fresh[-1] if fresh else None
        if path is not None:
            return Path(path), om.graph
    # The lowering pass is not registered (or wrote no ONNX): lower by hand, as it does.
    from anomopt.targets.ort_lowering import quantize_ort_int8

    calibrate = ("calibrate", {"method": "percentile", "percentile": 99.99})
    passes = ["fold_batchnorm", ("insert_fake_quant", {"scope": scope}), calibrate]
    om = optimize(model, "cpu", 8, calib=calib, passes=passes, progress=False)
    fp32 = export_onnx(om.graph, work / "folded_fp32.onnx")
    quantize_ort_int8(fp32.path, work / "int8.onnx", om.graph, fp32.conv_map, calib)
    return work / "int8.onnx", om.graph


def measure(dataset: str, name: str, ratio: float, precision: str, graph: Any, path: Path, test: Dataset,
            args: argparse.Namespace, prune_seconds: float) -> Row:
    sess = session(path, args.ort_threads)
    img, pix = aurocs(sess, test)
    return Row(
        dataset=dataset,
        model=name,
        ratio=ratio,
        precision=precision,
        params=graph.parameter_count(),
        student_params=graph.parameter_count("student"),
        macs=conv_macs(graph),
        student_macs=conv_macs(graph, "student"),
        artifact_mb=path.stat().st_size / 2**20,
        latency_ms=float("nan"),
        latency_min_ms=float("nan"),
        image_auroc=img,
        pixel_auroc=pix,
        prune_seconds=prune_seconds,
        artifact=str(path),
    )


def trained_model(dataset: str, name: str, train: Dataset, val: Dataset, args: argparse.Namespace) -> Any:
    """Train the unified model, or load it from the checkpoint cache when an identical run finished."""
    folder = Path(args.checkpoint_dir or Path(args.work_dir) / "checkpoints")
    folder.mkdir(parents=True, exist_ok=True)
    limit = args.max_train_per_category
    path = folder / f"{dataset}-{name}-{args.image_size}px-{args.epochs}ep-{limit}pc.pt"
    if path.is_file() and read_checkpoint(path).get("training", {}).get("complete"):
        model, _ = load_checkpoint(path, expect_model=name)
        print(f"[{dataset}] {name}: loaded {path}", flush=True)
        return model.eval()
    torch.manual_seed(0)
    model = build_model(name, image_size=args.image_size)
    config = TrainConfig(epochs=args.epochs, progress=False, checkpoint=str(path), resume=path.is_file())
    t0 = time.perf_counter()
    result = train_model(model, train, config, val_set=val)
    print(f"[{dataset}] {name}: trained {args.epochs} epochs in {time.perf_counter() - t0:.0f}s, "
          f"last loss {result.losses[-1]:.4f}", flush=True)
    return model.eval()


def save_rows(args: argparse.Namespace, rows: list[Row], roots: list[str]) -> None:
    """Write every row measured so far (a killed run resumes from here with --resume)."""
    path = Path(args.work_dir) / "rows.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": [asdict(r) for r in rows], "roots": roots}, indent=1), encoding="utf-8")


def run_dataset(dataset: str, args: argparse.Namespace, rows: list[Row], roots: list[str]) -> str:
    train, val, test, root = load_splits(dataset, args)
    print(f"[{dataset}] {root}: {len(train)} train, {len(val)} val, {len(test)} test at {args.image_size} px",
          flush=True)
    train_images = stack_images(train)
    calib = train_images[torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))]
    calib = calib[: args.calib_images]
    precisions = {scope: PRECISIONS[scope] for scope in args.scopes.split(",")}
    for name in args.models.split(","):
        model = trained_model(dataset, name, train, val, args)
        ratios = [float(r) for r in args.ratios.split(",")]
        for ratio in ([-1.0] if args.baseline else []) + ratios:
            done = {r.precision for r in rows if (r.dataset, r.model, r.ratio) == (dataset, name, ratio)}
            if done >= {"FP32", *precisions.values()}:
                continue  # measured before this run was resumed
            work = Path(args.work_dir) / dataset / name / f"r{ratio:g}"
            work.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            if ratio < 0:  # the model as trained
                graph, notes = capture(copy.deepcopy(model).eval(), calib[:1]), {}
            else:
                options = {"ratio": ratio, "round_to": args.round_to, "finetune_epochs": args.finetune_epochs}
                pruned = optimize(model, "cpu", 32, calib=calib, train=train_images,
                                  passes=[("prune", options)], progress=False)
                graph, notes = pruned.graph, pruned.passes_report.records[0].notes
            seconds = time.perf_counter() - t0
            fp32 = export_onnx(graph, work / "fp32.onnx")
            rows.append(measure(dataset, name, ratio, "FP32", graph, fp32.path, test, args, seconds))
            for scope, precision in precisions.items():
                int8_path, int8_graph = int8_artifact(graph.model, calib, work / f"int8-{scope}", scope)
                rows.append(measure(dataset, name, ratio, precision, int8_graph, int8_path, test, args, seconds))
            for r in rows[-1 - len(precisions):]:
                print(f"[{dataset}] {name} ratio {ratio:g} {r.precision}: {r.student_params / 1e6:.3f}M "
                      f"student params, {r.artifact_mb:.2f} MB, image AUROC {r.image_auroc:.3f}, pixel AUROC "
                      f"{r.pixel_auroc:.3f} (channels kept {notes.get('channels_kept')})", flush=True)
            save_rows(args, rows, [*dict.fromkeys([*roots, root])])
    return root


def _ratio(ratio: float) -> str:
    return "none" if ratio < 0 else f"{ratio:g}"


def table(rows: list[Row]) -> str:
    head = ("| data | model | prune ratio | precision | params (M) | student params (M) | MACs (G) | "
            "student MACs (G) | ONNX (MB) | ORT latency median / min (ms) | image AUROC | pixel AUROC |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {r.model} | {_ratio(r.ratio)} | {r.precision} | {r.params / 1e6:.3f} | "
            f"{r.student_params / 1e6:.3f} | {r.macs / 1e9:.3f} | {r.student_macs / 1e9:.3f} | "
            f"{r.artifact_mb:.2f} | {r.latency_ms:.1f} / {r.latency_min_ms:.1f} | {r.image_auroc:.3f} | "
            f"{r.pixel_auroc:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    """Image and pixel AUROC against latency, one line per data set x model x precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r.dataset for r in rows))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4.2 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        for j, metric in enumerate(("image_auroc", "pixel_auroc")):
            ax = axes[i][j]
            for model in dict.fromkeys(r.model for r in rows):
                for precision, style in (("FP32", "o-"), ("INT8", "s--"), ("INT8-all", "^:")):
                    sel = [r for r in rows if (r.dataset, r.model, r.precision) == (ds, model, precision)]
                    if not sel:
                        continue
                    xs, ys = [r.latency_ms for r in sel], [getattr(r, metric) for r in sel]
                    ax.plot(xs, ys, style, label=f"{model} {precision}")
                    for r, x, y in zip(sel, xs, ys, strict=True):
                        ax.annotate(_ratio(r.ratio), (x, y), textcoords="offset points", xytext=(4, 4),
                                    fontsize=7)
            ax.set_title(f"{ds}: {metric.replace('_', ' ')} vs latency (labels: prune ratio)")
            ax.set_xlabel("ONNX Runtime latency, batch 1 (ms)")
            ax.set_ylabel(metric.replace("_", " "))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bar_lines(rows: list[Row], ratio: float = 0.5) -> list[str]:
    """The issue's bar per data set and model: INT8 at ``ratio`` vs unpruned INT8 (median latency) and
    vs unpruned FP32 (image / pixel AUROC, points)."""
    out = []
    for ds, model in dict.fromkeys((r.dataset, r.model) for r in rows):
        sel = {(r.ratio, r.precision): r for r in rows if (r.dataset, r.model) == (ds, model)}
        base = sel.get((-1.0, "FP32")) or sel.get((0.0, "FP32"))
        for precision in ("INT8", "INT8-all"):
            pruned, unpruned = sel.get((ratio, precision)), sel.get((-1.0, precision)) or sel.get((0.0, precision))
            if pruned is None or unpruned is None or base is None:
                continue
            ref = sel.get((-1.0, "INT8")) or sel.get((0.0, "INT8")) or unpruned
            out.append(
                f"- {ds} {model} ratio {ratio:g} {precision}: {unpruned.latency_ms / pruned.latency_ms:.2f}x vs "
                f"unpruned {precision}, {ref.latency_ms / pruned.latency_ms:.2f}x vs unpruned INT8 (student); "
                f"image AUROC {100 * (pruned.image_auroc - base.image_auroc):+.1f}, pixel AUROC "
                f"{100 * (pruned.pixel_auroc - base.pixel_auroc):+.1f} points vs unpruned FP32"
            )
    return out


def write_results(args: argparse.Namespace, rows: list[Row], roots: list[str], run: rw.RunInfo,
                  seconds: float) -> None:
    """Print the section and replace this data-set list's part of the pruning section."""
    plot_rel = os.path.relpath(args.plot, Path(args.results).parent)
    text = [
        f"- data: {', '.join(roots)}; unified training on all categories, {args.epochs} epochs, "
        f"{args.image_size} px, at most {args.max_train_per_category} train / {args.max_test_per_category} "
        f"test images per category",
        f"- prune: Taylor importance on the distillation loss, round_to {args.round_to}, "
        f"{args.finetune_epochs} fine-tune epochs; INT8 = cpu-int8 (percentile 99.99, student quantized) on the "
        f"pruned model, INT8-all = the same with the teacher quantized too; ratio 0 only cuts the dead "
        f"backbone blocks (exact); ratio 'none' = no prune pass at all",
        f"- latency: ONNX Runtime CPU, batch 1, {args.ort_threads} intra-op threads, median and minimum of "
        f"{args.latency_runs} runs per artifact, taken in {args.latency_rounds} rounds over all artifacts in "
        f"shuffled order; AUROC: mean over categories, from the ONNX artifact's outputs",
        "- MACs count the convs that run in torch; ONNX export drops dead nodes, so ratio 'none' and 0 "
        "give the same ONNX artifact",
        f"- wall time: {seconds / 60:.1f} min",
        *bar_lines(rows),
        "",
        table(rows),
        f"\n![accuracy vs latency]({plot_rel})",
    ]
    rw.publish(args, "pruning", "Pruning: accuracy vs latency", "benchmarks/pruning.py", "\n".join(text), run,
               part=[*dict.fromkeys(r.dataset for r in rows)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    threads = f"torch {args.torch_threads or torch.get_num_threads()}, ONNX Runtime {args.ort_threads}"
    run = rw.RunInfo.start(__file__, threads, argv)
    t0 = time.perf_counter()
    rows_file = Path(args.work_dir) / "rows.json"
    rows: list[Row] = []
    roots = []
    if (args.remeasure or args.resume) and rows_file.is_file():
        saved = json.loads(rows_file.read_text(encoding="utf-8"))
        rows = [Row(**r) for r in saved["rows"]]
        roots = list(saved["roots"])
    if not args.remeasure:
        for dataset in args.datasets.split(","):
            try:
                root = run_dataset(dataset, args, rows, roots)
                roots = [*dict.fromkeys([*roots, root])]
            except FileNotFoundError as err:
                print(f"[{dataset}] skipped: {err}", flush=True)
    if not rows:
        print("nothing measured")
        return 1
    print(f"measuring latency of {len(rows)} artifacts in {args.latency_rounds} rounds", flush=True)
    measure_latencies(rows, args)
    save_rows(args, rows, roots)
    plot(rows, Path(args.plot))
    write_results(args, rows, roots, run, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
