"""The overlay PNG that ``anomopt predict`` writes per image, drawn with pillow and numpy only (the thin
runtime install has no matplotlib).

The anomaly map is shown in the category's normalized pixel units (z-scores against the normal validation
images), on one fixed colour scale for every image: a normal image stays calm (the heat fades out below
z = 0 and only turns opaque near the threshold), and the pixel threshold is a cyan line on the colour bar.
The predicted mask is outlined in cyan. The header carries the file, category, score, normalized score,
image threshold and decision (red when anomalous, green when normal). Small images are upscaled so the
text stays readable.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["OverlayInfo", "heat_colors", "mask_outline", "render_overlay", "z_scale"]

MIN_HEIGHT = 256  # picture height the image is upscaled to at least
MAX_ALPHA = 0.7  # heat opacity from the pixel threshold up
CYAN = (0, 229, 255)
RED = (198, 40, 40)
GREEN = (46, 125, 50)
INK = (40, 40, 40)
WHITE = (255, 255, 255)
BAR_LABELS = ("pixel z-score (normal: about 0; line: mask threshold)", "pixel z (line: mask threshold)", "pixel z")

# A dark-to-bright perceptual scale (black, purple, crimson, orange, pale yellow): brightness rises
# monotonically, so a hotter pixel always reads as brighter. Anchors chosen by hand for this module.
_HEAT_POS = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
_HEAT_RGB = np.array(
    [
        [0.00, 0.00, 0.02],
        [0.22, 0.04, 0.40],
        [0.55, 0.13, 0.42],
        [0.85, 0.28, 0.24],
        [0.98, 0.62, 0.05],
        [0.99, 0.99, 0.65],
    ]
)


@dataclass(frozen=True)
class OverlayInfo:
    """What the overlay's header and colour bar show."""

    name: str
    category: str
    score: float
    normalized_score: float
    image_threshold_z: float
    pixel_threshold_z: float
    anomalous: bool


def z_scale(pixel_threshold_z: float) -> tuple[float, float]:
    """The fixed colour range in pixel z units: 0 to twice the threshold (at least threshold + 2)."""
    top = max(2.0 * pixel_threshold_z, pixel_threshold_z + 2.0, 1.0)
    return 0.0, float(top)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to RGB floats in [0, 1] on the dark-to-bright heat scale."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.stack([np.interp(v, _HEAT_POS, _HEAT_RGB[:, c]) for c in range(3)], axis=-1)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary band of a boolean mask: inside pixels within ``width`` 4-neighbour steps of the outside."""
    m = np.asarray(mask, dtype=bool)
    inner = m
    for _ in range(max(1, width)):
        p = np.pad(inner, 1, mode="constant", constant_values=False)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable when pillow has FreeType (pillow >= 10.1)
    except TypeError:  # older pillow: the fixed bitmap font
        return ImageFont.load_default()


