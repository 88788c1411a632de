"""Overlay images for ``anomopt predict``, drawn with pillow and numpy only (the runtime has no matplotlib)."""

from __future__ import annotations

import io

import numpy as np


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB floats on a blue-cyan-yellow-red scale (a piecewise-linear "jet")."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([r, g, b], axis=-1)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask (inside pixels with a 4-neighbour outside)."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1, mode="constant", constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~inner


def overlay_png(image: np.ndarray, amap: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> bytes:
    """PNG bytes: left, the image under its anomaly map (scaled to the map's own range); right, the image
    with the predicted mask outlined in red. ``image`` is (H, W, 3) in [0, 1]; ``amap``/``mask`` are (H, W)."""
    from PIL import Image

    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    a = np.asarray(amap, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    heat = heat_colors((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a))
    left = (1.0 - alpha) * img + alpha * heat
    right = img.copy()
    right[mask_outline(mask)] = (1.0, 0.0, 0.0)
    gap = np.ones((img.shape[0], 4, 3), dtype=np.float32)
    both = np.concatenate([left, gap, right], axis=1)
    buf = io.BytesIO()
    Image.fromarray((both * 255.0 + 0.5).astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()
