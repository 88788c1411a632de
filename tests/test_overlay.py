"""Predict overlays are drawn with pillow and numpy only (the runtime install has no matplotlib)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from anomopt.runtime.overlay import heat_colors, mask_outline, overlay_png


def test_heat_scale_runs_blue_to_red():
    low, high = heat_colors(np.array([0.0, 1.0]))
    assert low[2] > 0.4 and low[0] == 0.0  # blue end
    assert high[0] > 0.4 and high[2] == 0.0  # red end


def test_mask_outline_is_the_boundary():
    mask = np.zeros((7, 7), dtype=bool)
    mask[2:5, 2:5] = True
    outline = mask_outline(mask)
    assert outline.sum() == 8 and not outline[3, 3] and outline[2, 2]


def test_overlay_png_shows_the_map_and_the_outlined_mask():
    h, w = 16, 20
    image = np.full((h, w, 3), 0.5, dtype=np.float32)
    amap = np.zeros((h, w), dtype=np.float32)
    amap[:, w // 2 :] = 1.0
    mask = np.zeros((h, w), dtype=bool)
    mask[4:10, 4:10] = True
    png = np.asarray(Image.open(io.BytesIO(overlay_png(image, amap, mask))))
    assert png.shape == (h, 2 * w + 4, 3)
    left = png[:, :w].astype(int)
    assert left[0, -1, 0] > left[0, -1, 2] and left[0, 0, 2] > left[0, 0, 0]  # hot right, cold left
    right = png[:, w + 4 :]
    assert tuple(right[4, 4]) == (255, 0, 0) and tuple(right[6, 6]) == (128, 128, 128)