def _resize(a: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """Resize a float (H, W) array to ``size`` = (width, height)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(a, dtype=np.float32), mode="F").resize(size, resample))


def _ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values inside [lo, hi], about ``target`` of them, spaced 1, 2 or 5 times a power of ten."""
    raw = (hi - lo) / max(target - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(s * power for s in (1.0, 2.0, 5.0, 10.0) if s * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fit(draw, text: str, font, width: float) -> str:
    """``text``, shortened from the left with '...' until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def render_overlay(image: np.ndarray, zmap: np.ndarray, mask: np.ndarray, info: OverlayInfo) -> bytes:
    """PNG bytes: ``image`` (H, W, 3 in [0, 1]) under the pixel z-map ``zmap`` with ``mask``'s outline,
    a header with the decision and a colour bar in pixel z units with the mask threshold marked."""
    from PIL import Image, ImageDraw

    img = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    h, w = img.shape[:2]
    scale = max(1.0, MIN_HEIGHT / h)
    ph, pw = round(h * scale), round(w * scale)
    lo, hi = z_scale(info.pixel_threshold_z)

    # The picture: photo under the heat, opacity growing with z (none at or below 0, MAX_ALPHA from the
    # pixel threshold up), then the predicted mask's outline.
    photo = Image.fromarray((img * 255.0 + 0.5).astype(np.uint8), mode="RGB")
    if (pw, ph) != (w, h):
        photo = photo.resize((pw, ph), Image.Resampling.BILINEAR)
    base = np.asarray(photo, dtype=np.float64) / 255.0
    z = np.nan_to_num(np.asarray(zmap, dtype=np.float64), nan=0.0, posinf=hi, neginf=lo)
    z = _resize(z, (pw, ph), Image.Resampling.BILINEAR).astype(np.float64)
    alpha = (np.clip(z / max(info.pixel_threshold_z, 1e-6), 0.0, 1.0) * MAX_ALPHA)[..., None]
    picture = (1.0 - alpha) * base + alpha * heat_colors((z - lo) / (hi - lo))
    m = np.asarray(mask, dtype=bool)
    if m.any():
        big = _resize(m.astype(np.float32), (pw, ph), Image.Resampling.BILINEAR) >= 0.5
        picture[mask_outline(big, width=max(1, round(scale)))] = np.array(CYAN) / 255.0
    picture_img = Image.fromarray((np.clip(picture, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")

    # Text: the header lines in the decision's colour, the colour bar's ticks and label in dark grey.
    head_font, small_font = _font(13), _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    verdict = "ANOMALOUS" if info.anomalous else "normal"
    colour = RED if info.anomalous else GREEN
    lines = [
        info.name,
        f"category {info.category}  |  {verdict}",
        f"score {info.score:.4g}  |  z {info.normalized_score:+.2f} (threshold {info.image_threshold_z:.2f})",
    ]
    ticks = _ticks(lo, hi)
    tick_labels = [f"{t:g}" for t in ticks]
    bar_label = next(
        (t for t in BAR_LABELS if probe.textlength(t, font=small_font) <= ph), BAR_LABELS[-1]
    )

    margin, gap, bar_w, tick_len = 10, 12, 16, 4
    line_h = head_font.getbbox("Ag")[3] + 4
    header_h = margin + line_h * len(lines) + 6
    label_w = max(probe.textlength(t, font=small_font) for t in tick_labels)
    label_box = probe.textbbox((0, 0), bar_label, font=small_font)
    label_h = label_box[3] - label_box[1]
    bar_x = margin + pw + gap
    label_x = int(bar_x + bar_w + tick_len + 3 + label_w + 6)
    width = max(label_x + label_h + margin, margin + 330)
    height = header_h + ph + margin

    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * line_h), _fit(draw, line, head_font, width - 2 * margin), fill=colour,
                  font=head_font)
    top = header_h
    canvas.paste(picture_img, (margin, top))

    # The colour bar: hi at the top, lo at the bottom, same height as the picture.
    levels = hi - (np.arange(ph, dtype=np.float64) / max(ph - 1, 1)) * (hi - lo)
    strip = np.repeat(heat_colors((levels - lo) / (hi - lo))[:, None, :], bar_w, axis=1)
    canvas.paste(Image.fromarray((strip * 255.0 + 0.5).astype(np.uint8), mode="RGB"), (bar_x, top))
    draw.rectangle((bar_x - 1, top - 1, bar_x + bar_w, top + ph), outline=INK)

    def y_of(v: float) -> int:
        return top + round((hi - v) / (hi - lo) * (ph - 1))

    for t, text in zip(ticks, tick_labels):
        y = y_of(t)
        draw.line((bar_x + bar_w, y, bar_x + bar_w + tick_len, y), fill=INK)
        box = draw.textbbox((0, 0), text, font=small_font)
        ty = min(max(y - (box[1] + box[3]) // 2, top - box[1] - 4), top + ph - box[3] + 4)
        draw.text((bar_x + bar_w + tick_len + 3, ty), text, fill=INK, font=small_font)
    if lo <= info.pixel_threshold_z <= hi:
        y = y_of(info.pixel_threshold_z)
        draw.rectangle((bar_x - 3, y - 1, bar_x + bar_w + 2, y + 1), fill=CYAN)
    # The bar's label, written vertically to the right of the tick labels.
    label = Image.new("RGB", (label_box[2] + 2, label_h + 2), WHITE)
    ImageDraw.Draw(label).text((1, 1 - label_box[1]), bar_label, fill=INK, font=small_font)
    label = label.rotate(90, expand=True)
    canvas.paste(label, (label_x, top + max(0, (ph - label.height) // 2)))

    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
