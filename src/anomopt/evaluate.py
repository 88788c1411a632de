"""Evaluate a trained checkpoint or a deployable artifact on a data set's test split.

Both report, per category and as a mean, image AUROC, pixel AUROC, AUPRO, F1-max and the decisions at
the threshold the model ships: false-reject rate on good images, escape rate on anomalous ones, F1 at
the threshold and the good images' median z-score. Pixel metrics are n/a where masks are missing.
An artifact folder is evaluated through the torch-free runtime (:class:`anomopt.runtime.Predictor`),
as it deploys; this path imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from anomopt.metrics import evaluate_predictions


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    categories: str | list[str] = "all",
    batch_size: int = 8,
    progress: bool = True,
    engine: str = "onnx",
    threads: int | None = None,
) -> dict[str, Any]:
    """Metrics of an FP32 checkpoint, decisions at the checkpoint's own thresholds.

    ``engine="onnx"`` (default) runs the checkpoint's FP32 ONNX export in ONNX Runtime (the graph ``lower``
    ships, equal to torch to float rounding and several times faster on a CPU); ``"torch"`` runs it in torch
    eager (inference mode). ``threads``: ONNX Runtime intra-op threads (default: torch's thread count).
    """
    import tempfile

    import torch

    from anomopt.checkpoint import load_checkpoint
    from anomopt.data import load_mvtec
    from anomopt.errors import ConfigError
    from anomopt.inference import onnx_scorer, predict_dataset, torch_scorer

    if engine not in ("onnx", "torch"):
        raise ConfigError(f"evaluate: engine must be 'onnx' or 'torch', not {engine!r}")
    model, payload = load_checkpoint(checkpoint)
    if categories == "all" and payload.get("categories"):
        categories = list(payload["categories"])
    test = load_mvtec(data_root, categories, split="test", image_size=model.config.image_size)
    with tempfile.TemporaryDirectory(prefix="anomopt-evaluate-") as tmp:
        if engine == "onnx":
            from anomopt.targets.onnx_export import export_onnx

            exp = export_onnx(model, Path(tmp) / "model_fp32.onnx")
            scorer = onnx_scorer(str(exp.path), threads=threads or torch.get_num_threads())
        else:
            scorer = torch_scorer(model)
        with torch.inference_mode():
            preds = predict_dataset(scorer, test, batch_size=batch_size, progress=progress, desc="evaluate")
    result = evaluate_predictions(
        preds.categories,
        preds.labels,
        preds.scores,
        preds.masks,
        preds.maps,
        normalization=payload.get("normalization") or None,
        has_mask=preds.has_mask,
    )
    if not payload.get("normalization"):
        result["warnings"].append("the checkpoint has no thresholds (unfinished training): decisions n/a")
    return result


def is_artifact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an artifact folder (holds meta.json) rather than a checkpoint file."""
    return Path(path).is_dir() and (Path(path) / "meta.json").is_file()


def evaluate_artifact(
    artifact: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    categories: str | list[str] = "all",
    batch_size: int = 8,
    threads: int | None = None,
    progress: bool = True,
    normalization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of a deployable artifact folder run by its runtime, decisions at the thresholds in its
    meta.json (every evaluated category must be one the artifact knows), or at ``normalization``'s when
    given (e.g. to measure what other statistics would have decided)."""
    from tqdm.auto import tqdm

    from anomopt.data.images import read_mask, read_model_input
    from anomopt.data.layout import scan_mvtec
    from anomopt.runtime import Predictor

    predictor = Predictor(artifact, threads=threads)
    if categories == "all" and predictor.categories:
        categories = list(predictor.categories)
    splits = scan_mvtec(data_root, categories, require_test=True)
    samples = [s for cs in splits.values() for s in cs.test]
    size = predictor.image_size
    scores, maps, masks = [], [], []
    for start in tqdm(range(0, len(samples), batch_size), desc="evaluate", disable=not progress, leave=False):
        chunk = samples[start : start + batch_size]
        s, m = predictor.run(np.stack([read_model_input(x.path, size) for x in chunk]))
        scores.append(s)
        maps.append(m)
        masks += [
            read_mask(x.mask_path, size) if x.mask_path is not None else np.zeros((size, size), np.float32)
            for x in chunk
        ]
    return evaluate_predictions(
        [s.category for s in samples],
        np.array([s.label for s in samples]),
        np.concatenate(scores),
        np.stack(masks) > 0.5,
        np.concatenate(maps),
        normalization=normalization if normalization is not None else predictor.normalization,
        has_mask=np.array([s.label == 0 or s.mask_path is not None for s in samples]),
    )
