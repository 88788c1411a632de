"""Predict overlays are drawn with pillow and numpy only (the runtime install has no matplotlib): heat in pixel
z units on one fixed scale, cyan mask outline, a header coloured by the decision, a colour bar whose cyan line
is the pixel threshold."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from anomopt.runtime.overlay import OverlayInfo, heat_colors, mask_outline, render_overlay, z_scale

SIZE = 32
COLOUR = (0.2, 0.6, 0.4)  # a flat photo colour found nowhere else on the overlay
PHOTO = np.round(np.array(COLOUR) * 255).astype(int)
CYAN = np.array([0, 229, 255])


def _info(anomalous: bool = False, pixel_threshold_z: float = 4.0) -> OverlayInfo:
    return OverlayInfo("good/000.png", "fabric", 0.25, 1.5, 3.0, pixel_threshold_z, anomalous)


def _render(zmap, mask=None, info=None, size=(SIZE, SIZE)) -> np.ndarray:
    image = np.broadcast_to(np.array(COLOUR, dtype=np.float32), (*size, 3))
    mask = np.zeros(size, bool) if mask is None else mask
    png = render_overlay(image, np.broadcast_to(zmap, size), mask, info or _info())
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _picture_box(zeros: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the photo in an overlay drawn with a zero map: where its colour is."""
    rows, cols = np.nonzero(np.all(zeros == PHOTO, axis=-1))
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


def _is_cyan(px: np.ndarray) -> np.ndarray:
    return np.all(np.abs(px - CYAN) <= 12, axis=-1)


def test_heat_scale_runs_dark_to_bright():
    colors = heat_colors(np.linspace(0.0, 1.0, 50))
    luminance = colors @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) > 0)  # a hotter pixel always reads brighter
    assert luminance[0] < 0.05 and luminance[-1] > 0.9
    assert np.array_equal(heat_colors(np.array([-1.0, 2.0])), heat_colors(np.array([0.0, 1.0])))  # clipped


def test_mask_outline_is_the_boundary():
    mask = np.zeros((9, 9), dtype=bool)
    mask[2:7, 2:7] = True
    outline = mask_outline(mask)
    assert outline.sum() == 16 and not outline[4, 4] and outline[2, 2] and not outline[1, 1]
    thick = mask_outline(mask, width=2)
    assert thick.sum() == 24 and thick[3, 3] and not thick[4, 4]


def test_z_scale_is_fixed_and_holds_the_threshold():
    assert z_scale(4.0) == (0.0, 8.0)
    assert z_scale(1.0) == (0.0, 3.0)


def test_small_images_are_upscaled_and_a_zero_map_leaves_the_photo_unchanged():
    zeros = _render(0.0)
    top, left, bottom, right = _picture_box(zeros)
    assert (bottom - top, right - left) == (256, 256)  # 32 px upscaled so the text around it reads
    assert np.all(zeros[top:bottom, left:right] == PHOTO)  # a solid block: no heat, no outline
    tall = _render(0.0, size=(300, 200))
    t, l_, b, r = _picture_box(tall)
    assert (b - t, r - l_) == (300, 200)  # big enough already: not resized


def test_a_normal_map_barely_changes_the_picture_and_a_hot_map_colours_it_strongly():
    top, left, bottom, right = _picture_box(_render(0.0))
    rng = np.random.default_rng(0)
    normal = _render(rng.normal(0.0, 0.5, (SIZE, SIZE)))[top:bottom, left:right]
    assert np.abs(normal - PHOTO).mean() < 4.0  # normal pixels have z about 0: nearly invisible heat
    assert np.array_equal(_render(-3.0), _render(0.0))  # below the normal mean: nothing at all
    hot = _render(10.0)[top:bottom, left:right]  # above the top of the scale: its brightest colour at 0.7
    expected = 0.3 * PHOTO + 0.7 * heat_colors(np.array(1.0)) * 255
    assert np.all(np.abs(hot - expected) <= 2)
    assert np.abs(hot - PHOTO).mean() > 60  # strong colour (the normal map stays under 4)
    half = _render(2.0)[top:bottom, left:right]  # half-way to the threshold 4: opacity 0.35
    expected = 0.65 * PHOTO + 0.35 * heat_colors(np.array(2.0 / 8.0)) * 255
    assert np.all(np.abs(half - expected) <= 2)


def test_the_mask_outline_is_cyan():
    top, left, bottom, right = _picture_box(_render(0.0))
    mask = np.zeros((SIZE, SIZE), bool)
    mask[8:24, 8:24] = True
    pic = _render(0.0, mask=mask)[top:bottom, left:right]
    cyan = _is_cyan(pic)
    assert cyan[66, 128] and cyan[128, 66] and cyan[189, 128]  # on the mask's edge (8x upscaled)
    assert not cyan[128, 128] and np.all(pic[128, 128] == PHOTO)  # inside it the photo shows
    assert not cyan[30, 30] and not cyan[220, 220]  # outside it too
    assert not _is_cyan(_render(0.0)[top:bottom, left:right]).any()  # no mask, no outline


@pytest.mark.parametrize("anomalous", [True, False])
def test_the_header_colour_follows_the_decision(anomalous):
    png = _render(0.0, info=_info(anomalous=anomalous))
    top = _picture_box(png)[0]
    header = png[:top]
    r, g, b = header[..., 0], header[..., 1], header[..., 2]
    reddish = int(((r > 120) & (r > g + 60) & (r > b + 60)).sum())
    greenish = int(((g > 70) & (g > r + 40) & (g > b + 30)).sum())
    assert (reddish > 30 and greenish == 0) if anomalous else (greenish > 30 and reddish == 0)


@pytest.mark.parametrize("threshold", [4.0, 1.0, 0.5])
def test_the_colour_bar_marks_the_pixel_threshold_at_its_height(threshold):
    png = _render(0.0, info=_info(pixel_threshold_z=threshold))
    top, left, bottom, right = _picture_box(png)
    beside = png[:, right:]
    rows, cols = np.nonzero(_is_cyan(beside))
    assert rows.size > 0 and rows.max() - rows.min() <= 3  # one short horizontal line
    lo, hi = z_scale(threshold)
    expected = top + (hi - threshold) / (hi - lo) * (bottom - top - 1)
    assert abs(rows.mean() - expected) <= 1.0
    # The bar runs from the brightest heat colour at the top of the scale to the darkest at 0.
    col = right + int(np.median(cols))
    assert np.abs(png[top + 1, col] - heat_colors(np.array(1.0)) * 255).max() <= 8
    assert np.abs(png[bottom - 2, col] - heat_colors(np.array(0.0)) * 255).max() <= 8
