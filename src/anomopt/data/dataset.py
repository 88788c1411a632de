"""PyTorch data sets of anomaly-detection samples (MVTec layout or plain folders).

Items are dicts that batch with torch's default collate::

    image:    FloatTensor [3, H, W] in [0, 1]  (not ImageNet-normalized: models normalize inside)
    mask:     FloatTensor [1, H, W] in {0, 1}  (zeros for good images and images without a mask)
    has_mask: bool (False for an anomalous image whose defect type has no mask: image-level label only)
    label:    int (0 good, 1 anomalous)
    category: str
    path:     str
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data import default_collate as collate

from anomopt.data.images import (
    Size,
    _target_hw,
    check_mask_matches_image,
    read_image_uint8,
    read_mask_with_size,
)
from anomopt.data.layout import CategorySplit, Sample, scan_folder, scan_mvtec, split_validation
from anomopt.errors import ConfigError, DataError

__all__ = [
    "SPLITS",
    "AnomalyDataset",
    "collate",
    "dataset_categories",
    "load_folder",
    "load_mvtec",
    "load_validation",
    "split_record",
]

#: Split names accepted by :func:`load_mvtec` and :func:`load_folder`.
SPLITS = ("train", "val", "test")


class AnomalyDataset(Dataset):
    """Images (and masks) of ``samples`` resized to ``image_size``; see the module doc for the item dict.

    With ``cache=True`` each decoded, resized image is kept in memory as uint8 after its first read (the
    training loop re-reads every epoch). Images are always rounded to 8 bit, so cached and uncached items
    are identical. With ``DataLoader(num_workers>0)`` each worker fills its own cache: use
    ``persistent_workers=True`` to keep it across epochs.
    """

    def __init__(self, samples: Sequence[Sample], image_size: Size = 256, cache: bool = True) -> None:
        self.samples: list[Sample] = list(samples)
        hw = _target_hw(image_size)
        if hw is None:
            raise ConfigError(
                "AnomalyDataset needs an image_size (all images in a batch must share one size)"
            )
        self.image_size: tuple[int, int] = hw
        self.cache = bool(cache)
        self._images: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def categories(self) -> list[str]:
        """Sorted unique category names."""
        return sorted({s.category for s in self.samples})

    @property
    def labels(self) -> np.ndarray:
        """Labels (0 good, 1 anomalous) as an int64 array, in item order."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        s = self.samples[index]
        if index in self._images:
            return self._images[index], self._masks.get(index)
        image, image_wh = read_image_uint8(s.path, self.image_size)
        mask = None
        if s.mask_path is not None and s.label != 0:
            mask, mask_wh = read_mask_with_size(s.mask_path, self.image_size)
            if mask_wh != image_wh:
                raise DataError(
                    f"mask {s.mask_path} is {mask_wh[0]}x{mask_wh[1]} but image {s.path} is "
                    f"{image_wh[0]}x{image_wh[1]} (width x height); a mask must have exactly its image's size"
                )
        if self.cache:
            self._images[index] = image
            if mask is not None:
                self._masks[index] = mask
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self.samples)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        s = self.samples[index]
        image, mask = self._load(index)
        h, w = self.image_size
        img_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
        if mask is None:
            mask_t = torch.zeros(1, h, w, dtype=torch.float32)
        else:
            mask_t = torch.from_numpy(mask.astype(np.float32))[None]
        return {
            "image": img_t,
            "mask": mask_t,
            "has_mask": bool(s.label == 0 or s.mask_path is not None),
            "label": int(s.label),
            "category": s.category,
            "path": str(s.path),
        }

    def __repr__(self) -> str:
        n_anom = int(self.labels.sum()) if self.samples else 0
        return (
            f"AnomalyDataset({len(self)} images, {n_anom} anomalous, categories={self.categories}, "
            f"image_size={self.image_size})"
        )


def dataset_categories(dataset: Dataset) -> list[str]:
    """Sorted category names of an :class:`AnomalyDataset`, also through ``Subset`` / ``ConcatDataset``
    wrappers (no image is read); ``[]`` when they cannot be told without loading items."""
    from torch.utils.data import ConcatDataset, Subset

    if isinstance(dataset, AnomalyDataset):
        return dataset.categories
    if isinstance(dataset, Subset):
        indices = [int(i) for i in dataset.indices]
        inner = dataset.dataset
        while isinstance(inner, Subset):  # compose nested subsets' indices
            indices = [int(inner.indices[i]) for i in indices]
            inner = inner.dataset
        if isinstance(inner, AnomalyDataset):
            return sorted({inner.samples[i].category for i in indices})
        return []
    if isinstance(dataset, ConcatDataset):
        parts = [dataset_categories(d) for d in dataset.datasets]
        return sorted({c for part in parts for c in part}) if all(parts) else []
    return sorted(getattr(dataset, "categories", []) or [])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _select(
    splits: Sequence[CategorySplit], split: str, val_fraction: float, seed: int, where: str
) -> list[Sample]:
    if split == "test":
        samples = [s for cs in splits for s in cs.test]
        for s in samples:
            if s.mask_path is not None:
                check_mask_matches_image(s.mask_path, s.path)
    else:
        train = [s for cs in splits for s in cs.train]
        kept, val = split_validation(train, fraction=val_fraction, seed=seed)
        samples = kept if split == "train" else val
    if not samples:
        extra = " (val_fraction is 0: no validation images held out)" if split == "val" else ""
        raise DataError(f"{where}: the '{split}' split is empty{extra}")
    return samples


