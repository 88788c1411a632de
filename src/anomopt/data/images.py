"""Decode images and masks into float arrays, with one clear :class:`DataError` for every bad file.

Images come back as float32 ``H x W x 3`` RGB in ``[0, 1]`` and masks as float32 ``H x W`` in ``{0, 1}``,
whatever the file held: grayscale, RGB, RGBA/LA (composited on black), palette, 16-bit or 32-bit
grayscale, CMYK. A ``size`` is either an ``int`` (square) or a ``(height, width)`` tuple.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomopt.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_mask_matches_image",
    "image_size_of",
    "read_image",
    "read_mask",
    "read_model_input",
]

#: File extensions (lower case, with dot) treated as images when scanning folders.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

Size = int | tuple[int, int] | None

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _target_hw(size: Size) -> tuple[int, int] | None:
    """Normalize ``size`` to ``(height, width)``; ``None`` keeps the original size."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = int(size[0]), int(size[1])
    else:
        raise DataError(f"image size must be an int or a (height, width) pair, got {size!r}")
    if h <= 0 or w <= 0:
        raise DataError(f"image size must be positive, got {size!r}")
    return h, w


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an image file")
    try:
        nbytes = path.stat().st_size
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err
    if nbytes == 0:
        raise DataError(f"{path}: empty file (0 bytes)")


