"""Tests of anomopt.data: image/mask decoding, MVTec and folder layouts, validation split, data set."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from anomopt.data import (
    AnomalyDataset,
    Sample,
    check_mask_matches_image,
    list_categories,
    load_folder,
    load_mvtec,
    read_image,
    read_mask,
    scan_folder,
    scan_mvtec,
    split_validation,
)
from anomopt.errors import DataError

REALDEV = Path(
    os.environ.get("ANOMOPT_REALDEV") or Path(__file__).resolve().parents[2] / "shared" / "data" / "realdev"
)

# ----------------------------------------------------------------------------------------------- helpers


def _png(path: Path, size: tuple[int, int] = (12, 10), seed: int = 0, mode: str = "RGB") -> Path:
    """Write a random image of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _mask(
    path: Path, size: tuple[int, int] = (12, 10), box: tuple[int, int, int, int] = (2, 2, 6, 5)
) -> Path:
    w, h = size
    arr = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_mvtec(
    root: Path,
    cats: tuple[str, ...] = ("bottle", "cable"),
    n_train: int = 6,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    size: tuple[int, int] = (12, 10),
) -> Path:
    """A tiny MVTec-layout data set: random images, rectangular 0/255 masks."""
    defects = {"crack": 2, "scratch": 1} if defects is None else defects
    for ci, cat in enumerate(cats):
        for i in range(n_train):
            _png(root / cat / "train" / "good" / f"{i:03d}.png", size, seed=100 * ci + i)
        for i in range(n_good):
            _png(root / cat / "test" / "good" / f"{i:03d}.png", size, seed=1000 + 100 * ci + i)
        for d, n in defects.items():
            for i in range(n):
                _png(root / cat / "test" / d / f"{i:03d}.png", size, seed=2000 + 100 * ci + i)
                _mask(root / cat / "ground_truth" / d / f"{i:03d}_mask.png", size)
    return root


# ------------------------------------------------------------------------------------------- read_image


def _check_rgb(arr: np.ndarray, hw: tuple[int, int]) -> None:
    assert arr.dtype == np.float32
    assert arr.shape == (*hw, 3)
    assert float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK"])
def test_read_image_modes_give_rgb_float(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (10, 12), dtype=np.uint16))
    elif mode == "I":
        im = Image.fromarray(rng.integers(0, 65536, (10, 12)).astype(np.int32), mode="I")
    elif mode == "F":
        im = Image.fromarray(rng.random((10, 12)).astype(np.float32), mode="F")
    elif mode == "P":
        im = base.convert("P")
    else:
        im = base.convert(mode)
    ext = {"CMYK": ".jpg", "F": ".tif", "I": ".tif"}.get(mode, ".png")
    path = tmp_path / f"img{ext}"
    im.save(path)
    _check_rgb(read_image(path, None), (10, 12))
    _check_rgb(read_image(path, 8), (8, 8))
    _check_rgb(read_image(path, (6, 9)), (6, 9))