def load_mvtec(
    root: str | os.PathLike[str],
    categories: str | Sequence[str] = "all",
    split: str = "train",
    image_size: Size = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache: bool = True,
) -> AnomalyDataset:
    """One split of an MVTec-layout data set, pooled over ``categories`` (unified; one category = one-class).

    ``train`` is ``train/good`` minus the seeded validation hold-out, ``val`` is that hold-out (normal images
    only, never test images), ``test`` is every ``test/`` image. Test masks are checked to have their image's
    size here (header reads only); any problem raises :class:`DataError` naming the file.
    """
    _check_split(split)
    splits = scan_mvtec(root, categories, require_test=(split == "test"))
    return AnomalyDataset(
        _select(list(splits.values()), split, val_fraction, seed, str(root)), image_size, cache
    )


def load_folder(
    normal_dir: str | os.PathLike[str],
    anomalous_dir: str | os.PathLike[str] | None = None,
    mask_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    image_size: Size = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache: bool = True,
    category: str = "default",
    good_test_dir: str | os.PathLike[str] | None = None,
) -> AnomalyDataset:
    """Like :func:`load_mvtec` for plain folders (see :func:`anomopt.data.layout.scan_folder`).

    ``train``/``val`` split the images of ``normal_dir``; ``test`` is ``anomalous_dir`` plus the optional
    ``good_test_dir`` of normal test images.
    """
    _check_split(split)
    cs = scan_folder(normal_dir, anomalous_dir, mask_dir, category=category, good_test_dir=good_test_dir)
    where = str(anomalous_dir if split == "test" and anomalous_dir is not None else normal_dir)
    if split == "test" and not cs.test:
        raise DataError(f"{normal_dir}: no test images; pass anomalous_dir (and optionally good_test_dir)")
    return AnomalyDataset(_select([cs], split, val_fraction, seed, where), image_size, cache)


def split_record(
    root: str | os.PathLike[str] | None,
    categories: Sequence[str],
    val_fraction: float | None,
    seed: int | None,
    val_set: AnomalyDataset,
) -> dict[str, Any]:
    """What a checkpoint records of its validation split, so thresholds can be re-fitted on exactly the
    same normal images later: the data root, categories, ``val_fraction``, ``seed`` and the validation
    files per category (relative to ``root`` where they lie inside it)."""
    base = Path(root).resolve() if root is not None else None
    files: dict[str, list[str]] = {}
    for s in val_set.samples:
        p = Path(s.path).resolve()
        rel = str(p.relative_to(base)) if base is not None and p.is_relative_to(base) else str(p)
        files.setdefault(s.category, []).append(rel)
    return {
        "data_root": str(base) if base is not None else None,
        "categories": sorted(categories),
        "val_fraction": None if val_fraction is None else float(val_fraction),
        "seed": None if seed is None else int(seed),
        "val_files": files,
    }


def load_validation(
    record: dict[str, Any] | None,
    image_size: Size,
    data_root: str | os.PathLike[str] | None = None,
    categories: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[AnomalyDataset, str]:
    """The held-out normal validation images a checkpoint was thresholded on; returns ``(dataset, how)``.

    With a ``record`` (:func:`split_record`, stored by ``anomopt train``) the recorded files are loaded,
    under ``data_root`` when given (the data set moved) or else the recorded root. Without one (checkpoints
    written before anomopt recorded splits) the split is re-derived from ``data_root`` with the seeded
    :func:`anomopt.data.layout.split_validation` rule, ``val_fraction`` and ``seed`` (``anomopt train``'s
    defaults are 0.1 and 0). Never test images.
    """
    if record and record.get("val_files"):
        root = Path(data_root) if data_root is not None else (
            Path(record["data_root"]) if record.get("data_root") else None
        )
        cats = sorted(categories) if categories else sorted(record["val_files"])
        missing_cats = [c for c in cats if c not in record["val_files"]]
        if missing_cats:
            raise DataError(
                f"the checkpoint's validation split has no category {', '.join(missing_cats)}; "
                f"recorded: {', '.join(sorted(record['val_files']))}"
            )
        samples = []
        for cat in cats:
            for rel in record["val_files"][cat]:
                p = Path(rel)
                if not p.is_absolute():
                    if root is None:
                        raise DataError(f"{rel}: validation file recorded relative to an unknown root; pass --data")
                    p = root / p
                if not p.is_file():
                    raise DataError(
                        f"{p}: validation image recorded in the checkpoint is missing; pass --data with the "
                        "data set the model was trained on"
                    )
                samples.append(Sample(p, cat, 0, "good", None))
        how = (
            f"recorded split ({len(samples)} images, val_fraction {record.get('val_fraction')}, "
            f"seed {record.get('seed')})"
        )
        return AnomalyDataset(samples, image_size), how
    if data_root is None:
        raise DataError(
            "no validation split: the checkpoint records none (trained before anomopt recorded splits); "
            "pass the training data root (--data) to re-derive it"
        )
    cats = list(categories) if categories else "all"
    val = load_mvtec(data_root, cats, split="val", image_size=image_size, val_fraction=val_fraction, seed=seed)
    how = f"re-derived split of {data_root} ({len(val)} images, val_fraction {val_fraction}, seed {seed})"
    return val, how
