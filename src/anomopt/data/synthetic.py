"""Procedural industrial anomaly-detection data set in MVTec AD layout (no download, fully seeded).

Five categories, each a distinct industrial look with realistic per-image variation (shift, rotation,
lighting, color, noise) and several defect types with exact pixel masks:

- ``fabric``: plain-weave threads with per-thread color variation; defects hole, stain, thread.
- ``brushed_metal``: anisotropic streaks, gradient light, specular band; defects scratch, dent, rust,
  contamination.
- ``pcb_traces``: green board, copper traces, gold pads and IC footprints on a grid (one board design per
  seed; each image shifted, rotated, relit, re-colored); defects open, short, contamination, scratch.
- ``round_part``: washer with bolt holes and a key notch on a conveyor, concentric shading, varying
  position/rotation; defects missing_piece, crack, scratch, stain.
- ``mesh``: woven wire grid with jitter on a backlit background; defects broken, bent, debris.

A defect's mask is exactly the set of pixels whose 8-bit value differs from the defect-free image, so
outside the mask the anomalous image is byte-identical to the normal one it was made from.
"""

from __future__ import annotations

import functools
import json
import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm import tqdm

from anomopt.data.shapes import blob_depth, draw_lines, grid, to_u8
from anomopt.errors import ConfigError, DataError
from anomopt.io import atomic_dir

__all__ = ["DEFECT_TYPES", "MARKER_FILE", "SYNTHETIC_CATEGORIES", "generate_synthetic", "render_sample"]

SYNTHETIC_CATEGORIES = ("fabric", "brushed_metal", "pcb_traces", "round_part", "mesh")

#: Defect types per category (sub-folders of ``test/`` and ``ground_truth/``).
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "fabric": ("hole", "stain", "thread"),
    "brushed_metal": ("scratch", "dent", "rust", "contamination"),
    "pcb_traces": ("open", "short", "contamination", "scratch"),
    "round_part": ("missing_piece", "crack", "scratch", "stain"),
    "mesh": ("broken", "bent", "debris"),
}

#: File written at the data set root; marks a folder that ``generate_synthetic`` may replace.
MARKER_FILE = "synthetic.json"

_F = np.float32


@dataclass
class _Scene:
    """A rendered defect-free image plus what defects need: what lies behind, where the object is."""

    img: np.ndarray  # H x W x 3 float32
    bg: np.ndarray  # what shows through a hole / missing piece
    obj: np.ndarray | None = None  # bool: where defects may go (None: anywhere)
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers


