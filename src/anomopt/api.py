"""``optimize()``: the one-call API. Resolves the target's shipped pipeline (or yours), runs it under the
pass manager with drift checks, optionally gates on AUROC, and returns an :class:`OptimizedModel`."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from anomopt.calibration_data import build_calibration_images, sample_images
from anomopt.checkpoint import load_checkpoint, require_thresholds
from anomopt.data.dataset import AnomalyDataset, load_validation
from anomopt.errors import ConfigError
from anomopt.graph import ModelGraph, capture
from anomopt.inference import predict_dataset
from anomopt.models import KDModel
from anomopt.normalization import ThresholdPolicy, fit_normalization, parse_policy
from anomopt.outputs import make_work_dir, signals_deferred, sweep_stale_work_dirs
from anomopt.passes import (
    AccuracyGate,
    Pass,
    PassContext,
    PassManager,
    Pipeline,
    PipelineReport,
    Tolerance,
    load_pipeline,
    pipeline_path,
    resolve_pass,
)
from anomopt.passes.gate import evaluate_graph
from anomopt.runtime.predictor import OnnxRunner
from anomopt.targets import TargetSpec, get_target
from anomopt.targets.lower import lower_graph, precision_name

HELD_IMAGES = 8


@dataclass
class OptimizedModel:
    """The result of :func:`optimize`."""

    graph: ModelGraph
    target: TargetSpec
    bits: int
    pipeline: Pipeline
    passes_report: PipelineReport
    categories: list[str]
    normalization: dict[str, Any]
    metrics_before: dict[str, Any] | None = None
    metrics_after: dict[str, Any] | None = None
    normalization_source: dict[str, Any] | None = None  # which model and images the thresholds came from
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> dict[str, Any]:
        """Per-pass drift, AUROC before and after, and sizes, as plain data."""
        out: dict[str, Any] = {
            "target": self.target.name,
            "bits": self.bits,
            "pipeline": self.pipeline.name,
            "pipeline_source": self.pipeline.source,
            **self.passes_report.to_dict(),
            "parameters": {r: self.graph.parameter_count(r) for r in ("teacher", "student", "head")},
            "quant": _record(self.graph.state.quant),
            "calibration": _record(self.graph.state.calibration),
            "kept_fp": list(self.graph.state.kept_fp),
            "artifact": self.graph.state.artifact,
            "thresholds": self.normalization_source,
        }
        if self.metrics_before is not None:
            out["metrics_before"] = self.metrics_before
        if self.metrics_after is not None:
            out["metrics_after"] = self.metrics_after
        out.update(self.extra)
        return out

    def summary(self) -> str:
        """Plain-text summary: per-pass drift beside its tolerance, AUROC before/after when measured, and
        the artifact's size."""
        from anomopt.summary import optimize_summary

        return optimize_summary(self)

    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(N,)`` and maps ``(N, H, W)`` from what this model deploys as."""
        return self.graph.predict(images)

    def save(
        self, directory: str | os.PathLike[str], overwrite: bool = False, inputs: tuple[str, ...] = ()
    ) -> Path:
        """Write the deployable artifact folder (``model.onnx`` + ``meta.json`` + ``report.json``).

        An existing ``directory`` is replaced whole only when it is empty or an earlier artifact, unless
        ``overwrite``; never when it holds one of ``inputs`` (e.g. the checkpoint) or the working folder.
        """
        from anomopt.targets.export import save_artifact

        return save_artifact(self, Path(directory), overwrite=overwrite, inputs=tuple(inputs))


def _record(value: Any) -> dict[str, Any] | None:
    return None if value is None else value.to_dict()


def resolve_pipeline(passes: Any, target: TargetSpec, bits: int, variant: str | None = None) -> Pipeline:
    """The pipeline :func:`optimize` runs: the target's shipped one for ``bits`` (and ``variant``) when
    ``passes`` is None, else ``passes`` (a ``.toml`` path, a :class:`Pipeline` or a list of passes)."""
    if passes is None:
        return load_pipeline(pipeline_path(target.name, bits, variant))
    if isinstance(passes, Pipeline):
        return passes
    if isinstance(passes, (str, os.PathLike)) and str(passes).endswith(".toml"):
        return load_pipeline(passes)
    if isinstance(passes, (list, tuple)):
        built: list[Pass] = []
        for item in passes:
            if isinstance(item, tuple):
                built.append(resolve_pass(item[0], **item[1]))
            else:
                built.append(resolve_pass(item))
        return Pipeline(name="custom", target=target.name, bits=bits, passes=built, source="<python>")
    raise ConfigError(f"passes must be None, a .toml path, a Pipeline or a list of passes, not {passes!r}")


def apply_pass_options(pipeline: Pipeline, pass_options: dict[str, dict[str, Any]] | None) -> None:
    """Override options of the named passes in ``pipeline``; an entry naming a pass that is not in it, an
    unknown option or a wrong type is a :class:`ConfigError`."""
    present = [p.name for p in pipeline.passes]
    for name, options in (pass_options or {}).items():
        if name not in present:
            raise ConfigError(
                f"pass_options names pass {name!r}, which is not in pipeline {pipeline.name!r} "
                f"(its passes: {', '.join(present)})"
            )
        if not isinstance(options, dict):
            raise ConfigError(f"pass_options[{name!r}] must be a dict of options, not {options!r}")
    for p in pipeline.passes:
        if p.name in (pass_options or {}):
            p.configure(**pass_options[p.name])


def _validation_set(
    val: Dataset | None,
    payload: dict[str, Any],
    data_root: str | os.PathLike[str] | None,
    categories: list[str],
    size: int,
) -> tuple[Dataset | None, str]:
    """The normal validation images to re-fit thresholds on, and how they were found."""
    if val is not None:
        return val, "given (val=...)"
    record = payload.get("data_split") or {}
    if not record.get("val_files") and data_root is None:
        return None, "none"
    return load_validation(record or None, size, data_root=data_root, categories=categories or None)


def _without_validation(pool: Any, val_set: Dataset | None, reporter: Any, what: str) -> Any:
    """``pool`` minus the validation images the thresholds are fitted on (they must stay unseen).

    A calibration or fine-tuning pool loaded with another ``val_fraction`` or seed than training used can
    hold validation images; QAT or pruning would then fit the student to them and the thresholds re-fitted
    on them would sit too low. They are left out, and the log says how many.
    """
    if not isinstance(pool, AnomalyDataset) or not isinstance(val_set, AnomalyDataset):
        return pool
    held_out = {Path(s.path).resolve() for s in val_set.samples}
    kept = [s for s in pool.samples if Path(s.path).resolve() not in held_out]
    if len(kept) == len(pool.samples):
        return pool
    if not kept:
        raise ConfigError(f"{what}: every image is a validation image of the checkpoint; pass other normal images")
    reporter.log(
        f"optimize: {len(pool.samples) - len(kept)} validation images left out of the {what} "
        "(the thresholds are fitted on them)"
    )
    return AnomalyDataset(kept, pool.image_size, pool.cache)


def _ensure_lowered(graph: ModelGraph, spec: TargetSpec, bits: int, ctx: PassContext) -> None:
    """Lower the graph now when the pipeline did not, so thresholds are fitted on the deployed model."""
    record = graph.state.artifact
    if (
        isinstance(record, dict)
        and record.get("target") == spec.name
        and record.get("precision") == precision_name(bits)
        and Path(record.get("model", "")).is_file()
    ):
        return
    out = (
        Path(ctx.workdir) / f"artifact-{spec.name}-{precision_name(bits)}"
        if ctx.workdir
        else make_work_dir(f"anomopt-{spec.name}-{precision_name(bits)}-")
    )
    record = lower_graph(graph, spec, bits, out, ctx.calib_images)
    record["notes"]["lowered_by"] = "optimize() before re-fitting thresholds (the pipeline had no 'lower' pass)"
    graph.state.artifact = record
    graph.runner = OnnxRunner(record["model"], description=record["runner"])


def _policy_of(normalization: dict[str, Any]) -> str | None:
    specs = {str(e.get("threshold_policy", "z:3")) for e in normalization.values() if isinstance(e, dict)}
    return specs.pop() if len(specs) == 1 else None


def refit_thresholds(
    graph: ModelGraph,
    val: Dataset,
    policy: str | ThresholdPolicy | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-category statistics and thresholds of what ``graph`` deploys as, on normal images ``val``;
    returns ``(normalization, source)`` where ``source`` says which model produced the scores."""
    pol = parse_policy(policy)
    runner = getattr(graph, "runner", None)
    what = getattr(runner, "description", None) or "torch graph"
    record = graph.state.artifact or {}
    model = f"{record.get('target', '?')} {record.get('precision', '?')} artifact: {what}" if record else what
    preds = predict_dataset(graph.predict, val, batch_size=8, progress=progress, desc="re-fit thresholds")
    if np.any(preds.labels != 0):
        raise ConfigError("threshold re-fit: the validation set holds anomalous images; use normal images only")
    norm = fit_normalization(preds.categories, preds.scores, preds.maps, policy=pol, source=model)
    return norm, {"model": model, "threshold_policy": pol.spec, "n_val": int(len(preds.scores))}


