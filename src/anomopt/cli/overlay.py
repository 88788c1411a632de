"""The overlay PNG that ``anomopt predict`` writes per image.

The anomaly map is shown in the category's normalized pixel units (z-scores against the normal validation
images), on one fixed colour scale for every image: a normal image stays calm (the heat fades out below
z = 0 and only turns opaque near the threshold), and the pixel threshold is a marked level on the colour bar.
The title carries the file, category, score, normalized score, image threshold and decision.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

__all__ = ["OverlayInfo", "render_overlay", "z_scale"]


@dataclass(frozen=True)
class OverlayInfo:
    """What the overlay's title and colour bar show."""

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


def render_overlay(image: np.ndarray, zmap: np.ndarray, mask: np.ndarray, info: OverlayInfo) -> bytes:
    """PNG bytes: ``image`` (H, W, 3 in [0, 1]) under the pixel z-map ``zmap`` with ``mask``'s outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors

    lo, hi = z_scale(info.pixel_threshold_z)
    norm = colors.Normalize(vmin=lo, vmax=hi, clip=True)
    cmap = plt.get_cmap("inferno")
    z = np.nan_to_num(np.asarray(zmap, dtype=np.float64), nan=0.0, posinf=hi, neginf=lo)
    heat = cmap(norm(z))
    # Opacity grows with z: none at or below 0, 0.35 halfway to the threshold, 0.7 from the threshold up.
    heat[..., 3] = np.clip(z / max(info.pixel_threshold_z, 1e-6), 0.0, 1.0) * 0.7

    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    ax.imshow(np.clip(image, 0.0, 1.0), interpolation="bilinear")
    ax.imshow(heat, interpolation="bilinear")
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="#00e5ff", linewidths=1.2)
    ax.set_axis_off()
    verdict = "ANOMALOUS" if info.anomalous else "normal"
    colour = "#c62828" if info.anomalous else "#2e7d32"
    ax.set_title(
        f"{info.name}  ·  category {info.category}\n"
        f"score {info.score:.4g}  ·  z {info.normalized_score:+.2f} (threshold {info.image_threshold_z:.2f})  ·  "
        f"{verdict}",
        fontsize=8.5,
        color=colour,
    )
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("pixel z-score (normal: about 0; line: mask threshold)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    bar.ax.axhline(info.pixel_threshold_z, color="#00e5ff", linewidth=2.5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