def _gauss(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Float32 Gaussian noise (faster than float64 ``rng.normal`` for image-sized arrays)."""
    return rng.standard_normal(shape, dtype=_F) * _F(sigma)


def _norm(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    return (a / (a.std() + 1e-6)).astype(_F)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean unit-std Gaussian-smoothed noise (wide kernels: made at low resolution, then upsampled)."""
    if isinstance(sigma, (int, float)) and sigma >= 6 and len(shape) == 2:
        f = int(sigma // 3)
        small = (shape[0] // f + 2, shape[1] // f + 2)
        n = ndimage.gaussian_filter(rng.standard_normal(small, dtype=_F), sigma / f, mode="wrap")
        up = Image.fromarray(n, mode="F").resize((small[1] * f, small[0] * f), Image.BILINEAR)
        return _norm(np.asarray(up, dtype=_F)[: shape[0], : shape[1]])
    return _norm(ndimage.gaussian_filter(rng.standard_normal(shape, dtype=_F), sigma, mode="wrap"))


def _lighting(rng: np.random.Generator, s: int, amp: float) -> np.ndarray:
    """Multiplicative light field: linear gradient in a random direction plus soft low-frequency blotches."""
    yy, xx = grid(s)
    a = rng.uniform(0, 2 * math.pi)
    g = ((xx - s / 2) * math.cos(a) + (yy - s / 2) * math.sin(a)) / s
    small = _smooth_noise(rng, (max(s // 8, 4), max(s // 8, 4)), 1.5)
    blot = np.asarray(Image.fromarray(small, mode="F").resize((s, s), Image.BILINEAR), dtype=_F)
    return (1.0 + amp * 2.0 * g + 0.3 * amp * blot).astype(_F)


def _curve(
    rng: np.random.Generator,
    s: int,
    length: float,
    start: tuple[float, float] | None = None,
    step: float = 2.0,
) -> list[tuple[float, float]]:
    """Smooth random curve (x, y) points: constant-ish curvature with a little wobble."""
    if start is None:
        start = (rng.uniform(0.2, 0.8) * s, rng.uniform(0.2, 0.8) * s)
    x, y = start
    th = rng.uniform(0, 2 * math.pi)
    kappa = rng.uniform(-1.5, 1.5) / max(length, 1.0)
    pts = [(x, y)]
    for _ in range(max(2, int(length / step))):
        th += kappa * step + rng.normal(0, 0.04)
        x += step * math.cos(th)
        y += step * math.sin(th)
        pts.append((x, y))
    return pts


def _walk(
    rng: np.random.Generator, start: tuple[float, float], angle: float, length: float, step: float
) -> list[tuple[float, float]]:
    """Jagged random walk (crack segment)."""
    x, y = start
    pts = [(x, y)]
    for _ in range(max(2, int(length / step))):
        angle += rng.normal(0, 0.45)
        x += step * math.cos(angle)
        y += step * math.sin(angle)
        pts.append((x, y))
    return pts


def _disks(s: int, centers: Sequence[tuple[float, float]], radii: Sequence[float]) -> np.ndarray:
    im = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(im)
    for (x, y), r in zip(centers, radii, strict=True):
        r = max(float(r), 0.7)
        d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(im) > 0


def _pick_point(
    rng: np.random.Generator, where: np.ndarray | None, s: int, margin: float = 0.15
) -> tuple[float, float]:
    """Random (y, x) inside ``where`` (or the central area) away from the border."""
    lo, hi = int(margin * s), max(int((1 - margin) * s), int(margin * s) + 1)
    if where is not None:
        sub = np.zeros_like(where)
        sub[lo:hi, lo:hi] = where[lo:hi, lo:hi]
        ys, xs = np.nonzero(sub)
        if ys.size:
            i = int(rng.integers(ys.size))
            return float(ys[i]), float(xs[i])
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


# ------------------------------------------------------------------------------------------- renderers


def _fabric_base(p: dict, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    c, s_ = math.cos(p["th"]), math.sin(p["th"])
    x = xx * c + yy * s_ + p["ox"]
    y = -xx * s_ + yy * c + p["oy"]
    x = x + p["wave"] * np.sin(2 * math.pi * y / p["wave_len"] + p["wave_ph"])
    u, v = x / p["pitch"], y / p["pitch"]
    i, j = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - i, v - j
    tw = np.sqrt(np.clip(1 - ((fu - 0.5) / 0.46) ** 2, 0, 1))
    tf = np.sqrt(np.clip(1 - ((fv - 0.5) / 0.46) ** 2, 0, 1))
    warp_top = (i + j) % 2 == 0
    show_w = np.where(warp_top, tw > 0.12, (tw > 0.12) & (tf <= 0.12))
    show_f = ~show_w & (tf > 0.12)
    k = p["var_w"].shape[0]
    var_w = p["var_w"][np.mod(i, k)]
    var_f = p["var_f"][np.mod(j, k)]
    shade_w = (0.45 + 0.55 * tw * (0.72 + 0.28 * np.sin(math.pi * fv)))[..., None]
    shade_f = (0.45 + 0.55 * tf * (0.72 + 0.28 * np.sin(math.pi * fu)))[..., None]
    warp = p["warp"] * shade_w * (1 + var_w)
    weft = p["weft"] * shade_f * (1 + var_f)
    out = np.where(show_w[..., None], warp, np.where(show_f[..., None], weft, p["gap"]))
    return out.astype(_F)


def _render_fabric(rng: np.random.Generator, s: int, seed: int = 0) -> _Scene:
    k = s / 256
    pitch = max(3.0, 8.0 * k) * rng.uniform(0.97, 1.03)
    p = {
        "pitch": pitch,
        "th": math.radians(rng.uniform(-2.0, 2.0)),
        "ox": rng.uniform(0, 2 * pitch),
        "oy": rng.uniform(0, 2 * pitch),
        "wave": 0.2 * pitch * rng.uniform(0.5, 1.0),
        "wave_len": pitch * rng.uniform(25, 40),
        "wave_ph": rng.uniform(0, 2 * math.pi),
        "warp": np.array([0.20, 0.29, 0.47], _F) * rng.uniform(0.95, 1.05, 3).astype(_F),
        "weft": np.array([0.74, 0.72, 0.66], _F) * rng.uniform(0.96, 1.04, 3).astype(_F),
        "gap": np.array([0.05, 0.05, 0.07], _F),
        "var_w": (rng.normal(0, 0.05, (512, 1)) + rng.normal(0, 0.015, (512, 3))).astype(_F),
        "var_f": (rng.normal(0, 0.05, (512, 1)) + rng.normal(0, 0.015, (512, 3))).astype(_F),
    }
    yy, xx = grid(s)
    base = _fabric_base(p, xx, yy)
    fiber = 0.5 * _smooth_noise(rng, (s, s), (2.5 * k + 0.5, 0.4)) + 0.5 * _smooth_noise(
        rng, (s, s), (0.4, 2.5 * k + 0.5)
    )
    light = _lighting(rng, s, 0.07)
    img = base * (1 + 0.05 * fiber[..., None]) * light[..., None] + _gauss(rng, (s, s, 3), 0.012)
    bg = np.array([0.04, 0.04, 0.05], _F) * (1 + 0.5 * _smooth_noise(rng, (s, s), 2.0)[..., None])
    bg = bg + _gauss(rng, (s, s, 3), 0.01)
    return _Scene(img.astype(_F), bg.astype(_F), None, {"pitch": pitch})


def _streaks(rng: np.random.Generator, h: int, w: int, length: int, sigma_y: float) -> np.ndarray:
    n = rng.standard_normal((h, w), dtype=_F)
    n = ndimage.uniform_filter1d(n, length, axis=1, mode="wrap")
    n = ndimage.uniform_filter1d(n, length, axis=1, mode="wrap")
    return _norm(ndimage.gaussian_filter1d(n, sigma_y, axis=0, mode="wrap"))


def _render_metal(rng: np.random.Generator, s: int, seed: int = 0) -> _Scene:
    k = s / 256
    pad = int(0.1 * s) + 4
    h = s + 2 * pad
    tex = 0.045 * _streaks(rng, h, h, max(4, int(40 * k)), 0.6) + 0.03 * _streaks(
        rng, h, h, max(8, int(90 * k)), 2.0 * k + 0.3
    )
    yy, xx = grid(s)
    a = math.tan(math.radians(rng.uniform(-4, 4)))
    tex = ndimage.map_coordinates(tex, [yy + pad + (xx - s / 2) * a, xx + pad], order=1, mode="reflect")
    base = np.array([0.60, 0.61, 0.63], _F) * rng.uniform(0.93, 1.07)
    light = _lighting(rng, s, rng.uniform(0.06, 0.12))
    yb = rng.uniform(0.1, 0.9) * s
    band = 0.10 * np.exp(-(((yy - yb) / (0.16 * s)) ** 2))
    img = (base * light[..., None] + tex[..., None] + band[..., None]) + _gauss(rng, (s, s, 3), 0.008)
    bg = np.full((s, s, 3), 0.04, _F)
    return _Scene(img.astype(_F), bg, None, {})


_PCB_GRID = 16  # design grid: nodes 1..14 of a 16 x 16 lattice over the image


@functools.lru_cache(maxsize=8)
def _pcb_design(seed: int) -> dict:
    """The board design of a data set (fixed per seed, like one product on a line), in grid units."""
    rng = _rng(seed, "pcb_traces", 7_777_777)
    lo, hi = 1, _PCB_GRID - 2
    occ = np.zeros((_PCB_GRID, _PCB_GRID), bool)
    chips, traces, pads = [], [], []
    for _ in range(int(rng.integers(1, 3))):  # IC footprints: body + two pad rows
        cw, ch = int(rng.integers(3, 6)), int(rng.integers(2, 4))
        for _try in range(20):
            cx0, cy0 = int(rng.integers(lo + 1, hi - cw)), int(rng.integers(lo + 1, hi - ch))
            if not occ[cy0 - 1 : cy0 + ch + 2, cx0 - 1 : cx0 + cw + 1].any():
                occ[cy0 - 1 : cy0 + ch + 2, cx0 - 1 : cx0 + cw + 1] = True
                chips.append((cx0, cy0, cw, ch))
                break
    n_target = int(rng.integers(14, 20))
    for _ in range(400):
        if len(traces) >= n_target:
            break
        ix, iy = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        horiz_first = rng.random() < 0.5
        a = int(rng.integers(2, 8)) * (1 if rng.random() < 0.5 else -1)
        b = int(rng.integers(0, 6)) * (1 if rng.random() < 0.5 else -1)
        da = (int(np.sign(a)), 0) if horiz_first else (0, int(np.sign(a)))
        db = (0, int(np.sign(b))) if horiz_first else (int(np.sign(b)), 0)
        path = [(ix + da[0] * t, iy + da[1] * t) for t in range(abs(a) + 1)]
        cx, cy = path[-1]
        path += [(cx + db[0] * t, cy + db[1] * t) for t in range(1, abs(b) + 1)]
        if any(not (lo <= px <= hi and lo <= py <= hi) or occ[py, px] for px, py in path):
            continue
        for px, py in path:
            occ[py, px] = True
        pts = [path[0], (cx, cy), path[-1]]
        if abs(b) >= 1 and rng.random() < 0.7:  # 45-degree chamfer at the corner
            pts = [
                path[0],
                (cx - da[0] * 0.5, cy - da[1] * 0.5),
                (cx + db[0] * 0.5, cy + db[1] * 0.5),
                path[-1],
            ]
        traces.append([(float(x), float(y)) for x, y in pts])
        pads += [tuple(map(float, path[0])), tuple(map(float, path[-1]))]
    return {"chips": chips, "traces": traces, "pads": pads}


def _render_pcb(rng: np.random.Generator, s: int, seed: int = 0) -> _Scene:
    k = s / 256
    g = s / _PCB_GRID
    yy, xx = grid(s)
    board_col = np.array([0.07, 0.33, 0.16], _F) * rng.uniform(0.92, 1.08, 3).astype(_F)
    ph = rng.uniform(0, 2 * math.pi, 2)
    wl = 6 * k + 1
    weave = 0.5 + 0.5 * np.sin(2 * math.pi * xx / wl + ph[0]) * np.sin(2 * math.pi * yy / wl + ph[1])
    board = board_col * (
        1 + 0.06 * weave[..., None] + 0.05 * _smooth_noise(rng, (s, s), 6 * k + 1)[..., None]
    )
    design = _pcb_design(int(seed))
    # Per-image placement jitter: small rotation and shift of the whole board.
    th = math.radians(rng.uniform(-1.5, 1.5))
    shift = rng.uniform(-0.02, 0.02, 2) * s
    cth, sth, c0 = math.cos(th), math.sin(th), s / 2

    def node(gx: float, gy: float) -> tuple[float, float]:
        x, y = (gx + 0.5) * g - c0, (gy + 0.5) * g - c0
        return float(c0 + cth * x - sth * y + shift[0]), float(c0 + sth * x + cth * y + shift[1])

    def quad(gx0: float, gy0: float, gx1: float, gy1: float) -> list[tuple[float, float]]:
        return [node(gx0, gy0), node(gx1, gy0), node(gx1, gy1), node(gx0, gy1)]

    trace_im, pad_im, hole_im = (Image.new("L", (s, s), 0) for _ in range(3))
    chip_im, silk_im = Image.new("L", (s, s), 0), Image.new("L", (s, s), 0)
    dt, dp, dh = ImageDraw.Draw(trace_im), ImageDraw.Draw(pad_im), ImageDraw.Draw(hole_im)
    dc, ds = ImageDraw.Draw(chip_im), ImageDraw.Draw(silk_im)
    tw = max(1, int(round(0.32 * g * rng.uniform(0.9, 1.1))))
    pr, hr = 0.42 * g * rng.uniform(0.95, 1.05), 0.15 * g
    for cx0, cy0, cw, ch in design["chips"]:
        dc.polygon(quad(cx0 - 0.2, cy0 + 0.35, cx0 + cw - 1 + 0.2, cy0 + ch - 0.35), fill=255)
        outline = quad(cx0 - 0.45, cy0 + 0.25, cx0 + cw - 1 + 0.45, cy0 + ch - 0.25)
        ds.line([*outline, outline[0]], fill=255, width=max(1, int(round(1.2 * k))))
        for ix in range(cx0, cx0 + cw):
            for iy in (cy0, cy0 + ch):
                dp.polygon(quad(ix - 0.22, iy - 0.32, ix + 0.22, iy + 0.32), fill=255)
    for pts in design["traces"]:
        dt.line([node(*p) for p in pts], fill=255, width=tw, joint="curve")
    for gx, gy in design["pads"]:
        x, y = node(gx, gy)
        dp.ellipse([x - pr, y - pr, x + pr, y + pr], fill=255)
        dh.ellipse([x - hr, y - hr, x + hr, y + hr], fill=255)

    trace = np.asarray(trace_im) > 0
    pad = np.asarray(pad_im) > 0
    hole = np.asarray(hole_im) > 0
    chip = np.asarray(chip_im) > 0
    silk = np.asarray(silk_im) > 0
    copper = trace | pad
    edge = ndimage.gaussian_filter(copper.astype(_F), 0.8 * k + 0.3)
    cu_col = np.array([0.80, 0.52, 0.27], _F) * rng.uniform(0.94, 1.06)
    au_col = np.array([0.92, 0.78, 0.40], _F) * rng.uniform(0.94, 1.06)
    img = board.copy()
    img = np.where(silk[..., None], np.array([0.88, 0.90, 0.86], _F), img)
    img = np.where(trace[..., None], cu_col * (0.7 + 0.3 * edge[..., None]), img)
    img = np.where(pad[..., None], au_col * (0.75 + 0.25 * edge[..., None]), img)
    img = np.where(chip[..., None], np.array([0.09, 0.09, 0.10], _F), img)
    img = np.where(hole[..., None], np.array([0.03, 0.03, 0.03], _F), img)
    light = _lighting(rng, s, 0.06)[..., None]
    noise = _gauss(rng, (s, s, 3), 0.01)
    out = img * light + noise
    bg = board * light + noise
    info = {
        "trace": trace & ~pad & ~chip,
        "copper": copper | chip,
        "g": g,
        "tw": tw,
        "cu": cu_col,
        "pad_dist": ndimage.distance_transform_edt(~(pad | chip)),
    }
    return _Scene(out.astype(_F), bg.astype(_F), None, info)


def _render_round(rng: np.random.Generator, s: int, seed: int = 0) -> _Scene:
    k = s / 256
    yy, xx = grid(s)
    bcol = np.array([0.30, 0.32, 0.35], _F) * rng.uniform(0.94, 1.06)
    tex = 0.03 * _smooth_noise(rng, (s, s), 0.8 * k + 0.3) + 0.03 * _smooth_noise(rng, (s, s), 20 * k)
    cy, cx = s / 2 + rng.uniform(-0.035, 0.035, 2) * s
    big_r = 0.36 * s * rng.uniform(0.985, 1.015)
    in_r = 0.13 * s
    d = np.hypot(yy - cy, xx - cx)
    phi = np.arctan2(yy - cy, xx - cx)
    off = 4 * k
    shadow = ndimage.gaussian_filter((np.hypot(yy - cy - off, xx - cx - off) < big_r).astype(_F), 4 * k + 0.5)
    light = _lighting(rng, s, 0.05)
    bg = (bcol * (1 + tex[..., None]) * (1 - 0.45 * shadow[..., None])) * light[..., None]

    rot = 0.3 + rng.uniform(-0.25, 0.25)
    alpha = np.clip(big_r - d + 0.5, 0, 1) * np.clip(d - in_r + 0.5, 0, 1)
    hole_r, ring_r = 0.036 * s, 0.245 * s
    for m in range(3):
        hx = cx + ring_r * math.cos(rot + 2 * math.pi * m / 3)
        hy = cy + ring_r * math.sin(rot + 2 * math.pi * m / 3)
        alpha = alpha * np.clip(np.hypot(yy - hy, xx - hx) - hole_r + 0.5, 0, 1)
    # key notch on the inner edge
    nd = (xx - cx) * math.cos(rot) + (yy - cy) * math.sin(rot)
    nt = -(xx - cx) * math.sin(rot) + (yy - cy) * math.cos(rot)
    notch = (nd > 0) & (nd < in_r + 0.035 * s) & (np.abs(nt) < 0.022 * s)
    alpha = alpha * (1 - notch)

    la = rng.uniform(0, 2 * math.pi)
    shade = (
        0.60
        + 0.05 * (d / big_r)
        + 0.10 * np.cos(phi - la) * (d / big_r)
        + 0.025 * np.sin(2 * math.pi * d / (2.6 * k + 1.0) + rng.uniform(0, 6.3))
        + 0.18 * np.exp(-((((big_r - 3 * k) - d) / (2.5 * k + 0.5)) ** 2))
        - 0.15 * np.exp(-(((d - (in_r + 2.5 * k)) / (2.5 * k + 0.5)) ** 2))
    )
    part_col = np.array([0.98, 0.97, 0.93], _F) * rng.uniform(0.95, 1.05)
    part = part_col * shade[..., None] * light[..., None]
    noise = _gauss(rng, (s, s, 3), 0.01)
    img = bg * (1 - alpha[..., None]) + part * alpha[..., None] + noise
    return _Scene(img.astype(_F), (bg + noise).astype(_F), alpha > 0.99, {"c": (cy, cx), "R": big_r})


def _mesh_base(p: dict, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    c, s_ = math.cos(p["th"]), math.sin(p["th"])
    x = xx * c + yy * s_ + p["ox"]
    y = -xx * s_ + yy * c + p["oy"]
    pitch, hw, kk = p["pitch"], p["hw"], p["jx"].shape[0]
    i = np.rint(x / pitch).astype(np.int64)
    j = np.rint(y / pitch).astype(np.int64)
    dx = x - (i * pitch + p["jx"][np.mod(i, kk)]) - p["wave"] * np.sin(y / p["wave_len"] + p["ph_x"])
    dy = y - (j * pitch + p["jy"][np.mod(j, kk)]) - p["wave"] * np.sin(x / p["wave_len"] + p["ph_y"])
    cov_v = np.clip(hw - np.abs(dx) + 0.5, 0, 1)
    cov_h = np.clip(hw - np.abs(dy) + 0.5, 0, 1)
    prof_v = np.clip(1 - (dx / (hw + 0.5)) ** 2, 0, 1)
    prof_h = np.clip(1 - (dy / (hw + 0.5)) ** 2, 0, 1)
    v_top = (i + j) % 2 == 0
    use_v = (cov_v > 0) & (v_top | (cov_h <= 0))
    prof = np.where(use_v, prof_v, prof_h)
    cov = np.maximum(cov_v, cov_h)
    wire = 0.12 + 0.28 * np.sqrt(prof) + 0.35 * prof**12
    # A wire passing under another is shaded darker next to the crossing.
    under = np.where(use_v, ~v_top & (np.abs(dy) < 2.2 * hw + 1), v_top & (np.abs(dx) < 2.2 * hw + 1))
    wire = wire - 0.08 * under
    return np.concatenate([cov[..., None], (wire[..., None] * p["wire_col"])], axis=2).astype(_F)


def _mesh_compose(
    p: dict, base: np.ndarray, bg: np.ndarray, light: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    cov = base[..., :1]
    return (bg * (1 - cov) + base[..., 1:] * cov * light[..., None]) + noise


def _render_mesh(rng: np.random.Generator, s: int, seed: int = 0) -> _Scene:
    k = s / 256
    pitch = max(5.0, 18.0 * k) * rng.uniform(0.98, 1.02)
    p = {
        "pitch": pitch,
        "hw": max(0.6, 2.3 * k),
        "th": math.radians(rng.uniform(-3, 3)),
        "ox": rng.uniform(0, pitch),
        "oy": rng.uniform(0, pitch),
        "jx": rng.normal(0, 0.05 * pitch, 256).astype(_F),
        "jy": rng.normal(0, 0.05 * pitch, 256).astype(_F),
        "wave": 0.04 * pitch,
        "wave_len": pitch * rng.uniform(1.5, 3.0),
        "ph_x": rng.uniform(0, 2 * math.pi),
        "ph_y": rng.uniform(0, 2 * math.pi),
        "wire_col": np.array([0.95, 0.97, 1.0], _F) * rng.uniform(0.92, 1.08),
    }
    yy, xx = grid(s)
    light = _lighting(rng, s, 0.06)
    bg_col = np.array([0.80, 0.82, 0.84], _F) * rng.uniform(0.94, 1.04)
    bg = bg_col * (light * (1 + 0.03 * _smooth_noise(rng, (s, s), 12 * k)))[..., None]
    noise = _gauss(rng, (s, s, 3), 0.01)
    base = _mesh_base(p, xx, yy)
    img = _mesh_compose(p, base, bg, light, noise)
    info = {"params": p, "light": light, "noise": noise, "wires": base[..., 0] > 0.5}
    return _Scene(img.astype(_F), (bg + noise).astype(_F), None, info)


# Each renderer takes (per-image rng, size, data-set seed); only pcb_traces uses the seed (its board design).
_RENDERERS: dict[str, Callable[[np.random.Generator, int, int], _Scene]] = {
    "fabric": _render_fabric,
    "brushed_metal": _render_metal,
    "pcb_traces": _render_pcb,
    "round_part": _render_round,
    "mesh": _render_mesh,
}

# --------------------------------------------------------------------------------------------- defects

Defect = tuple[np.ndarray, np.ndarray]  # (new image, region where it may differ)


def _d_missing(
    sc: _Scene,
    rng: np.random.Generator,
    s: int,
    r_frac: tuple[float, float],
    center: tuple[float, float] | None = None,
    within: np.ndarray | None = None,
) -> Defect:
    cy, cx = center if center is not None else _pick_point(rng, sc.obj, s)
    region = blob_depth(s, cy, cx, rng.uniform(*r_frac) * s, rng, rough=0.35) > 0
    if within is not None:
        region &= within
    return sc.bg, region


def _d_scratch(sc: _Scene, rng: np.random.Generator, s: int, bright: float | None = None) -> Defect:
    k = s / 256
    cy, cx = _pick_point(rng, sc.obj, s, 0.2)
    line = draw_lines(
        s,
        [_curve(rng, s, rng.uniform(0.22, 0.42) * s, (cx, cy), max(1.0, 2 * k))],
        max(1, int(round(rng.uniform(2.0, 3.0) * k))),
    )
    tone = (rng.random() < 0.6) if bright is None else bright
    along = 0.8 + 0.2 * _smooth_noise(rng, (s, s), 6 * k + 1)[..., None]
    new = (sc.img + (1 - sc.img) * 0.7 * along) if tone else sc.img * (1 - 0.7 * along)
    return new, line if sc.obj is None else line & sc.obj


def _d_crack(sc: _Scene, rng: np.random.Generator, s: int) -> Defect:
    k = s / 256
    step = max(1.0, 2.5 * k)
    cy, cx = _pick_point(rng, sc.obj, s, 0.25)
    ang = rng.uniform(0, 2 * math.pi)
    length = rng.uniform(0.18, 0.3) * s
    main = _walk(rng, (cx, cy), ang, length, step)
    back = _walk(rng, (cx, cy), ang + math.pi, length * 0.5, step)
    lines = [main, back]
    for _ in range(int(rng.integers(1, 4))):
        bx, by = main[int(rng.integers(1, len(main)))]
        lines.append(
            _walk(
                rng,
                (bx, by),
                ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1),
                length * rng.uniform(0.25, 0.45),
                step,
            )
        )
    region = draw_lines(s, lines, max(1, int(round(1.6 * k))))
    return sc.img * rng.uniform(0.12, 0.25), region if sc.obj is None else region & sc.obj


def _d_stain(sc: _Scene, rng: np.random.Generator, s: int, color: Sequence[float]) -> Defect:
    k = s / 256
    cy, cx = _pick_point(rng, sc.obj, s)
    depth = blob_depth(s, cy, cx, rng.uniform(0.05, 0.09) * s, rng, rough=0.4)
    a = np.clip(depth / (6 * k + 1.0), 0, 1)
    a = a * (0.8 + 0.2 * _smooth_noise(rng, (s, s), 3 * k + 0.5))
    strength = rng.uniform(0.55, 0.8)
    col = np.asarray(color, _F) * rng.uniform(0.85, 1.15)
    lum = sc.img.mean(axis=2, keepdims=True)
    aa = np.clip(a * strength, 0, 1)[..., None]
    new = sc.img * (1 - aa) + aa * col * (0.6 + 0.8 * lum)
    region = a > 0.15
    return new, region if sc.obj is None else region & sc.obj


def _d_specks(
    sc: _Scene, rng: np.random.Generator, s: int, palette: Sequence[Sequence[float]], big: bool = False
) -> Defect:
    k = s / 256
    cy, cx = _pick_point(rng, sc.obj, s)
    spread = rng.uniform(0.03, 0.055) * s
    n = int(rng.integers(7, 15))
    centers = [(cx + rng.normal(0, spread), cy + rng.normal(0, spread)) for _ in range(n)]
    radii = [max(1.0, rng.uniform(1.3, 3.4) * k) for _ in range(n)]
    if big:
        centers.append((cx, cy))
        radii.append(max(2.0, rng.uniform(6, 9) * k))
    new = sc.img.copy()
    region = np.zeros((s, s), bool)
    for c, r in zip(centers, radii, strict=True):
        disk = _disks(s, [c], [r])
        col = np.asarray(palette[int(rng.integers(len(palette)))], _F) * rng.uniform(0.85, 1.15)
        new[disk] = col + rng.normal(0, 0.02, (int(disk.sum()), 3))
        region |= disk
    return new, region if sc.obj is None else region & sc.obj


def _d_dent(sc: _Scene, rng: np.random.Generator, s: int) -> Defect:
    cy, cx = _pick_point(rng, None, s)
    r = rng.uniform(0.045, 0.075) * s
    depth = blob_depth(s, cy, cx, r, rng, rough=0.2)
    a = np.clip(depth / (0.5 * r), 0, 1) ** 0.7
    yy, xx = grid(s)
    la = rng.uniform(0, 2 * math.pi)
    grad = np.clip(((xx - cx) * math.cos(la) + (yy - cy) * math.sin(la)) / r, -1, 1)
    new = sc.img + (a * (0.4 * grad - 0.12))[..., None]
    return new, a > 0.12


def _d_thread(sc: _Scene, rng: np.random.Generator, s: int) -> Defect:
    k = s / 256
    cols = ([0.75, 0.10, 0.08], [0.95, 0.80, 0.10], [0.08, 0.08, 0.08], [0.10, 0.55, 0.20])
    col = np.asarray(cols[int(rng.integers(len(cols)))], _F)
    line = draw_lines(
        s,
        [_curve(rng, s, rng.uniform(0.25, 0.45) * s, None, max(1.0, 2 * k))],
        max(1, int(round(rng.uniform(2.0, 3.0) * k))),
    )
    tex = 0.8 + 0.2 * _smooth_noise(rng, (s, s), 1.0)[..., None]
    return np.broadcast_to(col, sc.img.shape) * tex, line


def _d_open(sc: _Scene, rng: np.random.Generator, s: int) -> Defect:
    r = max(1.5, rng.uniform(0.55, 0.8) * sc.info["g"])
    # Cut the trace away from its pads, so the gap leaves two dangling trace ends.
    eligible = sc.info["trace"] & (sc.info["pad_dist"] > r + 1.5)
    cy, cx = _pick_point(rng, eligible if eligible.any() else sc.info["trace"], s, 0.08)
    region = (blob_depth(s, cy, cx, r, rng, rough=0.3) > 0) & sc.info["copper"]
    return sc.bg, region


def _d_short(sc: _Scene, rng: np.random.Generator, s: int) -> Defect:
    g, tw = sc.info["g"], sc.info["tw"]
    cy, cx = _pick_point(rng, sc.info["trace"], s, 0.08)
    ang = rng.integers(0, 4) * math.pi / 2 + rng.normal(0, 0.15)
    ln = rng.uniform(1.0, 1.7) * g
    end = (cx + ln * math.cos(ang), cy + ln * math.sin(ang))
    region = draw_lines(s, [[(cx, cy), end]], max(1, int(round(tw * rng.uniform(0.7, 1.1)))))
    region |= blob_depth(s, end[1], end[0], max(1.0, rng.uniform(0.35, 0.5) * g), rng, rough=0.6) > 0
    new = np.broadcast_to(sc.info["cu"] * 0.92, sc.img.shape) + _gauss(rng, sc.img.shape, 0.015)
    return new.astype(_F), region & ~sc.info["copper"]


def _d_bent(sc: _Scene, rng: np.random.Generator, s: int) -> Defect:
    p = sc.info["params"]
    cy, cx = _pick_point(rng, None, s)
    yy, xx = grid(s)
    sig = p["pitch"] * rng.uniform(0.7, 1.0)
    amp = p["pitch"] * rng.uniform(0.55, 0.75)
    ang = rng.uniform(0, 2 * math.pi)
    w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig * sig))
    base = _mesh_base(p, xx - amp * w * math.cos(ang), yy - amp * w * math.sin(ang))
    bg = sc.bg - sc.info["noise"]
    new = _mesh_compose(p, base, bg, sc.info["light"], sc.info["noise"])
    return new, amp * w > 0.25


def _d_broken(sc: _Scene, rng: np.random.Generator, s: int) -> Defect:
    pitch = sc.info["params"]["pitch"]
    cy, cx = _pick_point(rng, sc.info["wires"], s)
    r = rng.uniform(0.5, 0.9) * pitch
    return sc.bg, blob_depth(s, cy, cx, r, rng, rough=0.4) > 0


_RUST = [0.55, 0.25, 0.08]
_OIL = [0.18, 0.13, 0.07]


def _apply_defect(cat: str, kind: str, sc: _Scene, rng: np.random.Generator, s: int) -> Defect:
    """Dispatch one defect type of one category."""
    if cat == "fabric":
        if kind == "hole":
            return _d_missing(sc, rng, s, (0.035, 0.06))
        if kind == "stain":
            return _d_stain(sc, rng, s, [0.42, 0.24, 0.06])
        return _d_thread(sc, rng, s)
    if cat == "brushed_metal":
        if kind == "scratch":
            return _d_scratch(sc, rng, s)
        if kind == "dent":
            return _d_dent(sc, rng, s)
        if kind == "rust":
            return _d_stain(sc, rng, s, _RUST)
        return _d_specks(sc, rng, s, ([0.1, 0.1, 0.1], _RUST, [0.9, 0.9, 0.85], [0.2, 0.35, 0.6]))
    if cat == "pcb_traces":
        if kind == "open":
            return _d_open(sc, rng, s)
        if kind == "short":
            return _d_short(sc, rng, s)
        if kind == "contamination":
            return _d_specks(sc, rng, s, ([0.92, 0.92, 0.88], [0.05, 0.05, 0.05], [0.6, 0.45, 0.2]))
        return _d_scratch(sc, rng, s, bright=True)
    if cat == "round_part":
        if kind == "missing_piece":
            cy, cx = sc.info["c"]
            a = rng.uniform(0, 2 * math.pi)
            rim = (cy + sc.info["R"] * math.sin(a), cx + sc.info["R"] * math.cos(a))
            return _d_missing(sc, rng, s, (0.05, 0.08), center=rim, within=sc.obj)
        if kind == "crack":
            return _d_crack(sc, rng, s)
        if kind == "scratch":
            return _d_scratch(sc, rng, s)
        return _d_stain(sc, rng, s, _OIL)
    if cat == "mesh":
        if kind == "broken":
            return _d_broken(sc, rng, s)
        if kind == "bent":
            return _d_bent(sc, rng, s)
        return _d_specks(sc, rng, s, ([0.35, 0.22, 0.10], [0.15, 0.12, 0.08], _RUST), big=True)
    raise ConfigError(f"unknown synthetic category {cat!r}")


# ------------------------------------------------------------------------------------------ public API


def _rng(seed: int, cat: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(cat.encode()), *keys])
    )


def render_sample(
    category: str, index: int, image_size: int = 256, seed: int = 0, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one image as ``(uint8 H x W x 3, uint8 H x W mask in {0, 1})``, deterministic in its arguments.

    ``defect=None`` gives a normal image (all-zero mask); otherwise one of ``DEFECT_TYPES[category]``.
    The anomalous image equals the normal image of the same ``index`` outside its (nonzero) mask.
    """
    if category not in _RENDERERS:
        raise ConfigError(
            f"unknown synthetic category {category!r}; choose from {', '.join(SYNTHETIC_CATEGORIES)}"
        )
    if defect is not None and defect not in DEFECT_TYPES[category]:
        raise ConfigError(
            f"unknown defect {defect!r} for {category}; choose from {', '.join(DEFECT_TYPES[category])}"
        )
    s = int(image_size)
    scene = _RENDERERS[category](_rng(seed, category, int(index), 0), s, int(seed))
    normal = to_u8(scene.img)
    if defect is None:
        return normal, np.zeros((s, s), np.uint8)
    min_area = max(6, int(0.0012 * s * s))
    drng = _rng(seed, category, int(index), 1 + DEFECT_TYPES[category].index(defect))
    best: tuple[np.ndarray, np.ndarray] | None = None
    for _ in range(12):
        new, region = _apply_defect(category, defect, scene, drng, s)
        new8 = to_u8(np.asarray(new, _F))
        changed = region & (new8 != normal).any(axis=2)
        if best is None or changed.sum() > best[1].sum():
            best = (np.where(changed[..., None], new8, normal), changed.astype(np.uint8))
        if changed.sum() >= min_area:
            break
    assert best is not None
    if not best[1].any():  # practically unreachable; keeps the 'anomalies have nonzero masks' promise
        raise DataError(f"could not place a visible {defect} defect on {category} image {index}")
    return best


def _resolve_categories(categories: int | Sequence[str]) -> list[str]:
    if isinstance(categories, (int, np.integer)) and not isinstance(categories, bool):
        n = int(categories)
        if not 1 <= n <= len(SYNTHETIC_CATEGORIES):
            raise ConfigError(
                f"number of synthetic categories must be 1..{len(SYNTHETIC_CATEGORIES)}, got {n}"
            )
        return list(SYNTHETIC_CATEGORIES[:n])
    names = [c.strip() for c in categories.split(",")] if isinstance(categories, str) else list(categories)
    names = [c for c in names if c]
    bad = [c for c in names if c not in SYNTHETIC_CATEGORIES]
    if bad or not names:
        raise ConfigError(
            f"unknown synthetic categor{'ies' if len(bad) > 1 else 'y'} {', '.join(bad) or '(none)'}; "
            f"choose from {', '.join(SYNTHETIC_CATEGORIES)}"
        )
    return list(dict.fromkeys(names))


def _save_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def generate_synthetic(
    out_dir: str | os.PathLike[str],
    categories: int | Sequence[str] = 5,
    n_train: int = 60,
    n_test: int = 30,
    image_size: int = 256,
    seed: int = 0,
    anomaly_fraction: float = 0.5,
    progress: bool = True,
) -> Path:
    """Write a synthetic MVTec-layout data set to ``out_dir`` and return its path.

    ``categories`` is a count (the first N of :data:`SYNTHETIC_CATEGORIES`) or names. Each category gets
    ``n_train`` normal training images and ``n_test`` test images, ``round(n_test * anomaly_fraction)`` of
    them anomalous (defect types in turn) with ``ground_truth/<defect>/<stem>_mask.png`` (0/255). The same
    arguments give byte-identical files. The set is built in a temporary folder and swapped in whole; an
    existing ``out_dir`` is only replaced if it is empty or an earlier synthetic set (has ``synthetic.json``).
    """
    cats = _resolve_categories(categories)
    if int(n_train) < 1 or int(n_test) < 0:
        raise ConfigError(f"need n_train >= 1 and n_test >= 0, got n_train={n_train}, n_test={n_test}")
    if not 32 <= int(image_size) <= 4096:
        raise ConfigError(f"synthetic image_size must be in 32..4096, got {image_size}")
    if not 0.0 <= float(anomaly_fraction) <= 1.0:
        raise ConfigError(f"anomaly_fraction must be in [0, 1], got {anomaly_fraction}")
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder; choose another --out")
        if any(out.iterdir()) and not (out / MARKER_FILE).is_file():
            raise DataError(
                f"{out}: folder is not empty and not a synthetic data set; refusing to replace it "
                "(choose an empty or new folder)"
            )
    s = int(image_size)
    n_anom = int(round(n_test * float(anomaly_fraction)))
    n_good = int(n_test) - n_anom
    meta = {
        "generator": "anomopt.data.synthetic",
        "version": 1,
        "seed": int(seed),
        "image_size": s,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "anomaly_fraction": float(anomaly_fraction),
        "categories": {c: list(DEFECT_TYPES[c]) for c in cats},
    }
    total = len(cats) * (int(n_train) + int(n_test))
    with atomic_dir(out) as tmp, tqdm(total=total, desc="synthetic", unit="img", disable=not progress) as bar:
        for cat in cats:
            root = tmp / cat
            (root / "train" / "good").mkdir(parents=True)
            if n_test > 0:
                (root / "test" / "good").mkdir(parents=True)
            for i in range(int(n_train)):
                img, _ = render_sample(cat, i, s, seed)
                _save_png(root / "train" / "good" / f"{i:03d}.png", img)
                bar.update(1)
            for i in range(n_good):
                img, _ = render_sample(cat, 100000 + i, s, seed)
                _save_png(root / "test" / "good" / f"{i:03d}.png", img)
                bar.update(1)
            counts: dict[str, int] = {}
            for a in range(n_anom):
                kind = DEFECT_TYPES[cat][a % len(DEFECT_TYPES[cat])]
                j = counts.get(kind, 0)
                counts[kind] = j + 1
                img, mask = render_sample(cat, 200000 + a, s, seed, defect=kind)
                (root / "test" / kind).mkdir(exist_ok=True)
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                _save_png(root / "test" / kind / f"{j:03d}.png", img)
                _save_png(root / "ground_truth" / kind / f"{j:03d}_mask.png", mask * np.uint8(255))
                bar.update(1)
        (tmp / MARKER_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
