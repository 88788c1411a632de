"""Artifact folders: two processes exporting at once, a missing or edited meta.json (Predictor and
`anomopt predict`), and one Predictor shared by 8 threads."""

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

from anomopt.checkpoint import save_checkpoint
from anomopt.cli.main import main
from anomopt.errors import CheckpointError
from anomopt.models import build_model
from anomopt.runtime import Predictor

SIZE = 64
SRC = Path(__file__).resolve().parents[2] / "src"

EXPORT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from anomopt.api import optimize
    ckpt, out = sys.argv[1], sys.argv[2]
    calib = torch.rand(8, 3, {size}, {size}, generator=torch.Generator().manual_seed(0))
    optimize(ckpt, "cpu", 32, calib=calib, calib_samples=4, progress=False).save(out)
    """
).format(size=SIZE)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """Two processes export the same checkpoint to two folders at the same time."""
    work = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    norm = {c: {"score_mean": 1.0, "score_std": 0.5, "image_threshold_z": 3.0} for c in ("bottle", "screw")}
    ckpt = save_checkpoint(
        work / "model.ckpt", build_model("stfpm", image_size=SIZE), ["bottle", "screw"], normalization=norm
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    outs = [work / "a" / "art", work / "b" / "art"]
    procs = [
        subprocess.Popen([sys.executable, "-c", EXPORT, str(ckpt), str(o)], env=env, stderr=subprocess.PIPE, text=True)
        for o in outs
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    return outs[0], outs[1]


@pytest.fixture(scope="module")
def artifact(exported) -> Path:
    return exported[0]


@pytest.fixture(scope="module")
def predictor(artifact) -> Predictor:
    return Predictor(artifact, threads=1)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _copy(artifact: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def _cli_predict(art: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    img = tmp_path / "img.png"
    Image.fromarray(_images(1)[0]).save(img)
    rc = main(["predict", str(art), str(img), "--out", str(tmp_path / "pred"), "--no-overlays"])
    return rc, capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- export


def test_two_processes_exporting_do_not_interfere(exported):
    a, b = exported
    for art in (a, b):
        assert {p.name for p in art.iterdir()} >= {"model.onnx", "meta.json"}
        assert not [p for p in art.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    x = _images(6, seed=3)
    sa = [p.score for p in Predictor(a, threads=1).predict(x, "bottle")]
    sb = [p.score for p in Predictor(b, threads=1).predict(x, "bottle")]
    assert sa == sb and np.isfinite(sa).all()


# ----------------------------------------------------------------------------------------------- meta.json


def test_missing_meta_json(artifact, tmp_path, capsys):
    art = _copy(artifact, tmp_path)
    (art / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=r"meta.json: missing"):
        Predictor(art)
    rc, err = _cli_predict(art, tmp_path, capsys)
    assert rc == 2 and err.startswith("anomopt: error: ") and err.count("\n") == 1
    assert str(art / "meta.json") in err
    assert not (tmp_path / "pred" / "predictions.csv").exists()


def test_missing_artifact_folder(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="artifact folder not found"):
        Predictor(tmp_path / "nothing")
    rc, err = _cli_predict(tmp_path / "nothing", tmp_path, capsys)
    assert rc == 2 and str(tmp_path / "nothing") in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.update(format_version=42), "format_version"),
        (lambda m: m.update(image_size="big"), "image_size"),
        (lambda m: m.update(precision="int3"), "precision"),
        (lambda m: m.pop("input"), "input"),
        (lambda m: m.update(categories="bottle"), "categories"),
        (lambda m: m["files"]["model.onnx"].update(sha256="f" * 64), "sha256"),
    ],
)
def test_edited_meta_json(artifact, tmp_path, capsys, edit, field):
    art = _copy(artifact, tmp_path)
    meta = json.loads((art / "meta.json").read_text())
    edit(meta)
    (art / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        Predictor(art)
    assert "meta.json" in str(err.value) and field in str(err.value)
    rc, out = _cli_predict(art, tmp_path, capsys)
    assert rc == 2 and out.startswith("anomopt: error: ") and out.count("\n") == 1
    assert str(art) in out and field in out


def test_meta_json_not_json(artifact, tmp_path, capsys):
    art = _copy(artifact, tmp_path)
    (art / "meta.json").write_text('{"format": ')
    with pytest.raises(CheckpointError, match="meta.json: not valid JSON"):
        Predictor(art)
    rc, err = _cli_predict(art, tmp_path, capsys)
    assert rc == 2 and "meta.json: not valid JSON" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------- threads


def test_shared_predictor_8_threads_matches_serial(predictor):
    base = _images(5, seed=2)
    images = [base[i % len(base)] for i in range(200)]
    serial = {i: predictor.predict(base[i], "screw")[0].score for i in range(len(base))}
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda im: predictor.predict(im, "screw")[0].score, images))
    assert parallel == [serial[i % len(base)] for i in range(200)]
    batched = [p.score for p in predictor.predict(base, "screw")]
    np.testing.assert_allclose(batched, [serial[i] for i in range(len(base))], rtol=1e-5)
