"""Find the images of a data set on disk: MVTec AD layout or plain folders, plus a seeded validation split.

MVTec AD layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png              (normal test images)
    <root>/<category>/test/<defect>/*.png          (anomalous test images)
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (optional: without it, image-level labels)

Every listing is sorted, so the same folder always gives the same samples in the same order.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomopt.data.images import IMAGE_EXTENSIONS
from anomopt.errors import ConfigError, DataError

__all__ = [
    "CategorySplit",
    "Sample",
    "list_categories",
    "list_images",
    "parse_categories",
    "scan_folder",
    "scan_mvtec",
    "split_validation",
]

_EXTS_TEXT = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class Sample:
    """One image: its file, category, label (0 good, 1 anomalous), defect type and optional mask file."""

    path: Path
    category: str
    label: int
    defect: str = "good"
    mask_path: Path | None = None


@dataclass
class CategorySplit:
    """The train (normal only) and test samples of one category."""

    name: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder`` (extensions png/jpg/jpeg/bmp/tif/tiff, any case), sorted.

    Raises :class:`DataError` if ``folder`` is missing or not a folder.
    """
    d = Path(folder)
    if not d.exists():
        raise DataError(f"{d}: folder not found")
    if not d.is_dir():
        raise DataError(f"{d}: is not a folder")
    try:
        entries = list(d.iterdir())
    except OSError as err:
        raise DataError(f"{d}: cannot list folder ({err.strerror or err})") from err
    return sorted((p for p in entries if _is_image(p) and p.is_file()), key=lambda p: p.name)


def _check_root(root: str | os.PathLike[str]) -> Path:
    r = Path(root)
    if not r.exists():
        raise DataError(f"{r}: data set root not found; pass the folder that holds <category>/train/good")
    if not r.is_dir():
        raise DataError(f"{r}: data set root is not a folder")
    return r


