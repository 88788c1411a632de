"""Data loading for anomaly detection: image/mask decoding, MVTec and folder layouts, synthetic data.

Names are imported lazily, so ``anomopt.data.images`` and ``anomopt.data.layout`` (numpy + Pillow only)
serve the torch-free runtime without pulling in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "SPLITS": "dataset",
    "AnomalyDataset": "dataset",
    "collate": "dataset",
    "dataset_categories": "dataset",
    "load_folder": "dataset",
    "load_mvtec": "dataset",
    "IMAGE_EXTENSIONS": "images",
    "check_mask_matches_image": "images",
    "read_image": "images",
    "read_mask": "images",
    "CategorySplit": "layout",
    "Sample": "layout",
    "list_categories": "layout",
    "scan_folder": "layout",
    "scan_mvtec": "layout",
    "split_validation": "layout",
    "DEFECT_TYPES": "synthetic",
    "SYNTHETIC_CATEGORIES": "synthetic",
    "generate_synthetic": "synthetic",
    "render_sample": "synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"anomopt.data.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'anomopt.data' has no attribute {name!r}")


__all__ = [
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "SYNTHETIC_CATEGORIES",
    "AnomalyDataset",
    "CategorySplit",
    "Sample",
    "check_mask_matches_image",
    "collate",
    "dataset_categories",
    "generate_synthetic",
    "list_categories",
    "load_folder",
    "load_mvtec",
    "read_image",
    "read_mask",
    "render_sample",
    "scan_folder",
    "scan_mvtec",
    "split_validation",
]
