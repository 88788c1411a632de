"""Issue #14 items 4 and 5 (predict), issue #16 item 4: one bad file never stops `anomopt predict`, files
that training skips are skipped, every run's outputs are its own, and what it writes per image (overlay,
mask, CSV/JSON row) agrees with the Predictor."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomopt.cli.main import main
from anomopt.runtime import Predictor, load_image
from anomopt.runtime.overlay import OverlayInfo, render_overlay, z_scale
from reliability.helpers import NORMALIZATION, SIZE, one_line_error, snapshot, write_images

STATS = NORMALIZATION["fabric"]


@pytest.fixture(scope="module")
def artifact(tiny_artifact) -> Path:
    return tiny_artifact


@pytest.fixture(scope="module")
def predictor(artifact) -> Predictor:
    return Predictor(artifact, threads=1)


def _messy_folder(root: Path) -> dict[str, list[Path]]:
    """Readable images of several sizes and modes, broken files, and what training skips."""
    good = write_images(root, 2, size=(80, 96))
    gray = root / "nested" / "gray.png"
    gray.parent.mkdir()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (50, 70), dtype=np.uint8)).save(gray)
    rgba = root / "nested" / "alpha.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA").save(rgba)
    garbage = root / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    truncated = root / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:200])
    empty = root / "empty.jpg"
    empty.write_bytes(b"")
    dangling = root / "dangling.png"
    os.symlink(root / "does-not-exist.png", dangling)
    (root / "._img0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "folder.png").mkdir()  # a folder named like an image
    hidden_dir = root / ".cache"
    hidden_dir.mkdir()
    write_images(hidden_dir, 1)
    return {
        "scored": [*good, rgba, gray],
        "skipped": [garbage, truncated, empty, dangling],
        "absent": [root / "._img0.png", root / ".DS_Store", root / "folder.png", hidden_dir / "img0.png"],
    }


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_bad_files_are_skipped_and_reported_the_rest_scored(artifact, predictor, tmp_path, capsys):
    files = _messy_folder(tmp_path / "images")
    out = tmp_path / "pred"
    assert main(["predict", str(artifact), str(tmp_path / "images"), "--category", "fabric", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "8 files: 4 scored" in captured.out and "4 skipped" in captured.out
    rows = {Path(r["path"]): r for r in _rows(out)}
    assert set(rows) == set(files["scored"]) | set(files["skipped"])  # hidden files and folders are not rows
    for p in files["skipped"]:
        assert rows[p]["decision"] == "skipped" and str(p) in rows[p]["reason"], rows[p]
        assert rows[p]["score"] == "" and rows[p]["overlay"] == "" and rows[p]["mask"] == ""
    assert "empty file" in rows[files["skipped"][2]]["reason"] or "cannot" in rows[files["skipped"][2]]["reason"]
    assert "broken symbolic link" in rows[files["skipped"][3]]["reason"]
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["format"] == "anomopt-predictions"
    assert doc["counts"] == {"files": 8, "scored": 4, "anomalous": doc["counts"]["anomalous"], "skipped": 4}
    for p in files["scored"]:
        r = rows[p]
        pred = predictor.predict(load_image(p, SIZE), category="fabric")[0]
        assert float(r["score"]) == pytest.approx(pred.score, rel=1e-5)
        assert float(r["normalized_score"]) == pytest.approx(pred.normalized_score, abs=1e-3)
        assert r["decision"] == ("anomalous" if pred.is_anomalous else "normal")
        assert float(r["threshold"]) == STATS["image_threshold_z"]
        assert float(r["threshold_score"]) == pytest.approx(STATS["score_mean"] + 3.0 * STATS["score_std"])
        assert int(r["mask_pixels"]) == int(pred.mask.sum())
        assert float(r["mask_area"]) == pytest.approx(pred.mask.mean(), abs=1e-6)
        with Image.open(out / r["mask"]) as m, Image.open(p) as src:
            assert m.size == src.size  # the mask is at the image's own size
            assert set(np.unique(np.asarray(m)).tolist()) <= {0, 255}
        with Image.open(out / r["overlay"]) as ov:
            assert ov.format == "PNG" and min(ov.size) > 200
        json_row = next(x for x in doc["rows"] if x["path"] == str(p))
        assert json_row["score"] == pytest.approx(pred.score, rel=1e-6) and json_row["reason"] is None
    assert sorted(f.name for f in (out / "overlays").iterdir()) == sorted(
        Path(rows[p]["overlay"]).name for p in files["scored"]
    )
    assert "anomopt: warning: skipped" in captured.err


def test_predict_writes_overlays_without_matplotlib_or_torch(artifact, tmp_path):
    """The thin runtime has neither: with them unimportable, predict still writes every overlay."""
    images = write_images(tmp_path / "images", 2)
    out = tmp_path / "pred"
    code = f"""
        import sys
        for name in ("matplotlib", "torch", "torchvision", "timm", "scipy"):
            sys.modules[name] = None  # importing them now fails
        from anomopt.cli.main import main
        rc = main(["predict", {str(artifact)!r}, {str(tmp_path / "images")!r}, "--out", {str(out)!r}])
        print(rc, sorted(m for m in sys.modules if m.split(".")[0] in ("matplotlib", "torch") and sys.modules[m]))
    """
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "0 []"
    overlays = sorted((out / "overlays").iterdir())
    assert [p.name for p in overlays] == [f"{i:05d}_{p.stem}.png" for i, p in enumerate(images)]
    for p in overlays:
        with Image.open(p) as ov:
            assert ov.format == "PNG" and ov.height >= 256


def test_nothing_scorable_exits_2_with_the_reasons_written(artifact, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "pred"
    assert main(["predict", str(artifact), str(bad), "--out", str(out)]) == 2
    one_line_error(capsys, "none of the 1 files could be scored", str(out / "predictions.csv"))
    (row,) = _rows(out)
    assert row["decision"] == "skipped" and str(bad) in row["reason"]


def test_a_run_never_mixes_with_an_earlier_one(artifact, tmp_path, capsys):
    images = write_images(tmp_path / "images", 3)
    out = tmp_path / "pred"
    assert main(["predict", str(artifact), str(tmp_path / "images"), "--out", str(out)]) == 0
    assert len(list((out / "overlays").iterdir())) == 3
    assert main(["predict", str(artifact), str(images[1]), "--out", str(out), "--no-overlays"]) == 0
    assert [r["path"] for r in _rows(out)] == [str(images[1])]
    assert not (out / "overlays").exists() and len(list((out / "masks").iterdir())) == 1
    assert json.loads((out / "predictions.json").read_text())["counts"]["files"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder or lock left


def test_out_with_user_files_is_refused_unless_overwrite(artifact, tmp_path, capsys):
    images = write_images(tmp_path / "images", 1)
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.docx").write_bytes(b"my report")
    before = snapshot(out)
    assert main(["predict", str(artifact), str(images[0]), "--out", str(out)]) == 2
    one_line_error(capsys, str(out), "not empty", "--overwrite")
    assert snapshot(out) == before
    assert main(["predict", str(artifact), str(images[0]), "--out", str(out), "--overwrite"]) == 0
    assert (out / "predictions.csv").is_file() and not (out / "report.docx").exists()


def test_out_holding_the_images_is_refused(artifact, tmp_path, capsys):
    images = write_images(tmp_path / "images", 2)
    before = snapshot(tmp_path / "images")
    assert (
        main(["predict", str(artifact), str(tmp_path / "images"), "--out", str(tmp_path / "images"), "--overwrite"])
        == 2
    )
    one_line_error(capsys, "holds the input", str(images[0].parent))
    assert snapshot(tmp_path / "images") == before


def test_decompression_bomb_is_a_skipped_row_not_a_traceback(artifact, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # a 100x100 image is then "too large" (> 2x the limit)
    small = write_images(tmp_path / "small", 1, size=(40, 40))[0]
    big = write_images(tmp_path / "big", 1, size=(100, 100))[0]
    out = tmp_path / "pred"
    assert main(["predict", str(artifact), str(small), str(big), "--out", str(out), "--no-overlays"]) == 0
    rows = {r["path"]: r for r in _rows(out)}
    assert rows[str(small)]["decision"] in ("normal", "anomalous")
    assert rows[str(big)]["decision"] == "skipped" and "decompression bomb" in rows[str(big)]["reason"].lower()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_batch_size_must_be_positive(artifact, tmp_path, capsys, value):
    img = write_images(tmp_path / "images", 1)[0]
    assert main(["predict", str(artifact), str(img), "--out", str(tmp_path / "p"), "--batch-size", value]) == 2
    one_line_error(capsys, "--batch-size must be at least 1", value)
    assert not (tmp_path / "p").exists()


def test_unknown_category_is_refused(artifact, tmp_path, capsys):
    img = write_images(tmp_path / "images", 1)[0]
    assert main(["predict", str(artifact), str(img), "--out", str(tmp_path / "p"), "--category", "pcb"]) == 2
    one_line_error(capsys, "'pcb'", "fabric")


def test_overlay_is_calm_below_zero_and_the_threshold_is_on_the_scale():
    rng = np.random.default_rng(0)
    image = rng.random((SIZE, SIZE, 3))
    mask = np.zeros((SIZE, SIZE), bool)
    info = OverlayInfo("x.png", "fabric", 1.0, 0.0, 3.0, 4.0, False)
    calm = render_overlay(image, np.zeros((SIZE, SIZE)), mask, info)
    below = render_overlay(image, np.full((SIZE, SIZE), -3.0), mask, info)
    hot = render_overlay(image, np.full((SIZE, SIZE), 6.0), mask, info)
    assert calm == below  # at or below the normal mean the photo shows unchanged
    assert hot != calm
    lo, hi = z_scale(4.0)
    assert lo <= 0.0 < 4.0 < hi  # one fixed scale for every image, with the threshold inside it