def list_categories(root: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that contain ``train/good``."""
    r = _check_root(root)
    try:
        subs = [p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError as err:
        raise DataError(f"{r}: cannot list folder ({err.strerror or err})") from err
    return sorted(p.name for p in subs if (p / "train" / "good").is_dir())


def parse_categories(categories: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """Resolve ``"all"``, a comma-separated string or a list of names (sorted, unique)."""
    if isinstance(categories, str):
        names = [c.strip() for c in categories.split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in categories]
    if not names:
        raise DataError("no category given; pass 'all', a comma-separated list, or a list of names")
    if names == ["all"]:
        return sorted(available)
    return sorted(set(names))


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem):
        for ext in (".png", *[e for e in IMAGE_EXTENSIONS if e != ".png"]):
            for cand in (gt_dir / f"{name}{ext}", gt_dir / f"{name}{ext.upper()}"):
                if cand.is_file():
                    return cand
    return None


def _scan_category(r: Path, cat: str, require_test: bool) -> CategorySplit:
    cdir = r / cat
    good = cdir / "train" / "good"
    if not good.is_dir():
        raise DataError(f"{good}: folder missing; category '{cat}' needs its normal training images there")
    train_paths = list_images(good)
    if not train_paths:
        raise DataError(f"{good}: no training images (expected {_EXTS_TEXT} files); add normal images there")
    train = [Sample(p, cat, 0, "good", None) for p in train_paths]

    test_dir = cdir / "test"
    test: list[Sample] = []
    if test_dir.exists():
        if not test_dir.is_dir():
            raise DataError(f"{test_dir}: is not a folder; expected test/<good|defect type>/ image folders")
        type_dirs = sorted(
            (p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
        )
        gt_root = cdir / "ground_truth"
        for tdir in type_dirs:
            defect = tdir.name
            images = list_images(tdir)
            if defect == "good":
                test.extend(Sample(p, cat, 0, "good", None) for p in images)
                continue
            if not images:
                continue
            if gt_root.exists() and not gt_root.is_dir():
                raise DataError(f"{gt_root}: is not a folder; masks go in ground_truth/<defect>/<stem>_mask.png")
            gt_dir = gt_root / defect
            has_masks = gt_dir.is_dir()  # masks are optional per defect type: none = image-level labels
            for p in images:
                mask = _find_mask(gt_dir, p.stem) if has_masks else None
                if has_masks and mask is None:
                    raise DataError(
                        f"{p}: anomalous test image has no mask while {gt_dir} holds masks for its defect type; "
                        f"expected {gt_dir / (p.stem + '_mask.png')} (add it, or remove {gt_dir} to label "
                        "this defect type per image only)"
                    )
                test.append(Sample(p, cat, 1, defect, mask))
    if require_test and not test:
        raise DataError(
            f"{test_dir}: no test images for category '{cat}'; expected test/good/ and test/<defect>/ "
            f"folders with {_EXTS_TEXT} files"
        )
    return CategorySplit(cat, train, test)


def scan_mvtec(
    root: str | os.PathLike[str],
    categories: str | Sequence[str] = "all",
    require_test: bool = True,
) -> dict[str, CategorySplit]:
    """Scan an MVTec-AD-layout data set; returns ``{category: CategorySplit}`` in sorted category order.

    ``categories`` is ``"all"``, a comma-separated string, or a list of names. Raises :class:`DataError`
    (naming the path and the fix) for a missing root or category, an empty ``train/good``, no test images
    (when ``require_test``), or an anomalous test image without mask when its defect type has a
    ``ground_truth/<defect>`` folder. Masks are optional per category and per defect type: a defect type
    without ``ground_truth/<defect>`` has image-level labels only (pixel metrics are then n/a).
    """
    r = _check_root(root)
    available = list_categories(r)
    names = parse_categories(categories, available)
    if not names:
        raise DataError(f"{r}: no category found; expected MVTec layout <root>/<category>/train/good/")
    missing = [c for c in names if c not in available]
    if missing:
        if (r / missing[0]).is_dir():
            raise DataError(
                f"{r / missing[0] / 'train' / 'good'}: folder missing; category '{missing[0]}' needs its "
                f"normal training images there (categories with train/good: {', '.join(available) or 'none'})"
            )
        raise DataError(
            f"{r}: category not found: {', '.join(missing)} (no {missing[0]}/train/good there); "
            f"available: {', '.join(available) or 'none'}"
        )
    return {cat: _scan_category(r, cat, require_test) for cat in names}


def scan_folder(
    normal_dir: str | os.PathLike[str],
    anomalous_dir: str | os.PathLike[str] | None = None,
    mask_dir: str | os.PathLike[str] | None = None,
    category: str = "default",
    good_test_dir: str | os.PathLike[str] | None = None,
) -> CategorySplit:
    """Plain folders: ``normal_dir`` images form train; ``anomalous_dir`` (+ ``good_test_dir``) form test.

    With ``mask_dir``, every anomalous image needs ``<mask_dir>/<stem>.png`` or ``<stem>_mask.png``
    (a missing one raises :class:`DataError`); without it anomalous images have no mask (all-zero).
    """
    normal = list_images(normal_dir)
    if not normal:
        raise DataError(f"{Path(normal_dir)}: no normal images (expected {_EXTS_TEXT} files)")
    train = [Sample(p, category, 0, "good", None) for p in normal]
    test: list[Sample] = []
    if good_test_dir is not None:
        test.extend(Sample(p, category, 0, "good", None) for p in list_images(good_test_dir))
    if anomalous_dir is not None:
        anomalous = list_images(anomalous_dir)
        if not anomalous:
            raise DataError(f"{Path(anomalous_dir)}: no anomalous images (expected {_EXTS_TEXT} files)")
        mdir = None
        if mask_dir is not None:
            mdir = Path(mask_dir)
            if not mdir.is_dir():
                raise DataError(f"{mdir}: mask folder not found")
        for p in anomalous:
            mask = None
            if mdir is not None:
                mask = _find_mask(mdir, p.stem)
                if mask is None:
                    raise DataError(
                        f"{p}: anomalous image has no mask; expected {mdir / (p.stem + '.png')} "
                        f"or {mdir / (p.stem + '_mask.png')}"
                    )
            test.append(Sample(p, category, 1, "anomalous", mask))
    elif mask_dir is not None:
        raise DataError(f"{Path(mask_dir)}: mask folder given without an anomalous image folder")
    return CategorySplit(category, train, test)


def split_validation(
    samples: list[Sample],
    fraction: float = 0.1,
    seed: int = 0,
    min_val: int = 1,
) -> tuple[list[Sample], list[Sample]]:
    """Hold out normal images for thresholds/normalization: returns ``(train, val)``.

    Stratified per category: each holds out ``max(min_val, round(fraction * n))`` images (none when
    ``fraction == 0``), chosen by a generator seeded from ``seed`` and the category name, so a category's
    split does not depend on which other categories are loaded or on input order. Both lists keep input
    order. Only normal (label 0) samples are accepted; a category left with no training image raises
    :class:`DataError`.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    if min_val < 0:
        raise ConfigError(f"min_val must be >= 0, got {min_val}")
    anomalous = [s for s in samples if s.label != 0]
    if anomalous:
        raise DataError(
            f"{anomalous[0].path}: validation split takes normal training images only, got an "
            "anomalous one (test images must never enter the validation split)"
        )
    by_cat: dict[str, list[Sample]] = {}
    for s in samples:
        by_cat.setdefault(s.category, []).append(s)
    val_set: set[Sample] = set()
    for cat in sorted(by_cat):
        items = sorted(set(by_cat[cat]), key=lambda s: str(s.path))
        n = len(items)
        n_val = 0 if fraction == 0 else max(int(min_val), int(round(fraction * n)))
        if n_val == 0:
            continue
        if n_val >= n:
            raise DataError(
                f"category '{cat}' has {n} training image(s) ({items[0].path.parent}); holding out {n_val} "
                "for validation would leave none for training; add images or lower the validation fraction"
            )
        ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(cat.encode("utf-8"))])
        pick = np.random.default_rng(ss).permutation(n)[:n_val]
        val_set.update(items[i] for i in pick)
    train = [s for s in samples if s not in val_set]
    val = [s for s in samples if s in val_set]
    return train, val
