"""Checkpoints that load without unpickling code (``torch.load(weights_only=True)``).

Each carries the model config, categories, per-category normalization, anomopt version, the training
state for ``--resume`` and the validation split (``data_split``: data root, categories, val_fraction, seed
and the validation files) that thresholds are re-fitted on after optimization. Writes are atomic.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from anomopt import __version__
from anomopt.errors import AnomoptError, CheckpointError
from anomopt.io import atomic_path
from anomopt.models import KDModel, ModelConfig, model_from_config

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
    _check_payload(p, payload)
    return payload


#: Largest image size a checkpoint may declare (a 4096 px model needs gigabytes per image already).
MAX_IMAGE_SIZE = 4096


def _check_payload(p: Path, payload: dict[str, Any]) -> None:
    """Field checks, so an edited or foreign payload fails here with one line instead of deep in torch."""
    config = payload.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{p}: field 'config' must be a mapping, not {type(config).__name__}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise CheckpointError(
            f"{p}: field 'config' has unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}"
        )
    if not isinstance(config.get("model"), str):
        raise CheckpointError(f"{p}: field 'config.model' must name a model, not {config.get('model')!r}")
    if "backbone" in config and not isinstance(config["backbone"], str):
        raise CheckpointError(f"{p}: field 'config.backbone' must be a string, not {config['backbone']!r}")
    size = config.get("image_size", 256)
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= MAX_IMAGE_SIZE:
        raise CheckpointError(
            f"{p}: field 'config.image_size' must be an integer from 16 to {MAX_IMAGE_SIZE}, not {size!r}"
        )
    blur = config.get("blur_sigma", 0.0)
    if not isinstance(blur, (int, float)) or isinstance(blur, bool) or not math.isfinite(blur) or blur < 0:
        raise CheckpointError(f"{p}: field 'config.blur_sigma' must be a finite number >= 0, not {blur!r}")
    if not isinstance(config.get("extra", {}), dict):
        raise CheckpointError(f"{p}: field 'config.extra' must be a mapping")
    cats = payload.get("categories", [])
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        raise CheckpointError(f"{p}: field 'categories' must be a list of names")
    for key in ("normalization", "training", "state_dict"):
        if not isinstance(payload.get(key, {}), dict):
            raise CheckpointError(f"{p}: field '{key}' must be a mapping")


def load_checkpoint(
    path: str | os.PathLike[str], expect_model: str | None = None
) -> tuple[KDModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns ``(model, payload)``."""
    payload = read_checkpoint(path)
    name = payload["config"].get("model")
    if expect_model is not None and name != expect_model:
        raise CheckpointError(f"{path}: checkpoint holds model {name!r}, not {expect_model!r}")
    try:
        model = model_from_config(payload["config"], pretrained=False)
    except AnomoptError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # an edited config that the model classes reject
        raise CheckpointError(
            f"{path}: field 'config' does not describe a buildable model ({type(err).__name__}: {str(err)[:120]})"
        ) from None
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
