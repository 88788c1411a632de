"""Checkpoints that load without unpickling code (``torch.load(weights_only=True)``).

Each carries the model config, categories, per-category normalization, anomopt version, the training
state for ``--resume`` and the validation split (``data_split``: data root, categories, val_fraction, seed
and the validation files) that thresholds are re-fitted on after optimization. Writes are atomic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from anomopt import __version__
from anomopt.errors import CheckpointError
from anomopt.io import atomic_path
from anomopt.models import KDModel, model_from_config

FORMAT = "anomopt-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike[str],
    model: KDModel,
    categories: list[str],
    normalization: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    data_split: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically: a crash leaves the previous file intact. ``data_split`` is
    :func:`anomopt.data.dataset.split_record`'s record of the validation split."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "anomopt_version": __version__,
        "config": model.config.to_dict(),
        "categories": list(categories),
        "normalization": normalization or {},
        "state_dict": model.state_dict(),
        "training": training or {},
        "data_split": data_split or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a checkpoint's payload; errors name the file and the fault."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(
            f"{p}: not a readable anomopt checkpoint ({type(err).__name__}: {str(err)[:120]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an anomopt checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format version {payload.get('format_version')} written by anomopt "
            f"{payload.get('anomopt_version')}; this anomopt {__version__} reads version {FORMAT_VERSION}. "
            "Retrain, or load it with the anomopt version that wrote it."
        )
    return payload


def load_checkpoint(
    path: str | os.PathLike[str], expect_model: str | None = None
) -> tuple[KDModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns ``(model, payload)``."""
    payload = read_checkpoint(path)
    name = payload["config"].get("model")
    if expect_model is not None and name != expect_model:
        raise CheckpointError(f"{path}: checkpoint holds model {name!r}, not {expect_model!r}")
    model = model_from_config(payload["config"], pretrained=False)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]  # torch's message spans lines; the CLI prints one
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {detail}") from None
    model.eval()
    return model, payload


def require_thresholds(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint without per-category thresholds (an unfinished training run) with one line
    that says how to finish it."""
    if payload.get("normalization"):
        return
    state = payload.get("training") or {}
    done = f" (stopped after epoch {state['epoch']})" if state.get("epoch") else ""
    raise CheckpointError(
        f"{path}: checkpoint has no per-category thresholds: its training did not finish{done}; "
        "finish it with `anomopt train ... --resume` before optimizing or exporting"
    )
