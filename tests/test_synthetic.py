"""Tests of the synthetic data set generator and the ``anomopt data`` command."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomopt.cli.main import main
from anomopt.data import (
    DEFECT_TYPES,
    SYNTHETIC_CATEGORIES,
    generate_synthetic,
    load_mvtec,
    read_mask,
    render_sample,
    scan_mvtec,
)
from anomopt.errors import ConfigError, DataError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return generate_synthetic(out, categories=5, n_train=4, n_test=8, image_size=64, seed=0, progress=False)


def test_writes_valid_mvtec_set_the_loader_reads(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir() if p.is_dir()) == sorted(SYNTHETIC_CATEGORIES)
    splits = scan_mvtec(small_set)
    for cat, cs in splits.items():
        assert len(cs.train) == 4 and len(cs.test) == 8
        anomalous = [s for s in cs.test if s.label == 1]
        assert len(anomalous) == 4
        # Defect types are used in turn, each with its own test/ and ground_truth/ folder.
        assert {s.defect for s in anomalous} == set(DEFECT_TYPES[cat][:4])
        for s in anomalous:
            assert s.mask_path == small_set / cat / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
    test = load_mvtec(small_set, "all", "test", image_size=64)
    assert test.categories == sorted(SYNTHETIC_CATEGORIES)
    for i in range(len(test)):
        item = test[i]
        assert item["image"].shape == (3, 64, 64)
        if item["label"] == 1:
            assert item["mask"].sum() > 0
        else:
            assert item["mask"].sum() == 0
    assert len(load_mvtec(small_set, "fabric", "train", image_size=32, val_fraction=0.25)) == 3


def test_masks_binary_and_exactly_the_altered_pixels(small_set: Path) -> None:
    for cat in SYNTHETIC_CATEGORIES:
        for mask_path in sorted((small_set / cat / "ground_truth").rglob("*_mask.png")):
            raw = np.asarray(Image.open(mask_path))
            assert raw.dtype == np.uint8 and set(np.unique(raw).tolist()) == {0, 255}
            assert read_mask(mask_path, None).sum() > 0
    for cat in SYNTHETIC_CATEGORIES:
        for d in DEFECT_TYPES[cat]:
            normal, zero = render_sample(cat, 7, 64, seed=1)
            bad, mask = render_sample(cat, 7, 64, seed=1, defect=d)
            assert zero.sum() == 0 and mask.sum() > 0
            changed = (bad != normal).any(axis=2)
            np.testing.assert_array_equal(changed, mask.astype(bool), err_msg=f"{cat}/{d}")


@pytest.mark.parametrize("cat", SYNTHETIC_CATEGORIES)
def test_defects_clearly_visible_but_not_huge(cat: str) -> None:
    for i, d in enumerate(DEFECT_TYPES[cat]):
        normal, _ = render_sample(cat, 50 + i, 128, seed=0)
        bad, mask = render_sample(cat, 50 + i, 128, seed=0, defect=d)
        m = mask.astype(bool)
        area = m.mean()
        assert 0.001 <= area <= 0.12, f"{cat}/{d}: mask covers {area:.4f} of the image"
        diff = np.abs(bad.astype(np.float32) - normal.astype(np.float32)).max(axis=2)[m] / 255
        assert np.median(diff) > 0.06, f"{cat}/{d}: median change {np.median(diff):.3f}"


def test_normal_images_vary_and_categories_are_distinct() -> None:
    def feats(img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32) / 255
        return np.concatenate(
            [
                x.mean((0, 1)),
                x.std((0, 1)),
                [np.abs(np.diff(x, axis=1)).mean(), np.abs(np.diff(x, axis=0)).mean()],
            ]
        )

    centroids, held_out = {}, {}
    for cat in SYNTHETIC_CATEGORIES:
        imgs = [render_sample(cat, i, 96, seed=0)[0] for i in range(6)]
        # Normal images differ from each other (shift, light, noise), but not wildly.
        d01 = np.abs(imgs[0].astype(np.float32) - imgs[1].astype(np.float32)).mean() / 255
        assert 0.005 < d01 < 0.5, cat
        centroids[cat] = np.mean([feats(x) for x in imgs[:3]], axis=0)
        held_out[cat] = [feats(x) for x in imgs[3:]]
    for cat, fs in held_out.items():
        for f in fs:
            nearest = min(centroids, key=lambda c: float(np.linalg.norm(centroids[c] - f)))
            assert nearest == cat


def test_deterministic_by_seed(tmp_path: Path) -> None:
    kw = dict(categories=["pcb_traces", "round_part"], n_train=2, n_test=3, image_size=64, progress=False)
    a = _files(generate_synthetic(tmp_path / "a", seed=5, **kw))
    b = _files(generate_synthetic(tmp_path / "b", seed=5, **kw))
    c = _files(generate_synthetic(tmp_path / "c", seed=6, **kw))
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png") and "ground_truth" not in k]
    assert all(a[k] != c[k] for k in pngs)
    # A category's images do not depend on which other categories are generated.
    d = _files(
        generate_synthetic(
            tmp_path / "d",
            seed=5,
            categories=["round_part"],
            n_train=2,
            n_test=3,
            image_size=64,
            progress=False,
        )
    )
    assert all(a[k] == v for k, v in d.items() if k.startswith("round_part"))


def test_output_folder_safety_and_bad_arguments(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(DataError, match="precious"):
        generate_synthetic(precious, categories=1, n_train=1, n_test=1, image_size=32, progress=False)
    assert (precious / "thesis.txt").exists()
    out = generate_synthetic(tmp_path / "s", categories=1, n_train=1, n_test=2, image_size=32, progress=False)
    again = generate_synthetic(out, categories=["mesh"], n_train=1, n_test=2, image_size=32, progress=False)
    assert sorted(p.name for p in again.iterdir()) == ["mesh", "synthetic.json"]  # earlier set replaced
    for bad in (
        dict(categories=0),
        dict(categories=["wood"]),
        dict(n_train=0),
        dict(image_size=8),
        dict(anomaly_fraction=1.5),
    ):
        with pytest.raises(ConfigError):
            generate_synthetic(tmp_path / "x", **{"progress": False, **bad})
    with pytest.raises(ConfigError):
        render_sample("mesh", 0, 64, defect="scratch")


def test_default_set_timing(tmp_path: Path) -> None:
    start = time.perf_counter()
    out = generate_synthetic(tmp_path / "full", progress=False)
    elapsed = time.perf_counter() - start
    n = sum(1 for _ in out.rglob("*.png"))
    print(f"\nsynthetic default set (5 categories x (60 train + 30 test), 256 px): {elapsed:.1f} s, {n} PNGs")
    assert n == 5 * (60 + 30) + 5 * 15


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_data_synth_writes_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = main(
        [
            "data",
            "synth",
            "--out",
            str(out),
            *["--categories", "fabric,mesh", "--train", "3", "--test", "2"],
            *["--size", "48", "--seed", "1", "--quiet"],
        ]
    )
    assert rc == 0
    assert sorted(scan_mvtec(out)) == ["fabric", "mesh"]
    assert Image.open(out / "mesh" / "train" / "good" / "000.png").size == (48, 48)
    assert str(out) in capsys.readouterr().out
    argv = [
        "data",
        "synth",
        "--out",
        str(tmp_path / "n"),
        *["--categories", "2", "--train", "1", "--test", "0", "--size", "32", "-q"],
    ]
    assert main(argv) == 0
    assert sorted(scan_mvtec(tmp_path / "n", require_test=False)) == ["brushed_metal", "fabric"]
    assert main(["data", "check", str(out)]) == 0
    assert "fabric: 3 train" in capsys.readouterr().out


def test_cli_errors_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "o"), "--categories", "wood", "--quiet"]) == 2
    assert "wood" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
    for argv in (["data", "synth", "--help"], ["data", "--help"], ["data", "check", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["data"])
    assert exc.value.code == 2
