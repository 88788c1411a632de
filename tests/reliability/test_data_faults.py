"""Bad data must give a DataError naming the file and the fault (library and `anomopt train`), never a raw
PIL/numpy/torch exception; odd but valid images (16-bit PNG, CMYK JPEG) must load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomopt.cli.main import main
from anomopt.data import generate_synthetic, load_mvtec, read_image, read_mask
from anomopt.errors import DataError

SIZE = 64
CAT = "fabric"  # generate_synthetic(categories=1) makes this category


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "data"
    generate_synthetic(root, categories=1, n_train=3, n_test=3, image_size=SIZE, seed=0, progress=False)
    assert (root / CAT).is_dir()
    return root


@pytest.fixture
def data(pristine, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return root


def _items(root: Path, split: str) -> list[dict]:
    return list(load_mvtec(root, "all", split=split, image_size=SIZE, val_fraction=0.0))


def _train_png(root: Path) -> Path:
    return sorted((root / CAT / "train" / "good").glob("*.png"))[0]


def _first_mask(root: Path) -> Path:
    return sorted((root / CAT / "ground_truth").rglob("*.png"))[0]


def _cli_train(root: Path, out: Path, capsys) -> tuple[int, str]:
    rc = main(
        [
            "train",
            "--model",
            "stfpm",
            "--data",
            str(root),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--image-size",
            str(SIZE),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    return rc, "".join(line for line in err.splitlines(keepends=True) if not line.startswith("anomopt: warning:"))


# ----------------------------------------------------------------------------------------------- images


def test_truncated_image_names_the_file(data):
    f = _train_png(data)
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(DataError, match=rf"{f.name}: cannot decode image \(truncated"):
        read_image(f, SIZE)
    with pytest.raises(DataError, match=f.name):
        _items(data, "train")


def test_zero_byte_image_names_the_file(data):
    f = _train_png(data)
    f.write_bytes(b"")
    with pytest.raises(DataError, match=rf"{f.name}: empty file \(0 bytes\)"):
        read_image(f, SIZE)
    with pytest.raises(DataError, match=f.name):
        _items(data, "train")


def test_garbage_bytes_are_not_an_image(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(DataError, match="x.png: not a recognized image format"):
        read_image(f)


def test_16bit_png_loads(tmp_path):
    ramp = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 50).astype(np.uint16)
    f = tmp_path / "deep.png"
    Image.fromarray(ramp).save(f)
    assert Image.open(f).mode.startswith("I")
    img = read_image(f, 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0 and img.max() > 0.5  # scaled from 16 bit, not clipped
    assert np.allclose(img[..., 0], img[..., 1])


def test_cmyk_jpeg_loads(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    f = tmp_path / "print.jpg"
    Image.fromarray(rgb).convert("CMYK").save(f, quality=95)
    assert Image.open(f).mode == "CMYK"
    img = read_image(f)
    assert img.shape == (30, 40, 3) and np.isfinite(img).all()
    assert np.abs(img - rgb / 255.0).mean() < 0.1


def test_16bit_and_cmyk_images_in_a_data_set_load(data):
    files = sorted((data / CAT / "train" / "good").glob("*.png"))
    Image.fromarray(np.asarray(Image.open(files[0]).convert("L"), np.uint16) * 257).save(files[0])
    Image.open(files[1]).convert("CMYK").save(files[1].with_suffix(".jpg"))
    files[1].unlink()
    items = _items(data, "train")
    assert len(items) == 3
    assert all(tuple(it["image"].shape) == (3, SIZE, SIZE) for it in items)


_PNG_BYTES: dict[str, bytes] = {}


def _png_bytes() -> bytes:
    if "b" not in _PNG_BYTES:
        import io

        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
        _PNG_BYTES["b"] = buf.getvalue()
    return _PNG_BYTES["b"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_random_png_corruption_is_data_error_or_loads(tmp_path, edits, cut):
    raw = bytearray(_png_bytes())
    for pos, val in edits:
        raw[pos % len(raw)] = val
    if cut is not None:
        raw = raw[: cut % len(raw)]
    f = tmp_path / "fuzz.png"
    f.write_bytes(bytes(raw))
    try:
        img = read_image(f, 16)
    except DataError as err:
        assert "fuzz.png" in str(err)
    else:
        assert img.shape == (16, 16, 3) and np.isfinite(img).all()
        assert img.min() >= 0.0 and img.max() <= 1.0


# ----------------------------------------------------------------------------------------------- masks


def test_non_binary_mask(data):
    m = _first_mask(data)
    Image.fromarray((np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 5 * 40).astype(np.uint8)).save(m)
    with pytest.raises(DataError, match=rf"{m.name}: mask is not binary"):
        read_mask(m)
    with pytest.raises(DataError, match=rf"{m.name}: mask is not binary"):
        _items(data, "test")


def test_mask_of_the_wrong_size(data):
    m = _first_mask(data)
    Image.fromarray(np.zeros((20, 17), np.uint8)).save(m)
    with pytest.raises(DataError, match=rf"{m.name} is 17x20 but image .* a mask must have exactly"):
        _items(data, "test")


def test_missing_ground_truth_folder_means_image_level_labels(data):
    shutil.rmtree(data / CAT / "ground_truth")
    items = _items(data, "test")
    anomalous = [it for it in items if it["label"] == 1]
    assert anomalous and all(not it["has_mask"] and float(it["mask"].sum()) == 0 for it in anomalous)


def test_category_without_test_images(data):
    shutil.rmtree(data / CAT / "test")
    with pytest.raises(DataError, match=rf"{CAT}/test: no test images for category '{CAT}'"):
        _items(data, "test")


# ----------------------------------------------------------------------------------------------- CLI train


@pytest.mark.parametrize("fault", ["truncated", "zero-byte"])
def test_cli_train_bad_image_is_one_line_exit_2(tmp_path, capsys, fault):
    data = tmp_path / "data"  # enough normal images (12) to hold out the 5 a threshold set needs
    generate_synthetic(data, categories=[CAT], n_train=12, n_test=2, image_size=SIZE, seed=0, progress=False)
    f = _train_png(data)
    f.write_bytes(b"" if fault == "zero-byte" else f.read_bytes()[:80])
    rc, err = _cli_train(data, tmp_path / "run", capsys)
    assert rc == 2
    assert err.startswith("anomopt: error: ") and err.count("\n") == 1
    assert str(f) in err
    assert not (tmp_path / "run" / "model.ckpt").exists()


def test_cli_train_missing_data_folder(tmp_path, capsys):
    rc, err = _cli_train(tmp_path / "nowhere", tmp_path / "run", capsys)
    assert rc == 2 and err.startswith("anomopt: error: ") and err.count("\n") == 1
    assert "nowhere" in err
