"""Calibration sets: normal training images, random-normal noise, or both mixed (the paper's comparison).

Random-normal noise is drawn as N(0, 1) in the teacher's *normalised* input space and mapped back to
pixel space (``x = mean + std * z``, not clipped), so it covers activations that normal images never
reach. Test images are never used.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from anomopt.errors import ConfigError, DataError
from anomopt.models.backbones import get_backbone_config

SOURCES = ("train", "noise", "mixed")


def noise_images(n: int, image_size: int, backbone: str, seed: int = 0) -> torch.Tensor:
    """``n`` random-normal images for a backbone's normalisation, deterministic by seed."""
    cfg = get_backbone_config(backbone)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, image_size, image_size, generator=gen)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return mean + std * z


def sample_images(data: Dataset | torch.Tensor, n: int, seed: int = 0, exclude: int = 0) -> torch.Tensor:
    """A seeded random subset of ``n`` images (the last ``exclude`` items are never chosen)."""
    total = len(data) - exclude  # type: ignore[arg-type]
    if total <= 0:
        raise DataError("the calibration data set is empty")
    if isinstance(data, torch.Tensor) and data.is_floating_point() and not torch.isfinite(data).all():
        bad = (~torch.isfinite(data.reshape(len(data), -1))).any(1).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise DataError(
            f"calibration images hold NaN or Inf values ({len(bad)} of {len(data)} images: index {shown}); "
            "pass finite pixel values in [0, 1]"
        )
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: min(n, total)].tolist()
    if isinstance(data, torch.Tensor):
        images, names = data[idx], [f"index {i}" for i in idx]
    else:
        idx = sorted(idx)
        items = [data[i] for i in idx]
        images = torch.stack([it["image"] for it in items])
        names = [str(it.get("path", f"index {i}")) for i, it in zip(idx, items)]
    _refuse_constant(images, names)
    return images


def _refuse_constant(images: torch.Tensor, names: list[str]) -> None:
    """A constant image (every pixel the same) has no range: it skews INT8 calibration, so refuse it."""
    if not len(images):
        return
    flat = images.reshape(len(images), -1).float()
    constant = ((flat.amax(1) - flat.amin(1)) == 0).nonzero().flatten().tolist()
    if constant:
        first = constant[0]
        raise DataError(
            f"{names[first]}: calibration image is constant (every pixel {float(flat[first, 0]):.4g}; "
            f"{len(constant)} of {len(images)} such images): it carries no range information and skews the "
            "INT8 ranges; remove constant images from the calibration data"
        )


def build_calibration_images(
    source: str,
    data: Dataset | torch.Tensor | None,
    n: int,
    image_size: int,
    backbone: str,
    seed: int = 0,
    exclude: int = 0,
) -> torch.Tensor:
    """The calibration batch for ``source`` in {train, noise, mixed}."""
    if source not in SOURCES:
        raise ConfigError(f"calib_source must be one of {', '.join(SOURCES)}, not {source!r}")
    if n <= 0:
        raise ConfigError(f"calib_samples must be positive, not {n}")
    if source == "noise":
        return noise_images(n, image_size, backbone, seed)
    if data is None:
        raise ConfigError(f"calib_source={source!r} needs normal training images (calib=...)")
    if source == "train":
        images = sample_images(data, n, seed, exclude)
    else:
        real = sample_images(data, n - n // 2, seed, exclude)
        images = torch.cat([real, noise_images(n // 2, image_size, backbone, seed)])
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        raise DataError(
            f"calibration images are {tuple(images.shape[-2:])}, the model takes {image_size}x{image_size}"
        )
    return images