def test_read_image_16bit_scaled_exactly(tmp_path: Path) -> None:
    arr = np.array([[0, 65535, 32768], [1000, 20000, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = read_image(tmp_path / "d.png", None)
    np.testing.assert_allclose(out[..., 0], arr / 65535.0, atol=1e-6)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    # A 16-bit image that only uses the low byte must stay dark, not be stretched to white.
    Image.fromarray(np.full((4, 4), 255, np.uint16)).save(tmp_path / "low.png")
    assert read_image(tmp_path / "low.png", None).max() < 0.01


def test_read_image_rgba_composited_on_black(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., :3] = (200, 100, 50)
    arr[0, 0, 3] = 0
    arr[0, 1, 3] = 255
    arr[1, :, 3] = 128
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", None)
    np.testing.assert_allclose(out[0, 0], 0.0)
    np.testing.assert_allclose(out[0, 1], np.array([200, 100, 50]) / 255, atol=1e-6)
    assert 0.3 < out[1, 0, 0] / out[0, 1, 0] < 0.7


def test_read_image_cmyk_jpeg_converted(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    out = read_image(tmp_path / "c.jpg", None)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 0.8 and g < 0.2 and b < 0.2


def test_read_image_grayscale_and_resize_values(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png", 10)
    assert out.shape == (10, 10, 3)
    np.testing.assert_allclose(out, 128 / 255, atol=1e-6)


def _truncated(tmp_path: Path) -> Path:
    src = _png(tmp_path / "full.png", (64, 64))
    data = src.read_bytes()
    p = tmp_path / "trunc.png"
    p.write_bytes(data[: len(data) // 2])
    return p


def _truncated_jpeg(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    p = tmp_path / "trunc.jpg"
    p.write_bytes(data[: len(data) // 2])
    return p


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.png"


def _zero(tmp_path: Path) -> Path:
    (tmp_path / "zero.png").write_bytes(b"")
    return tmp_path / "zero.png"


def _junk(tmp_path: Path) -> Path:
    (tmp_path / "junk.png").write_bytes(b"not an image at all" * 10)
    return tmp_path / "junk.png"


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "dir.png").mkdir()
    return tmp_path / "dir.png"


@pytest.mark.parametrize(
    ("maker", "needle"),
    [
        (_missing, "not found"),
        (_zero, "empty"),
        (_truncated, "truncated"),
        (_truncated_jpeg, "truncated"),
        (_junk, "recognized"),
        (_folder, "folder"),
    ],
)
def test_read_image_bad_files_raise_data_error(tmp_path: Path, maker, needle: str) -> None:
    path = maker(tmp_path)
    with pytest.raises(DataError) as err:
        read_image(path, 8)
    assert path.name in str(err.value)
    assert needle in str(err.value)
    with pytest.raises(DataError, match=path.name):
        read_mask(path, 8)


# -------------------------------------------------------------------------------------------- read_mask


def test_read_mask_binary_values_and_nearest_resize(tmp_path: Path) -> None:
    p = _mask(tmp_path / "m.png", (40, 20), (10, 5, 30, 15))
    m = read_mask(p, None)
    assert m.dtype == np.float32 and m.shape == (20, 40)
    assert set(np.unique(m).tolist()) == {0.0, 1.0}
    assert m.sum() == 20 * 10
    small = read_mask(p, 10)
    assert small.shape == (10, 10) and set(np.unique(small).tolist()) == {0.0, 1.0}
    # 0/1-valued masks, all-zero masks, 16-bit and RGB masks are all accepted.
    Image.fromarray((np.arange(12).reshape(3, 4) % 2).astype(np.uint8)).save(tmp_path / "01.png")
    assert read_mask(tmp_path / "01.png", None).sum() == 6
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / "zero.png")
    assert read_mask(tmp_path / "zero.png", None).sum() == 0
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png", None), [[0.0, 1.0]])
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0, 1] = 255  # foreground in one channel only: max over channels
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png", None), [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("values", [(0, 128, 255), (100, 255), (3, 7, 9, 11)])
def test_read_mask_non_binary_raises(tmp_path: Path, values: tuple[int, ...]) -> None:
    arr = np.array([list(values) * 2], np.uint8)
    p = tmp_path / "soft_mask.png"
    Image.fromarray(arr).save(p)
    with pytest.raises(DataError, match="soft_mask.png.*not binary"):
        read_mask(p, None)


def test_check_mask_matches_image(tmp_path: Path) -> None:
    img = _png(tmp_path / "img.png", (12, 10))
    check_mask_matches_image(_mask(tmp_path / "ok_mask.png", (12, 10)), img)
    bad = _mask(tmp_path / "bad_mask.png", (10, 12))
    with pytest.raises(DataError) as err:
        check_mask_matches_image(bad, img)
    assert "bad_mask.png" in str(err.value) and "img.png" in str(err.value)


# --------------------------------------------------------------------------------------------- layout


def test_scan_mvtec_unified_and_one_class(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "ds", cats=("bottle", "cable", "zipper"))
    (root / "notes").mkdir()  # no train/good: not a category
    (root / "bottle" / "train" / "good" / "readme.txt").write_text("ignored")
    _png(root / "bottle" / "train" / "good" / "UPPER.PNG")
    assert list_categories(root) == ["bottle", "cable", "zipper"]
    unified = scan_mvtec(root)
    assert list(unified) == ["bottle", "cable", "zipper"]
    assert len(unified["bottle"].train) == 7 and len(unified["cable"].train) == 6
    assert scan_mvtec(root, "zipper,bottle").keys() == {"bottle", "zipper"}
    one = scan_mvtec(root, ["cable"])
    assert list(one) == ["cable"]
    cs = one["cable"]
    assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in cs.train)
    assert [s.defect for s in cs.test] == ["crack", "crack", "good", "good", "scratch"]
    for s in cs.test:
        assert (s.label == 1) == (s.defect != "good") == (s.mask_path is not None)
        if s.mask_path is not None:
            assert s.mask_path.name == f"{s.path.stem}_mask.png"
    # Order is sorted and repeatable.
    assert [s.path for s in cs.train] == sorted(s.path for s in cs.train)
    assert scan_mvtec(root, "cable") == one


def test_scan_mvtec_errors_name_the_problem(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "ds")
    with pytest.raises(DataError, match="nowhere"):
        scan_mvtec(tmp_path / "nowhere")
    with pytest.raises(DataError) as err:
        scan_mvtec(root, "bottle,screw")
    assert "screw" in str(err.value) and "bottle" in str(err.value) and "cable" in str(err.value)

    (root / "cable" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError) as err:
        scan_mvtec(root, "cable")
    msg = str(err.value)
    assert "001.png" in msg and "001_mask.png" in msg and "crack" in msg

    shutil.rmtree(root / "bottle" / "ground_truth")  # image-level labels: masks are optional
    anomalous = [s for s in scan_mvtec(root, "bottle")["bottle"].test if s.label == 1]
    assert anomalous and all(s.mask_path is None for s in anomalous)

    for p in (root / "bottle" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"bottle.train.good.*no training images"):
        scan_mvtec(root, "bottle")


def test_scan_mvtec_require_test(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "ds", cats=("bottle",))
    shutil.rmtree(root / "bottle" / "test")
    with pytest.raises(DataError, match=r"bottle.test.*no test images"):
        scan_mvtec(root, "bottle")
    assert scan_mvtec(root, "bottle", require_test=False)["bottle"].test == []
    assert len(load_mvtec(root, "bottle", "train", image_size=8)) > 0
    with pytest.raises(DataError, match="no test images"):
        load_mvtec(root, "bottle", "test", image_size=8)


def test_scan_folder_layout(tmp_path: Path) -> None:
    for i in range(4):
        _png(tmp_path / "ok" / f"n{i}.png")
    _png(tmp_path / "bad" / "a.png")
    _png(tmp_path / "bad" / "b.jpg")
    _mask(tmp_path / "masks" / "a.png")
    _mask(tmp_path / "masks" / "b_mask.png")
    cs = scan_folder(tmp_path / "ok", tmp_path / "bad", tmp_path / "masks", category="widget")
    assert cs.name == "widget" and len(cs.train) == 4 and len(cs.test) == 2
    assert [s.mask_path.name for s in cs.test if s.mask_path] == ["a.png", "b_mask.png"]
    assert all(s.label == 1 for s in cs.test)
    (tmp_path / "masks" / "b_mask.png").unlink()
    with pytest.raises(DataError, match="b.jpg"):
        scan_folder(tmp_path / "ok", tmp_path / "bad", tmp_path / "masks")
    with pytest.raises(DataError, match="empty_dir"):
        (tmp_path / "empty_dir").mkdir()
        scan_folder(tmp_path / "empty_dir")

    ds = load_folder(
        tmp_path / "ok", tmp_path / "bad", split="test", image_size=8, good_test_dir=tmp_path / "ok"
    )
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 0, 1, 1]
    tr = load_folder(tmp_path / "ok", split="train", image_size=8, val_fraction=0.25)
    va = load_folder(tmp_path / "ok", split="val", image_size=8, val_fraction=0.25)
    assert len(tr) == 3 and len(va) == 1 and not {s.path for s in tr.samples} & {s.path for s in va.samples}


# ------------------------------------------------------------------------------------------- val split


def _samples(cat: str, n: int) -> list[Sample]:
    return [Sample(Path(f"/d/{cat}/train/good/{i:03d}.png"), cat, 0) for i in range(n)]


def test_split_validation_seeded_stratified_disjoint() -> None:
    samples = _samples("a", 20) + _samples("b", 10)
    train, val = split_validation(samples, 0.2, seed=3)
    assert len(val) == 4 + 2 and len(train) == 24
    assert not set(train) & set(val) and set(train) | set(val) == set(samples)
    assert split_validation(samples, 0.2, seed=3) == (train, val)
    # Input order does not matter, and a category's split does not depend on the other categories.
    assert set(split_validation(samples[::-1], 0.2, seed=3)[1]) == set(val)
    assert set(split_validation(_samples("a", 20), 0.2, seed=3)[1]) == {s for s in val if s.category == "a"}
    others = [set(split_validation(samples, 0.2, seed=s)[1]) for s in range(4, 8)]
    assert any(o != set(val) for o in others)
    # min_val: a tiny category still gets one validation image.
    _, v = split_validation(_samples("c", 3), 0.1)
    assert len(v) == 1
    assert split_validation(samples, 0.0) == (samples, [])


def test_split_validation_errors() -> None:
    with pytest.raises(DataError, match="'solo'"):
        split_validation(_samples("solo", 1), 0.1)
    bad = [Sample(Path("/d/x/test/crack/000.png"), "x", 1, "crack", Path("/m.png"))]
    with pytest.raises(DataError, match="000.png"):
        split_validation(_samples("x", 5) + bad)


# -------------------------------------------------------------------------------------------- dataset


def test_load_mvtec_splits_unified_vs_one_class(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "ds", cats=("bottle", "cable"), n_train=10)
    train = load_mvtec(root, "all", "train", image_size=16, val_fraction=0.2, seed=1)
    val = load_mvtec(root, "all", "val", image_size=16, val_fraction=0.2, seed=1)
    test = load_mvtec(root, "all", "test", image_size=16)
    assert train.categories == val.categories == test.categories == ["bottle", "cable"]
    assert len(train) == 16 and len(val) == 4 and len(test) == 10
    train_p, val_p, test_p = ({s.path for s in d.samples} for d in (train, val, test))
    assert not train_p & val_p and not val_p & test_p and not train_p & test_p
    assert all("train" in p.parts for p in val_p)
    assert {s.category for s in val.samples} == {"bottle", "cable"}  # stratified
    assert load_mvtec(root, "all", "val", image_size=16, val_fraction=0.2, seed=1).samples == val.samples
    one = load_mvtec(root, "cable", "val", image_size=16, val_fraction=0.2, seed=1)
    assert one.categories == ["cable"] and one.samples == [s for s in val.samples if s.category == "cable"]
    assert test.labels.dtype == np.int64 and test.labels.tolist().count(1) == 6
    with pytest.raises(DataError, match="empty"):
        load_mvtec(root, "all", "val", image_size=16, val_fraction=0.0)


def test_dataset_items_and_collate(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "ds", cats=("bottle",), size=(20, 10))
    ds = load_mvtec(root, "bottle", "test", image_size=(10, 20))
    for item in (ds[i] for i in range(len(ds))):
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 10, 20)
        assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
        assert item["mask"].shape == (1, 10, 20)
        if item["label"] == 0:
            assert item["mask"].sum() == 0
        else:  # the rectangle (2, 2, 6, 5) at the original size, nearest-resized to the same size
            assert item["mask"].sum() == 4 * 3
        assert item["category"] == "bottle" and Path(item["path"]).exists()
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 10, 20) and batch["mask"].shape == (4, 1, 10, 20)
    assert batch["label"].tolist() == ds.labels[:4].tolist()
    assert batch["category"] == ["bottle"] * 4 and len(batch["path"]) == 4
    # Images are not ImageNet-normalized: a known pixel round-trips.
    s = ds.samples[0]
    expected = np.asarray(Image.open(s.path).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(ds[0]["image"].numpy(), expected, atol=1e-6)


def test_dataset_cache_keeps_decoded_images(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "ds", cats=("bottle",))
    cached = load_mvtec(root, "bottle", "test", image_size=8, cache=True)
    plain = load_mvtec(root, "bottle", "test", image_size=8, cache=False)
    first = [cached[i] for i in range(len(cached))]
    for i in range(len(plain)):
        assert torch.equal(first[i]["image"], plain[i]["image"]) and torch.equal(
            first[i]["mask"], plain[i]["mask"]
        )
    shutil.rmtree(root / "bottle" / "test")  # cached items no longer need the files
    for i in range(len(cached)):
        assert torch.equal(cached[i]["image"], first[i]["image"])
    with pytest.raises(DataError, match="000.png"):
        plain[0]


def test_mask_size_mismatch_named(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "ds", cats=("bottle",), size=(12, 10))
    bad = _mask(root / "bottle" / "ground_truth" / "scratch" / "000_mask.png", (24, 20))
    with pytest.raises(DataError) as err:
        load_mvtec(root, "bottle", "test", image_size=8)
    assert "000_mask.png" in str(err.value) and "scratch" in str(err.value)
    # The data set checks lazily too, when built directly from samples.
    samples = scan_mvtec(root, "bottle")["bottle"].test
    ds = AnomalyDataset(samples, image_size=8)
    idx = [i for i, s in enumerate(samples) if s.mask_path == bad][0]
    with pytest.raises(DataError, match="000_mask.png"):
        ds[idx]


@pytest.mark.parametrize("damage", ["zero", "truncated", "junk"])
def test_bad_file_in_dataset_named(tmp_path: Path, damage: str) -> None:
    root = make_mvtec(tmp_path / "ds", cats=("bottle",), size=(64, 64))
    victim = root / "bottle" / "train" / "good" / "003.png"
    data = victim.read_bytes()
    victim.write_bytes({"zero": b"", "truncated": data[: len(data) // 2], "junk": b"\x00junk" * 30}[damage])
    ds = load_mvtec(root, "bottle", "train", image_size=8, val_fraction=0.0)
    idx = [s.path for s in ds.samples].index(victim)
    ds[0]
    with pytest.raises(DataError, match="003.png"):
        ds[idx]


def test_non_binary_mask_in_dataset_named(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "ds", cats=("bottle",))
    p = root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    Image.fromarray(np.arange(120, dtype=np.uint8).reshape(10, 12)).save(p)
    ds = load_mvtec(root, "bottle", "test", image_size=8)
    with pytest.raises(DataError, match="000_mask.png.*not binary"):
        [ds[i] for i in range(len(ds))]


# ------------------------------------------------------------------------------------ malformed layouts

_PARTS = [
    "a/train/good",
    "a/train/good/000.png",
    "a/test",
    "a/test/good",
    "a/test/crack",
    "a/test/crack/000.png",
    "a/ground_truth",
    "a/ground_truth/crack",
    "a/ground_truth/crack/000_mask.png",
    "b/train",
    "b/test/good/001.png",
    "b/ground_truth/hole/000_mask.png",
]
_FILES = [p for p in _PARTS if p.endswith(".png")] + ["a/train/good/001.png", "b/train/good/002.png"]
_DAMAGE = ["zero", "junk", "truncated", "soft", "big", "text"]


def _damage(path: Path, kind: str) -> None:
    if not path.exists():
        return
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "junk":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "soft":
        Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(path)
    elif kind == "big":
        Image.fromarray(np.zeros((9, 11), np.uint8)).save(path)
    else:
        path.write_text("hello")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drop=st.sets(st.sampled_from(_PARTS), max_size=4),
    damage=st.dictionaries(st.sampled_from(_FILES), st.sampled_from(_DAMAGE), max_size=3),
    categories=st.sampled_from(["all", "a", "b", "a,b", "c", ["a"], ""]),
    split=st.sampled_from(["train", "val", "test"]),
    val_fraction=st.sampled_from([0.0, 0.3, 0.5, 0.9]),
)
def test_malformed_layouts_load_or_raise_data_error(drop, damage, categories, split, val_fraction) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_mvtec(
            Path(tmp) / "ds",
            cats=("a", "b"),
            n_train=3,
            n_good=2,
            size=(8, 6),
            defects={"crack": 2, "hole": 1},
        )
        for part in sorted(drop):
            p = root / part
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for f, kind in sorted(damage.items()):
            _damage(root / f, kind)
        try:
            ds = load_mvtec(root, categories, split, image_size=4, val_fraction=val_fraction, cache=False)
            items = [ds[i] for i in range(len(ds))]
        except DataError as err:
            assert str(err)  # a message, never another exception type
            return
        assert len(items) > 0
        for it in items:
            assert it["image"].shape == (3, 4, 4) and it["mask"].shape == (1, 4, 4)
            assert set(torch.unique(it["mask"]).tolist()) <= {0.0, 1.0}


def test_intact_layout_loads_all_splits(tmp_path: Path) -> None:
    root = make_mvtec(
        tmp_path / "ds", cats=("a", "b"), n_train=3, n_good=2, size=(8, 6), defects={"crack": 2, "hole": 1}
    )
    for split in ("train", "val", "test"):
        assert len(load_mvtec(root, "all", split, image_size=4, val_fraction=0.3)) > 0


# ------------------------------------------------------------------------------------------- real data

needs_real = pytest.mark.skipif(not (REALDEV / "metal_plate").is_dir(), reason=f"real data not at {REALDEV}")


@pytest.mark.realdata
@needs_real
def test_realdev_one_class_and_unified() -> None:
    splits = scan_mvtec(REALDEV, "all")
    assert set(splits) >= {"metal_plate", "pcb"}
    mp = splits["metal_plate"]
    assert len(mp.train) == 54 and len(mp.test) == 97
    # One-class: metal_plate only; read one good and one anomalous item.
    test = load_mvtec(REALDEV, "metal_plate", "test", image_size=64, cache=False)
    assert test.categories == ["metal_plate"]
    good = test[int(np.flatnonzero(test.labels == 0)[0])]
    bad = test[int(np.flatnonzero(test.labels == 1)[0])]
    assert good["image"].shape == (3, 64, 64) and good["mask"].sum() == 0
    assert bad["label"] == 1 and bad["mask"].sum() > 0
    # Unified: both categories pooled, validation held out per category.
    train = load_mvtec(REALDEV, "metal_plate,pcb", "train", image_size=64, cache=False)
    val = load_mvtec(REALDEV, "metal_plate,pcb", "val", image_size=64, cache=False)
    assert train.categories == val.categories == ["metal_plate", "pcb"]
    assert len(train) + len(val) == 54 + len(splits["pcb"].train)
    assert {s.category for s in val.samples} == {"metal_plate", "pcb"}
    assert not {s.path for s in train.samples} & {s.path for s in val.samples}
    for i in (0, len(train) - 1):
        item = train[i]
        assert (
            item["image"].shape == (3, 64, 64)
            and 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
        )


@pytest.mark.realdata
@needs_real
def test_realdev_masks_are_strictly_binary() -> None:
    splits = scan_mvtec(REALDEV, "metal_plate,pcb")
    for cat, cs in splits.items():
        anomalous = [s for s in cs.test if s.label == 1]
        assert anomalous, cat
        for s in anomalous[:5]:
            raw = np.asarray(Image.open(s.mask_path))
            assert set(np.unique(raw).tolist()) == {0, 255}, s.mask_path
            m = read_mask(s.mask_path, 64)
            assert m.shape == (64, 64) and m.sum() > 0
        # pcb: test/good and test/defect reuse the same file names; samples stay distinct by path.
        stems = [s.path.stem for s in cs.test]
        assert len({s.path for s in cs.test}) == len(cs.test) >= len(set(stems))


def test_dataset_categories_through_subsets_without_reading_images(tmp_path: Path) -> None:
    from torch.utils.data import ConcatDataset, Subset

    from anomopt.data import dataset_categories

    root = make_mvtec(tmp_path / "ds", cats=("bottle", "cable", "zipper"), n_train=3)
    train = load_mvtec(root, "all", split="train", image_size=16)
    assert dataset_categories(train) == ["bottle", "cable", "zipper"]
    first_two = [i for i, s in enumerate(train.samples) if s.category in ("bottle", "cable")]
    assert dataset_categories(Subset(train, first_two)) == ["bottle", "cable"]
    zipper = [i for i, s in enumerate(train.samples) if s.category == "zipper"]
    nested = ConcatDataset([Subset(Subset(train, first_two), [0]), Subset(train, zipper)])
    assert dataset_categories(nested) == ["bottle", "zipper"]
    assert not train._images  # nothing was decoded
    assert dataset_categories(torch.utils.data.TensorDataset(torch.zeros(2, 3))) == []
