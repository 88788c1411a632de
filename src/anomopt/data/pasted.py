"""Synthetic defects pasted on arbitrary normal images, for choosing settings without test labels.

:func:`paste_defect` turns one normal image into an anomalous one with an exact mask, in one of four
seeded ways (ideas after CutPaste, Li et al. 2021, and the hand-drawn scratches / stains of the synthetic
set; written for this package):

- ``patch``: a rectangle cut from elsewhere in the same image, colour-jittered, pasted at a random spot;
- ``scar``: a long thin rotated strip cut the same way (CutPaste-scar);
- ``scratch``: a thin bright or dark random-walk line;
- ``stain``: a soft-edged irregular blob that tints the image.

Shapes are drawn with :mod:`anomopt.data.shapes`, as in the synthetic data set.

The mask is the set of pixels whose 8-bit value changed, so outside the mask the image is untouched.
:class:`PastedDefects` pairs every image of a data set of normal images (the validation split) with its
defective copy: a labelled evaluation set made of normal images only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from anomopt.data.shapes import blob_depth, draw_lines, grid, to_u8
from anomopt.errors import ConfigError, DataError

DEFECT_KINDS = ("patch", "scar", "scratch", "stain")
_MIN_PIXELS_FRACTION = 0.002  # a defect must change at least this share of the pixels


def _rotated_strip(h: int, w: int, cy: float, cx: float, length: float, width: float, angle: float) -> np.ndarray:
    """Bool mask of a rotated rectangle."""
    yy, xx = grid(h, w)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


def _cut_paste(img: np.ndarray, rng: np.random.Generator, scar: bool) -> np.ndarray:
    """Copy a region of ``img`` (float H x W x 3), jitter its colour, paste it elsewhere."""
    h, w, _ = img.shape
    if scar:
        length = rng.uniform(0.15, 0.35) * min(h, w)
        width = rng.uniform(0.02, 0.05) * min(h, w)
        angle = rng.uniform(0, math.pi)
        half = int(math.ceil(length / 2 + width))
    else:
        area = rng.uniform(0.005, 0.04) * h * w
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        ph = max(2, int(round(math.sqrt(area / aspect))))
        pw = max(2, int(round(math.sqrt(area * aspect))))
        half = max(ph, pw) // 2 + 1
    half = min(half, min(h, w) // 2 - 1)
    src = (int(rng.integers(half, h - half)), int(rng.integers(half, w - half)))
    dst = (int(rng.integers(half, h - half)), int(rng.integers(half, w - half)))
    if scar:
        region = _rotated_strip(h, w, dst[0], dst[1], length, width, angle)
    else:
        region = np.zeros((h, w), bool)
        region[dst[0] - ph // 2 : dst[0] - ph // 2 + ph, dst[1] - pw // 2 : dst[1] - pw // 2 + pw] = True
    shifted = np.roll(img, (dst[0] - src[0], dst[1] - src[1]), axis=(0, 1))
    gain = rng.uniform(0.75, 1.25, size=3).astype(np.float32)
    bias = rng.uniform(-0.08, 0.08, size=3).astype(np.float32)
    out = img.copy()
    out[region] = np.clip(shifted[region] * gain + bias, 0.0, 1.0)
    return out


def _scratch(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w, _ = img.shape
    y, x = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    angle = rng.uniform(0, 2 * math.pi)
    pts = [(x, y)]
    for _ in range(int(rng.integers(6, 14))):
        angle += rng.normal(0, 0.25)
        step = rng.uniform(0.02, 0.05) * min(h, w)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        pts.append((x, y))
    line = draw_lines((h, w), [pts], max(1, int(round(min(h, w) / 128))), joint=None)
    alpha = line.astype(np.float32)[..., None]
    tone = 1.0 if rng.random() < 0.5 else 0.0
    strength = rng.uniform(0.5, 0.9)
    return img * (1 - strength * alpha) + tone * strength * alpha


def _stain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w, _ = img.shape
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    r = rng.uniform(0.04, 0.1) * min(h, w)
    inside = (blob_depth((h, w), cy, cx, r, rng, rough=0.3, harmonics=3, signed=True) > 0).astype(np.float32)
    alpha = ndimage.gaussian_filter(inside, sigma=max(0.5, r / 6))[..., None] * rng.uniform(0.4, 0.8)
    color = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    return img * (1 - alpha) + color * alpha


def paste_defect(image: np.ndarray, seed: int, kind: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """A defective copy of ``image`` (uint8 H x W x 3), its mask (uint8 0/1) and the defect kind.

    Deterministic in ``seed``; ``kind`` None draws one of :data:`DEFECT_KINDS`. A draw that changes fewer
    than 0.2 % of the pixels (a patch copied onto identical background) is redrawn, up to 20 times.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"paste_defect needs a uint8 H x W x 3 image, not {image.dtype} {image.shape}")
    if kind is not None and kind not in DEFECT_KINDS:
        raise ConfigError(f"defect kind must be one of {', '.join(DEFECT_KINDS)}, not {kind!r}")
    h, w, _ = image.shape
    if min(h, w) < 16:
        raise DataError(f"paste_defect needs an image of at least 16 x 16 px, not {h} x {w}")
    rng = np.random.default_rng(seed)
    base = image.astype(np.float32) / 255.0
    for _ in range(20):
        k = kind or DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
        if k in ("patch", "scar"):
            out = _cut_paste(base, rng, scar=k == "scar")
        elif k == "scratch":
            out = _scratch(base, rng)
        else:
            out = _stain(base, rng)
        out8 = to_u8(out)
        mask = (out8 != image).any(axis=2).astype(np.uint8)
        if mask.sum() >= _MIN_PIXELS_FRACTION * h * w:
            return out8, mask, k
    raise DataError("paste_defect: no draw changed the image visibly (is it a flat colour?)")


class PastedDefects(Dataset):
    """Every item of ``normals`` (dicts with image, category, path) followed by a defective copy of each.

    Items look like :class:`anomopt.data.dataset.AnomalyDataset` items (image in [0, 1], mask, label,
    category, path, has_mask). The defect of image ``i`` depends only on ``seed`` and ``i``.
    """

    def __init__(self, normals: Dataset, seed: int = 0) -> None:
        self.normals = normals
        self.seed = int(seed)
        self.n = len(normals)  # type: ignore[arg-type]
        if self.n == 0:
            raise DataError("PastedDefects: the normal image set is empty")

    def __len__(self) -> int:
        return 2 * self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < 2 * self.n:
            raise IndexError(f"index {index} out of range for {2 * self.n} items")
        item = self.normals[index % self.n]
        if index < self.n:
            return {**item, "label": 0, "has_mask": True, "mask": torch.zeros_like(item["image"][:1])}
        img8 = (item["image"].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        out, mask, kind = paste_defect(img8, seed=self.seed * 1_000_003 + index)
        return {
            "image": torch.from_numpy(out.transpose(2, 0, 1).copy()).float().div_(255.0),
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "has_mask": True,
            "label": 1,
            "category": item["category"],
            "path": f"{item['path']}#pasted-{kind}",
        }
