"""The torch-free runtime: artifact folders written by ``OptimizedModel.save`` and read by ``Predictor``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomopt.api import optimize
from anomopt.errors import CheckpointError, DataError
from anomopt.models import build_model
from anomopt.runtime import Predictor, load_image

SIZE = 64
SRC = Path(__file__).resolve().parents[1] / "src"
NORMALIZATION = {
    "bottle": {
        "score_mean": 1.0,
        "score_std": 0.5,
        "image_threshold_z": 3.0,
        "map_mean": 0.2,
        "map_std": 0.1,
        "pixel_threshold_z": 4.0,
        "n_val": 10,
    },
    "screw": {
        "score_mean": 3.0,
        "score_std": 1.0,
        "image_threshold_z": 2.0,
        "map_mean": 0.5,
        "map_std": 0.2,
        "pixel_threshold_z": 3.0,
        "n_val": 10,
    },
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    """The shipped cpu-int8 pipeline, lower included, end to end."""
    torch.manual_seed(0)
    calib = torch.rand(24, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    work = tmp_path_factory.mktemp("work")
    return optimize(
        build_model("stfpm", image_size=SIZE),
        "cpu",
        8,
        calib=calib,
        calib_samples=16,
        categories=sorted(NORMALIZATION),
        normalization=NORMALIZATION,
        workdir=work,
        progress=False,
    )


@pytest.fixture(scope="module")
def artifact(optimized, tmp_path_factory) -> Path:
    return optimized.save(tmp_path_factory.mktemp("art") / "stfpm-cpu-int8")


@pytest.fixture(scope="module")
def predictor(artifact) -> Predictor:
    return Predictor(artifact, threads=1)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_shipped_pipeline_runs_end_to_end(optimized, artifact):
    names = [r.name for r in optimized.passes_report.records]
    assert names == ["fold_batchnorm", "insert_fake_quant", "calibrate", "lower"]
    lower = optimized.passes_report.records[-1]
    assert lower.drift is not None and lower.drift["score"] < 0.25  # the real INT8 artifact, via the runner
    student = lower.notes["integer_kernels"]["by_role"]["student"]
    assert student["integer"] >= 0.9 * (student["integer"] + student["float"])
    assert {p.name for p in artifact.iterdir()} == {"model.onnx", "meta.json", "report.json"}
    meta = json.loads((artifact / "meta.json").read_text())
    assert meta["precision"] == "int8" and meta["model"] == "stfpm" and meta["backbone"] == "efficientnet_lite0"
    assert meta["input"] == {
        "name": "images",
        "shape": ["N", 3, SIZE, SIZE],
        "dtype": "float32",
        "range": [0.0, 1.0],
        "layout": "NCHW RGB",
    }
    assert meta["normalization"] == NORMALIZATION and meta["categories"] == ["bottle", "screw"]
    assert meta["calibration"]["method"] == "percentile" and meta["quant"]["scope"] == "student"
    report = json.loads((artifact / "report.json").read_text())
    assert [p["name"] for p in report["passes"]][-1] == "lower"


def test_predictor_matches_the_optimized_model(optimized, predictor):
    x = _images(4)
    scores, maps = predictor.run(x)
    ref_s, ref_m = optimized.predict(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5)
    np.testing.assert_allclose(maps, ref_m, rtol=1e-5, atol=1e-7)
    assert maps.shape == (4, SIZE, SIZE) and maps.dtype == np.float32


def test_predictions_use_category_thresholds(predictor):
    x = _images(3)
    raw, maps = predictor.run(x)
    for cat in ("bottle", "screw"):
        entry = NORMALIZATION[cat]
        for p, s, m in zip(predictor.predict(x, category=cat), raw, maps, strict=True):
            assert p.score == pytest.approx(float(s))
            assert p.normalized_score == pytest.approx((s - entry["score_mean"]) / entry["score_std"])
            assert p.is_anomalous == (p.normalized_score > entry["image_threshold_z"])
            np.testing.assert_array_equal(
                p.mask, (m - entry["map_mean"]) / entry["map_std"] > entry["pixel_threshold_z"]
            )
            assert p.map.shape == (SIZE, SIZE) and p.mask.dtype == bool
    pooled = predictor.predict(x[0], category="pooled")[0]  # only when asked for by name
    assert pooled.normalized_score == pytest.approx((raw[0] - 2.0) / 0.75)  # mean of the two categories
    with pytest.raises(DataError, match=r"unknown category 'unknown-part'; known: bottle, screw"):
        predictor.predict(x[0], category="unknown-part")
    with pytest.raises(DataError, match=r"several categories \(bottle, screw\)"):
        predictor.predict(x[0])


def test_batched_equals_per_image_and_layouts_agree(predictor):
    x = _images(5, seed=1)
    batched = predictor.predict(x, "bottle")
    single = [predictor.predict(im, "bottle")[0] for im in x]
    chw_float = predictor.predict(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, "bottle")
    listed = predictor.predict(list(x), "bottle")
    for a, b, c, d in zip(batched, single, chw_float, listed, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert a.score == pytest.approx(c.score, rel=1e-5)
        assert a.score == d.score
        np.testing.assert_allclose(a.map, b.map, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((32, 32, 3), np.uint8), f"expected 3x{SIZE}x{SIZE} RGB, got 3x32x32"),
        (np.zeros((SIZE, SIZE), np.uint8), f"expected 3x{SIZE}x{SIZE} RGB, got 1x{SIZE}x{SIZE}"),
        (np.zeros((1, SIZE, SIZE), np.float32), f"got 1x{SIZE}x{SIZE}"),
        (np.zeros((SIZE, SIZE, 4), np.uint8), f"got 4x{SIZE}x{SIZE}"),
        (np.zeros((2, 3, 128, 128), np.float32), "got 3x128x128"),
        (np.zeros((SIZE, SIZE, 3), np.int64), "dtype int64"),
        (np.full((SIZE, SIZE, 3), 255.0, np.float32), "must be in [0, 1]"),
        (np.zeros((1, 1, 1, SIZE, SIZE, 3), np.uint8), "got an array of shape"),
    ],
)
def test_bad_input_is_a_data_error(predictor, images, message):
    with pytest.raises(DataError) as err:
        predictor.predict(images, "bottle")
    assert message in str(err.value)


def test_concurrent_predict_matches_serial(predictor):
    images = _images(48, seed=2)
    serial = [predictor.predict(im, "screw")[0].score for im in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda im: predictor.predict(im, "screw")[0].score, images))
    assert parallel == serial


def _copy(artifact: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def test_missing_meta_is_a_checkpoint_error(artifact, tmp_path):
    art = _copy(artifact, tmp_path)
    (art / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json"):
        Predictor(art)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.pop("normalization"), "normalization"),
        (lambda m: m.update(format_version=2), "format_version"),
        (lambda m: m.update(precision="int4"), "precision"),
        (lambda m: m.update(image_size=128), "image_size"),
        (lambda m: m["files"]["model.onnx"].update(sha256="0" * 64), "sha256"),
        (lambda m: m["normalization"]["bottle"].pop("score_std"), "normalization.bottle"),
        (lambda m: m["normalization"]["bottle"].update(score_std=0.0), "normalization.bottle.score_std"),
        (lambda m: m["normalization"]["bottle"].update(score_std=-0.5), "normalization.bottle.score_std"),
        (lambda m: m["normalization"]["screw"].update(map_std=0), "normalization.screw.map_std"),
        (lambda m: m["normalization"]["screw"].update(score_mean=float("nan")), "normalization.screw.score_mean"),
        (lambda m: m["normalization"]["screw"].update(image_threshold_z="3"), "normalization.screw.image_threshold_z"),
        (lambda m: m["normalization"]["screw"].update(pixel_threshold_z=float("inf")), "screw.pixel_threshold_z"),
    ],
)
def test_edited_meta_is_a_checkpoint_error(artifact, tmp_path, edit, field):
    art = _copy(artifact, tmp_path)
    meta = json.loads((art / "meta.json").read_text())
    edit(meta)
    (art / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        Predictor(art)
    assert "meta.json" in str(err.value) and field in str(err.value)


def test_corrupt_meta_and_tampered_model(artifact, tmp_path):
    art = _copy(artifact, tmp_path)
    (art / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json"):
        Predictor(art)
    art2 = _copy(artifact, tmp_path / "b")
    with open(art2 / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="model.onnx"):
        Predictor(art2)


def test_predictor_runs_without_torch(artifact, predictor, tmp_path):
    """A subprocess in which importing torch fails loads the artifact and gives the same scores."""
    images = _images(3, seed=4)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import json, sys
        for name in ("torch", "torchvision", "timm"):
            sys.modules[name] = None  # any import of these now raises ImportError
        import numpy as np
        from anomopt.runtime import Predictor
        p = Predictor({str(artifact)!r}, threads=1)
        out = p.predict(np.load({str(tmp_path / "images.npy")!r}), category="screw")
        assert not any(m.startswith("torch") for m in sys.modules if sys.modules[m] is not None)
        print(json.dumps([[o.score, o.normalized_score, bool(o.is_anomalous)] for o in out]))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = [[o.score, o.normalized_score, o.is_anomalous] for o in predictor.predict(images, category="screw")]
    assert got == want


def test_load_image_matches_training_reader(tmp_path):
    from anomopt.data.images import read_image

    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.png")
    img = load_image(tmp_path / "a.png", SIZE)
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    np.testing.assert_allclose(img, read_image(tmp_path / "a.png", SIZE), atol=1e-6)
    gray = load_image(tmp_path / "gray.png", SIZE)
    np.testing.assert_allclose(gray, read_image(tmp_path / "gray.png", SIZE), atol=1e-6)
    with pytest.raises(DataError):
        load_image(tmp_path / "missing.png", SIZE)


def test_save_writes_the_model_the_pipeline_lowered(tmp_path):
    om = optimize(
        build_model("us", image_size=SIZE),
        "cpu",
        32,
        calib_source="noise",
        passes=["fold_batchnorm", "lower"],
        progress=False,
    )
    art = om.save(tmp_path / "us-fp32")
    pred = Predictor(art, threads=1)
    x = _images(2, seed=5)
    ref, _ = om.predict(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0)
    np.testing.assert_allclose(pred.run(x)[0], ref, rtol=1e-4)
    assert json.loads((art / "report.json").read_text())["artifact"]["files"] == ["model.onnx"]
