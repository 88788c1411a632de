"""Data loading for anomaly detection: image/mask decoding, MVTec and folder layouts, synthetic data.

The names load lazily (PEP 562): ``anomopt.data.images`` and ``anomopt.data.layout`` need only numpy and
pillow, so importing one of them (or the package) does not pull in torch, which ``dataset`` needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "dataset": ("SPLITS", "AnomalyDataset", "collate", "dataset_categories", "load_folder", "load_mvtec"),
    "images": ("IMAGE_EXTENSIONS", "check_mask_matches_image", "read_image", "read_mask"),
    "layout": ("CategorySplit", "Sample", "list_categories", "scan_folder", "scan_mvtec", "split_validation"),
    "synthetic": ("DEFECT_TYPES", "SYNTHETIC_CATEGORIES", "generate_synthetic", "render_sample"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'anomopt.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"anomopt.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
