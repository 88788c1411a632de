"""The thin runtime install: a fresh venv with only numpy, onnxruntime and pillow (no torch), plus the
project installed with --no-deps, runs ``anomopt predict`` and ``Predictor`` on an artifact exported
earlier in this run, and gives the torch model's scores. Commands needing torch say what to install.

About 40 s offline on this machine (the wheel, a venv without pip, the three packages from the local index).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomopt.api import optimize
from anomopt.data.synthetic import render_sample
from anomopt.models import build_model
from anomopt.runtime import load_image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
CATEGORIES = ["fabric", "mesh"]  # categories the synthetic generator makes
NORMALIZATION = {
    c: {"score_mean": m, "score_std": 0.5, "image_threshold_z": 3.0, "map_mean": 0.2, "map_std": 0.1,
        "pixel_threshold_z": 4.0, "n_val": 10}
    for c, m in zip(CATEGORIES, (1.0, 2.0))
}
RUNTIME_PACKAGES = ["numpy", "onnxruntime", "pillow"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny STFPM exported for the CPU in FP32, the torch model it came from, and images to score."""
    torch.manual_seed(0)
    model = build_model("stfpm", image_size=SIZE).eval()
    calib = torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    work = tmp_path_factory.mktemp("work")
    om = optimize(model, "cpu", 32, calib=calib, categories=CATEGORIES, normalization=NORMALIZATION,
                  workdir=work, progress=False)
    artifact = om.save(tmp_path_factory.mktemp("art") / "stfpm-cpu-fp32")
    images = tmp_path_factory.mktemp("images")
    for i, defect in enumerate([None, "hole", None]):
        image, _ = render_sample("fabric", i, defect=defect, image_size=SIZE)
        Image.fromarray(image).save(images / f"{i}.png")
    shutil.rmtree(work)  # as `anomopt export` does with its work folder
    return artifact, model, images


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of its sources (building in place would leave build files in
    the checkout), in pip's isolated build environment: setuptools>=77 from the configured package index."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "anomopt-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "passes", source / "passes")
    shutil.copytree(ROOT / "src", source / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp / "dist", source],
                env=_thin_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    (found,) = (tmp / "dist").glob("anomopt-*.whl")
    return found


@pytest.fixture(scope="module")
def thin_venv(tmp_path_factory, wheel) -> Path:
    """A venv holding only the runtime packages and the project installed with --no-deps (this pip drives
    the venv's interpreter, so the venv needs no pip of its own)."""
    venv = tmp_path_factory.mktemp("thin") / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet",
           "-c", ROOT / "constraints.txt"]
    for cmd in (pip + RUNTIME_PACKAGES, pip + ["--no-deps", wheel]):
        proc = _run(cmd, env=_thin_env())  # no PYTHONPATH: pip must not see the checkout as installed
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))}: {proc.stderr[-2000:]}"
    return venv


def test_base_install_requires_only_the_runtime_packages(wheel):
    """``pip install anomopt`` pulls numpy, onnxruntime and pillow; torch and the rest need ``[train]``."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    base = {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    train = {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0].lower() for r in requires if "extra == \"train\"" in r}
    assert base == set(RUNTIME_PACKAGES)
    assert {"torch", "torchvision", "matplotlib", "scipy"} <= train
    assert not any(r.startswith("torch==") for r in requires)  # no exact torch pin forced on users


def _thin_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _torch_scores(model, images: Path) -> list[float]:
    paths = sorted(images.glob("*.png"))
    x = torch.from_numpy(np.stack([load_image(p, SIZE) for p in paths])).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(x)[0].tolist()


def test_thin_venv_has_no_torch_and_runs_the_installed_copy(thin_venv, tmp_path):
    script = "import importlib.util, anomopt; print(importlib.util.find_spec('torch') is None, anomopt.__file__)"
    proc = _run([thin_venv / "bin" / "python", "-c", script], cwd=tmp_path, env=_thin_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    no_torch, where = proc.stdout.split()
    assert no_torch == "True"
    assert Path(where).is_relative_to(thin_venv)


def test_thin_predict_cli_matches_torch(thin_venv, exported, tmp_path):
    artifact, model, images = exported
    anomopt = thin_venv / "bin" / "anomopt"
    for args in (["--help"], ["predict", "--help"]):
        assert _run([anomopt, *args], cwd=tmp_path, env=_thin_env()).returncode == 0, args
    out = tmp_path / "pred"
    proc = _run([anomopt, "predict", artifact, images, "--category", "fabric", "--out", out],
                cwd=tmp_path, env=_thin_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    np.testing.assert_allclose([float(r["score"]) for r in rows], _torch_scores(model, images), rtol=1e-4)
    assert len(list((out / "overlays").glob("*.png"))) == 3


def test_thin_predictor_matches_torch(thin_venv, exported, tmp_path):
    artifact, model, images = exported
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import numpy as np
        from anomopt.runtime import Predictor, load_image
        p = Predictor({str(artifact)!r})
        paths = sorted(Path({str(images)!r}).glob("*.png"))
        out = p.predict(np.stack([load_image(q, p.image_size) for q in paths]), category="mesh")
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print(json.dumps([o.score for o in out]))
    """)
    proc = _run([thin_venv / "bin" / "python", "-c", script], cwd=tmp_path, env=_thin_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(json.loads(proc.stdout), _torch_scores(model, images), rtol=1e-4)


@pytest.mark.parametrize("command", [["train", "--data", "d", "--out", "o"], ["evaluate", "m.ckpt", "--data", "d"],
                                     ["export", "m.ckpt", "--target", "cpu", "--out", "o"], ["demo"],
                                     ["data", "synth", "--out", "d"]])
def test_thin_commands_needing_torch_name_the_extra(thin_venv, tmp_path, command):
    proc = _run([thin_venv / "bin" / "anomopt", *command], cwd=tmp_path, env=_thin_env())
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"`anomopt {command[0]}` needs the training extra" in lines[0] and "anomopt[train]" in lines[0]
    assert not list(tmp_path.iterdir())  # nothing written


def test_report_json_names_no_deleted_work_folder(exported):
    """Pass notes point into the artifact folder, not into the (deleted) folder the model was lowered in."""
    artifact = exported[0]
    text = (artifact / "report.json").read_text()
    report = json.loads(text)
    lower = [p for p in report["passes"] if p["name"] == "lower"][-1]
    assert lower["notes"]["artifact"] == "."
    stale = [line for line in text.splitlines() if str(artifact.parent.parent) in line]
    assert not stale
