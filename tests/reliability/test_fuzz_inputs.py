"""Fuzzing (hypothesis): random bytes, random image modes and sizes, random arrays and random meta.json
edits, fed to the image loaders, `anomopt predict`'s reader and the runtime Predictor. Each either gives
a valid result or raises an :class:`~anomopt.errors.AnomoptError`; never any other exception."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomopt.cli.predict_cmd import _read
from anomopt.data.images import read_image
from anomopt.errors import AnomoptError
from anomopt.runtime import Predictor, load_image
from reliability.helpers import SIZE

# 40 cases per test keeps the suite fast; ANOMOPT_FUZZ_EXAMPLES=2000 runs a deeper search.
FUZZ = settings(
    max_examples=int(os.environ.get("ANOMOPT_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# (PIL mode, file formats that can hold it)
MODES = [
    ("1", ["PNG", "BMP", "TIFF"]),
    ("L", ["PNG", "BMP", "TIFF", "JPEG"]),
    ("P", ["PNG", "BMP", "TIFF"]),
    ("RGB", ["PNG", "BMP", "TIFF", "JPEG"]),
    ("RGBA", ["PNG", "TIFF"]),
    ("LA", ["PNG"]),
    ("I", ["TIFF"]),
    ("I;16", ["PNG", "TIFF"]),
    ("F", ["TIFF"]),
    ("CMYK", ["JPEG", "TIFF"]),
]
SUFFIX = {"PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "JPEG": ".jpg"}


def _image_bytes(mode: str, fmt: str, w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if mode in ("I", "I;16"):
        im = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16 if mode == "I;16" else np.int32))
    elif mode == "F":
        im = Image.fromarray(rng.normal(0, 100, (h, w)).astype(np.float32))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    mode, formats = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(formats))
    w, h = draw(st.integers(1, 90)), draw(st.integers(1, 90))
    data = _image_bytes(mode, fmt, w, h, draw(st.integers(0, 2**16)))
    damage = draw(st.sampled_from(["none", "truncate", "flip", "random"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] = draw(st.integers(0, 255))
        data = bytes(buf)
    elif damage == "random":
        data = draw(st.binary(min_size=0, max_size=600))
    return SUFFIX[fmt], data


def _check_image(img: np.ndarray, hw: tuple[int, int] | None) -> None:
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    if hw is not None:
        assert img.shape[:2] == hw
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0


@FUZZ
@given(image_files())
def test_image_loaders_fuzz(case):
    suffix, data = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x{suffix}"
        path.write_bytes(data)
        for load in (lambda: read_image(path, SIZE), lambda: load_image(path, SIZE)):
            try:
                img = load()
            except AnomoptError as err:
                assert str(path) in str(err)
            else:
                _check_image(img, (SIZE, SIZE))
        image, original, reason = _read(path, SIZE)  # `anomopt predict`: a reason instead of an exception
        if reason is None:
            _check_image(image, (SIZE, SIZE))
            assert original is not None and min(original) >= 1
        else:
            assert image is None and str(path) in reason


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.bool_, np.float16]))
    batched = draw(st.booleans())
    layout = draw(st.sampled_from(["hwc", "chw", "hw"]))
    channels = draw(st.sampled_from([1, 3, 4]))
    side = draw(st.sampled_from([SIZE, SIZE, SIZE - 1, 1]))
    shape = {"hwc": (side, side, channels), "chw": (channels, side, side), "hw": (side, side)}[layout]
    if batched:
        shape = (draw(st.integers(0, 3)), *shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1.0, 255.0, -1.0]))
    arr = (rng.random(shape) * scale).astype(dtype)
    if np.issubdtype(arr.dtype, np.floating) and arr.size and draw(st.booleans()):
        arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return arr


@FUZZ
@given(arrays(), st.sampled_from([None, "fabric", "unknown"]))
def test_predictor_arrays_fuzz(tiny_predictor, arr, category):
    try:
        preds = tiny_predictor.predict(arr, category=category)
    except AnomoptError:
        return
    assert len(preds) == (arr.shape[0] if arr.ndim == 4 else 1)
    for p in preds:
        assert np.isfinite(p.score) and np.isfinite(p.normalized_score)
        assert p.map.shape == (SIZE, SIZE) and p.mask.dtype == bool


@pytest.fixture(scope="module")
def tiny_predictor(tiny_artifact) -> Predictor:
    return Predictor(tiny_artifact, threads=1)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([float("nan"), float("inf"), 0, -1, 64, "64", "", "../model.onnx"])
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    """Every key path of a JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


@FUZZ
@given(st.data())
def test_meta_json_edits_fuzz(tiny_artifact, data):
    meta = json.loads((tiny_artifact / "meta.json").read_text())
    paths = list(_paths(meta))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = meta
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = data.draw(st.sampled_from(["set", "delete", "add"]))
            if action == "delete":
                del parent[path[-1]]
            elif action == "add" and isinstance(parent, dict):
                parent[data.draw(st.text(max_size=6))] = data.draw(JSON_VALUES)
            else:
                parent[path[-1]] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    with tempfile.TemporaryDirectory() as d:
        art = Path(d) / "art"
        art.mkdir()
        for f in tiny_artifact.iterdir():
            if f.name != "meta.json":
                os.symlink(f, art / f.name)
        (art / "meta.json").write_text(json.dumps(meta))
        try:
            predictor = Predictor(art, threads=1)
        except AnomoptError:
            return
        image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        for category in (None, "fabric", "other"):
            try:
                (pred,) = predictor.predict(image, category=category)
            except AnomoptError:
                continue
            assert np.isfinite(pred.score) and isinstance(pred.is_anomalous, bool)
