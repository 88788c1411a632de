"""Seeded shape drawing shared by the synthetic data set and the pasted defects: pixel grids, irregular
blobs, polylines and the float-to-8-bit conversion.

Every function is deterministic in its arguments (and in the state of the ``rng`` it is given), so the
images built from them are byte-identical for a fixed seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["blob_depth", "draw_lines", "grid", "to_u8"]


@functools.lru_cache(maxsize=4)
def grid(h: int, w: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Float32 pixel row and column coordinates of an ``h`` x ``w`` image (``w`` defaults to ``h``;
    cached, read-only)."""
    yy, xx = np.mgrid[0:h, 0 : h if w is None else w].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def blob_depth(
    shape: int | tuple[int, int],
    cy: float,
    cx: float,
    r: float,
    rng: np.random.Generator,
    rough: float = 0.3,
    harmonics: int = 4,
    signed: bool = False,
) -> np.ndarray:
    """Signed 'inside depth' (pixels) of an irregular blob of radius about ``r`` centred at (``cy``, ``cx``);
    > 0 inside. ``shape``: the image side or ``(h, w)``.

    The radius varies with the angle by ``harmonics`` cosines (orders 2, 3, ...) of random phase, order k
    with amplitude ``r * rough / k`` times a random factor: uniform in [0.3, 1), or with ``signed`` the
    cosine of a uniform angle (in [-1, 1]). The draws from ``rng`` are, per order, factor then phase.
    """
    h, w = (shape, shape) if isinstance(shape, int) else shape
    yy, xx = grid(h, w)
    ang = np.arctan2(yy - cy, xx - cx)
    rr = np.full_like(ang, r)
    for k in range(2, 2 + harmonics):
        factor = math.cos(rng.uniform(0, 2 * math.pi)) if signed else rng.uniform(0.3, 1.0)
        rr += r * rough / k * factor * np.cos(k * ang + rng.uniform(0, 2 * math.pi))
    return rr - np.hypot(yy - cy, xx - cx)


def draw_lines(
    shape: int | tuple[int, int],
    lines: Sequence[Sequence[tuple[float, float]]],
    width: int,
    joint: str | None = "curve",
) -> np.ndarray:
    """Bool mask of the polylines ``lines`` (each a list of (x, y) points) drawn ``width`` px wide (at
    least 1); ``joint`` as PIL's ``ImageDraw.line`` (``"curve"``: rounded joints on lines over 4 px wide).
    ``shape``: the image side or ``(h, w)``."""
    h, w = (shape, shape) if isinstance(shape, int) else shape
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    for pts in lines:
        d.line([(float(x), float(y)) for x, y in pts], fill=255, width=max(1, int(width)), joint=joint)
    return np.asarray(im) > 0


def to_u8(img: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8 (rounded, clipped)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