def _input_model(model: KDModel | str | os.PathLike[str]) -> tuple[KDModel, dict[str, Any]]:
    """The model to optimize and its checkpoint payload (empty for a model object)."""
    payload: dict[str, Any] = {}
    if isinstance(model, (str, os.PathLike)):
        ckpt_path = model
        model, payload = load_checkpoint(model)
        require_thresholds(payload, ckpt_path)
    if not isinstance(model, KDModel):
        raise ConfigError(
            f"optimize() takes an anomopt KD model or a checkpoint path, not {type(model).__name__}"
        )
    return model, payload


def _image_pools(
    work: KDModel,
    calib: Dataset | torch.Tensor | None,
    train: Dataset | torch.Tensor | None,
    held: torch.Tensor | None,
    calib_source: str,
    calib_samples: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The held drift batch (the last images of ``calib``, kept out of calibration, or noise), the
    calibration images and the fine-tuning images."""
    size, backbone = work.config.image_size, work.config.backbone
    torch.manual_seed(seed)
    n_calib_pool = len(calib) if calib is not None else 0  # type: ignore[arg-type]
    reserve = HELD_IMAGES if n_calib_pool > HELD_IMAGES * 2 else 0
    if held is None:
        if isinstance(calib, torch.Tensor):
            held = calib[-reserve:]
        elif calib is not None:
            first = n_calib_pool - max(reserve, min(HELD_IMAGES, n_calib_pool))
            held = torch.stack([calib[i]["image"] for i in range(first, n_calib_pool)])
        else:
            held = build_calibration_images("noise", None, HELD_IMAGES, size, backbone, seed + 1)
    calib_images = build_calibration_images(calib_source, calib, calib_samples, size, backbone, seed, reserve)
    train_images = None
    if train is not None:
        train_images = sample_images(train, len(train), seed)  # type: ignore[arg-type]
    elif calib is not None:
        train_images = sample_images(calib, n_calib_pool, seed, reserve)
    return held, calib_images, train_images


def _tolerance(tolerance: Tolerance | dict[str, float] | None, pipeline: Pipeline, eval: Dataset | None) -> Tolerance:  # noqa: A002
    """The pipeline's tolerance with the given keys replaced (a :class:`Tolerance` replaces it whole);
    AUROC limits need labelled data."""
    tol = tolerance if isinstance(tolerance, Tolerance) else pipeline.tolerance.merged(dict(tolerance or {}))
    if eval is None:
        limits = [k for k in ("max_image_auroc_drop", "max_pixel_auroc_drop") if np.isfinite(getattr(tol, k))]
        if limits:
            raise ConfigError(
                f"tolerance {', '.join(limits)} needs labelled test data to measure AUROC: pass eval=... "
                "(CLI: --evaluate) or drop the limit"
            )
    return tol


def _passes_to_run(pipeline: Pipeline, tol: Tolerance, eval: Dataset | None) -> list[Pass]:  # noqa: A002
    """The pipeline's passes, plus an accuracy gate at the end when AUROC limits are set and none is there."""
    run_passes = list(pipeline.passes)
    wants_gate = np.isfinite(tol.max_image_auroc_drop) or np.isfinite(tol.max_pixel_auroc_drop)
    if eval is not None and wants_gate and not any(isinstance(p, AccuracyGate) for p in run_passes):
        run_passes.append(AccuracyGate())
    return run_passes


@contextlib.contextmanager
def _lowering_folder(ctx: PassContext, spec: TargetSpec, bits: int) -> Iterator[Path | None]:
    """Without a ``workdir``, lowering's files go to a marked temp folder this call owns (yielded); it is
    removed when the block fails."""
    owned = None
    try:
        with signals_deferred():  # a signal cannot land between creating the folder and recording it
            if ctx.workdir is None:
                owned = make_work_dir(f"anomopt-{spec.name}-{bits}bit-")
                ctx.workdir = str(owned)
        yield owned
    except BaseException:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise


def _keep_with_runner(owned: Path | None, graph: ModelGraph) -> None:
    """An owned lowering folder lives as long as the runner that reads its files (else it goes now)."""
    if owned is None:
        return
    if isinstance(graph.state.artifact, dict) and graph.runner is not None:
        weakref.finalize(graph.runner, shutil.rmtree, owned, True)
    else:
        shutil.rmtree(owned, ignore_errors=True)


def _unfitted_source(normalization: dict[str, Any]) -> dict[str, Any]:
    """The threshold source when no validation images re-fit them (with a warning when there are some)."""
    if normalization:
        warnings.warn(
            "optimize(): no validation images (val=..., a checkpoint split or data_root): the thresholds "
            "were not re-fitted on the optimized model and may not match its scores",
            UserWarning,
            stacklevel=3,
        )
    return {"model": "as given (not re-fitted: no validation images)", "threshold_policy": _policy_of(normalization)}


def optimize(
    model: KDModel | str | os.PathLike[str],
    target: str = "cpu",
    bits: int = 8,
    calib: Dataset | torch.Tensor | None = None,
    eval: Dataset | None = None,  # noqa: A002 - the documented keyword
    tolerance: Tolerance | dict[str, float] | None = None,
    passes: Any = None,
    *,
    calib_source: str = "train",
    calib_samples: int = 64,
    variant: str | None = None,
    pass_options: dict[str, dict[str, Any]] | None = None,
    train: Dataset | torch.Tensor | None = None,
    held: torch.Tensor | None = None,
    categories: list[str] | None = None,
    normalization: dict[str, Any] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    val: Dataset | None = None,
    data_root: str | os.PathLike[str] | None = None,
    threshold_policy: str | ThresholdPolicy | None = None,
) -> OptimizedModel:
    """Optimize a trained unified KD model for ``target`` at ``bits``.

    ``calib`` holds normal training images (never test images); ``calib_source`` picks training images,
    random-normal ``noise`` or ``mixed``. ``eval`` (labelled) measures AUROC before and after and, with
    ``tolerance`` AUROC limits, gates the result. ``passes`` replaces the shipped pipeline: a ``.toml``
    path, a :class:`Pipeline`, or a list of passes / names / ``"module:Class"`` strings / ``(name, options)``.
    ``pass_options`` overrides options of named passes in the pipeline, e.g. ``{"calibrate": {"method": "max"}}``.
    ``progress`` prints a line per pass step on stderr (bars for calibration / QAT) and the final summary.

    Thresholds belong to the model that ships: after the pipeline, the per-category statistics and
    thresholds are re-fitted on the lowered artifact as its runtime runs it (ONNX Runtime; for TensorRT
    targets the QDQ ONNX as stand-in), over the held-out normal validation images training used: ``val``,
    else the split the checkpoint records (under ``data_root`` when given), else, for checkpoints that
    record none, the split re-derived from ``data_root``. ``threshold_policy`` (``"z:3"``, the default,
    or ``"fpr:0.01"``...) picks the image threshold. Without any validation images the given/checkpoint
    statistics are kept and a warning says so. A checkpoint without thresholds (unfinished training)
    raises :class:`CheckpointError`.
    """
    from anomopt.progress import Progress

    reporter = Progress(progress)
    spec = get_target(target)
    spec.check_bits(bits)
    policy = parse_policy(threshold_policy) if threshold_policy is not None else None
    sweep_stale_work_dirs()  # temp folders of earlier runs that were killed
    model, payload = _input_model(model)
    categories = categories or payload.get("categories") or []
    normalization = normalization or payload.get("normalization") or {}
    pipeline = resolve_pipeline(passes, spec, bits, variant)
    apply_pass_options(pipeline, pass_options)

    work = copy.deepcopy(model).eval()
    size = work.config.image_size
    val_set, val_how = _validation_set(val, payload, data_root, categories, size)  # fail fast, before passes
    calib = _without_validation(calib, val_set, reporter, "calibration images")
    train = _without_validation(train, val_set, reporter, "fine-tuning images")
    if val_set is None and policy is not None:
        raise ConfigError(
            f"threshold policy {policy.spec} needs normal validation images: pass val=... or data_root=..."
        )
    if calib is None and bits == 32:
        calib_source = "noise"  # FP32 needs no calibration: noise only feeds lowering's checks
    held, calib_images, train_images = _image_pools(work, calib, train, held, calib_source, calib_samples, seed)
    tol = _tolerance(tolerance, pipeline, eval)
    ctx = PassContext(
        target=spec,
        bits=bits,
        calib_images=calib_images,
        train_images=train_images,
        held_images=held,
        eval_set=eval,
        tolerance=tol,
        calib_source=calib_source,
        seed=seed,
        progress=progress,
        workdir=str(workdir) if workdir else None,
        reporter=reporter,
    )
    reporter.log(
        f"optimize: {pipeline.name} ({len(pipeline.passes)} passes) for {spec.name} at {bits} bits, "
        f"{len(calib_images)} calibration images ({calib_source}), drift on {len(held)} held images"
    )
    graph = capture(work, held[:1])
    metrics_before = None
    if eval is not None:
        reporter.log(f"optimize: measuring the input model's AUROC on {len(eval)} labelled images")  # type: ignore[arg-type]
        metrics_before = evaluate_graph(graph, eval, normalization=normalization or None, progress=progress)
    ctx.reference_metrics = metrics_before
    with _lowering_folder(ctx, spec, bits) as owned:
        graph, report = PassManager(_passes_to_run(pipeline, tol, eval)).run(graph, ctx)
        if val_set is not None:
            _ensure_lowered(graph, spec, bits, ctx)
            reporter.log(f"optimize: re-fitting thresholds on the lowered model, {len(val_set)} validation images")
            normalization, normalization_source = refit_thresholds(graph, val_set, policy, progress)
            normalization_source["validation"] = val_how
        else:
            normalization_source = _unfitted_source(normalization)
        categories = list(categories) or sorted(normalization)
        metrics_after = graph.state.metrics_after
        if eval is not None and (normalization or metrics_after is None):
            reporter.log("optimize: measuring the optimized model's AUROC")
            metrics_after = evaluate_graph(graph, eval, normalization=normalization or None, progress=progress)
    _keep_with_runner(owned, graph)
    result = OptimizedModel(
        graph=graph, target=spec, bits=bits, pipeline=pipeline, passes_report=report, categories=list(categories),
        normalization=dict(normalization), metrics_before=metrics_before, metrics_after=metrics_after,
        normalization_source=normalization_source,
    )
    reporter.log(f"optimize: done in {reporter.elapsed():.1f}s\n{result.summary()}")
    return result