def _load(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode ``path`` (PIL is lazy; truncated data only fails on ``load``)."""
    p = Path(path)
    _check_file(p)
    try:
        with Image.open(p) as im:
            im.load()
            return im
    except DataError:
        raise
    except UnidentifiedImageError as err:
        raise DataError(f"{p}: not a recognized image format (corrupt file or not an image)") from err
    except Image.DecompressionBombError as err:
        raise DataError(f"{p}: image too large to decode safely ({err})") from err
    except PermissionError as err:
        raise DataError(f"{p}: cannot read file (permission denied)") from err
    except Exception as err:  # OSError, SyntaxError, ValueError, EOFError, zlib errors from plugins
        raise DataError(f"{p}: cannot decode image (truncated file?): {err}") from err


def _scale_high_bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map 16/32-bit integer or float pixels to float32 in [0, 1]."""
    a = arr.astype(np.float64)
    if mode.startswith("I;16"):
        return (a / 65535.0).astype(np.float32)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        return a.astype(np.float32)
    if lo >= 0.0 and hi <= 255.0 and mode == "F":
        return (a / 255.0).astype(np.float32)
    if lo >= 0.0 and hi <= 65535.0:
        return (a / 65535.0).astype(np.float32)
    # Values outside any standard range: stretch to [0, 1].
    span = hi - lo
    return ((a - lo) / span if span > 0 else np.zeros_like(a)).astype(np.float32)


def _resize_float(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 H x W array (PIL mode F, so no 8-bit quantization)."""
    if arr.shape == hw:
        return arr
    out = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(out.resize((hw[1], hw[0]), Image.BILINEAR), dtype=np.float32)


def _to_rgb8(im: Image.Image) -> Image.Image:
    """Convert an 8-bit PIL image of any mode to RGB; alpha is composited on black."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, im).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def _decode_rgb(path: str | os.PathLike[str], size: Size) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` to (array, original (width, height)); array is uint8 or float32 H x W x 3."""
    hw = _target_hw(size)
    im = _load(path)
    orig = im.size
    try:
        if im.mode in _HIGH_BIT_MODES:
            gray = _scale_high_bit(np.asarray(im), im.mode)
            if hw is not None:
                gray = _resize_float(gray, hw)
            return np.repeat(gray[:, :, None], 3, axis=2), orig
        rgb = _to_rgb8(im)
        if hw is not None and (rgb.height, rgb.width) != hw:
            rgb = rgb.resize((hw[1], hw[0]), Image.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8), orig
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{Path(path)}: cannot convert image (mode {im.mode}) to RGB: {err}") from err


def read_image_uint8(path: str | os.PathLike[str], size: Size = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Read ``path`` as uint8 ``H x W x 3`` RGB (high-bit images are rounded to 8 bit).

    Returns ``(array, (orig_width, orig_height))``; used by the data set's in-memory cache.
    """
    arr, orig = _decode_rgb(path, size)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    return arr, orig


def read_image(path: str | os.PathLike[str], size: Size = None) -> np.ndarray:
    """Read an image as float32 ``H x W x 3`` RGB in ``[0, 1]``, resized bilinearly to ``size``.

    ``size`` is an int (square), a ``(height, width)`` pair, or ``None`` (keep). High-bit images keep
    their full precision here; models see :func:`read_model_input` instead. Raises :class:`DataError`
    naming ``path`` if the file is missing, empty, truncated or not decodable.
    """
    arr, _ = _decode_rgb(path, size)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    return np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)


def read_model_input(path: str | os.PathLike[str], size: Size = None) -> np.ndarray:
    """The pixels a model sees: float32 ``H x W x 3`` RGB in ``[0, 1]`` on the 8-bit grid.

    The one reader of model inputs: training data sets (their uint8 cache), ``anomopt predict``,
    ``anomopt evaluate`` and :func:`anomopt.runtime.load_image` all decode through
    :func:`read_image_uint8`, so a deployed model sees exactly the pixels it was trained and
    thresholded on. 16-bit files are scaled by their bit depth (``/65535``) whatever their values.
    """
    arr, _ = read_image_uint8(path, size)
    return arr.astype(np.float32) / np.float32(255.0)


def _mask_values(path: Path, im: Image.Image) -> np.ndarray:
    """Single-channel mask values (max over color channels, alpha ignored)."""
    if im.mode in _HIGH_BIT_MODES or im.mode in ("L", "1"):
        arr = np.asarray(im.convert("L") if im.mode == "1" else im)
        return arr
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode not in ("RGB", "RGBA", "LA"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if im.mode in ("RGBA", "LA"):
        arr = arr[..., :-1]
    return arr.max(axis=2)


def read_mask_with_size(
    path: str | os.PathLike[str], size: Size = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Like :func:`read_mask` but also returns the original ``(width, height)``; mask is uint8 0/1."""
    p = Path(path)
    hw = _target_hw(size)
    im = _load(p)
    orig = im.size
    try:
        arr = _mask_values(p, im)
    except Exception as err:
        raise DataError(f"{p}: cannot convert mask (mode {im.mode}) to one channel: {err}") from err
    if arr.dtype == np.uint8:
        vals = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    else:
        vals = np.unique(arr)
    if vals.size > 2:
        shown = ", ".join(f"{v:g}" for v in vals[:6].tolist()) + (", ..." if vals.size > 6 else "")
        hint = " (JPEG-compressed or antialiased mask? save masks as PNG with 0 and 255)"
        raise DataError(f"{p}: mask is not binary: {vals.size} distinct values ({shown}){hint}")
    if vals.size == 2 and vals[0] != 0:
        raise DataError(
            f"{p}: mask is not binary: values {vals[0]:g} and {vals[1]:g}; expected 0 (normal) and one "
            "foreground value (e.g. 255)"
        )
    binary = (arr > 0).astype(np.uint8)
    if hw is not None and binary.shape != hw:
        binary = np.asarray(Image.fromarray(binary, mode="L").resize((hw[1], hw[0]), Image.NEAREST))
    return binary, orig


def read_mask(path: str | os.PathLike[str], size: Size = None) -> np.ndarray:
    """Read a binary defect mask as float32 ``H x W`` in ``{0, 1}``, resized with nearest neighbour.

    Any nonzero value is foreground. Multi-channel masks take the max over color channels. A mask with
    more than two distinct values, or two values of which the smaller is not 0, raises :class:`DataError`.
    """
    binary, _ = read_mask_with_size(path, size)
    return binary.astype(np.float32)


def image_size_of(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (cheap); :class:`DataError` if unreadable."""
    p = Path(path)
    _check_file(p)
    try:
        with Image.open(p) as im:
            return im.size
    except UnidentifiedImageError as err:
        raise DataError(f"{p}: not a recognized image format (corrupt file or not an image)") from err
    except Exception as err:
        raise DataError(f"{p}: cannot read image header: {err}") from err


def check_mask_matches_image(mask_path: str | os.PathLike[str], image_path: str | os.PathLike[str]) -> None:
    """Raise :class:`DataError` naming both files if the mask's original size differs from the image's."""
    mw, mh = image_size_of(mask_path)
    iw, ih = image_size_of(image_path)
    if (mw, mh) != (iw, ih):
        raise DataError(
            f"mask {Path(mask_path)} is {mw}x{mh} but image {Path(image_path)} is {iw}x{ih} "
            "(width x height); a mask must have exactly its image's size"
        )
