"""Evaluate a trained checkpoint on a data set's test split: per-category table and mean."""

from __future__ import annotations

import os
from typing import Any

from anomopt.checkpoint import load_checkpoint
from anomopt.inference import predict_dataset, torch_scorer
from anomopt.metrics import evaluate_predictions


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    categories: str | list[str] = "all",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Image AUROC, pixel AUROC, AUPRO and F1-max per category and their mean."""
    from anomopt.data import load_mvtec

    model, payload = load_checkpoint(checkpoint)
    if categories == "all" and payload.get("categories"):
        categories = list(payload["categories"])
    test = load_mvtec(data_root, categories, split="test", image_size=model.config.image_size)
    preds = predict_dataset(
        torch_scorer(model), test, batch_size=batch_size, progress=progress, desc="evaluate"
    )
    return evaluate_predictions(preds.categories, preds.labels, preds.scores, preds.masks, preds.maps)
