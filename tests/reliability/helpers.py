"""Shared helpers of the output-safety tests: a tiny artifact, a snapshot of a user's folder, the CLI's
one-line error, and a folder this process cannot write to."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SIZE = 64
NORMALIZATION = {
    "fabric": {
        "score_mean": 1.0,
        "score_std": 0.25,
        "image_threshold_z": 3.0,
        "map_mean": 0.5,
        "map_std": 0.2,
        "pixel_threshold_z": 4.0,
        "n_val": 6,
    }
}


def make_artifact(path: Path, size: int = SIZE) -> Path:
    """A 64 px FP32 STFPM artifact (random weights) with one category's thresholds."""
    from anomopt.api import optimize
    from anomopt.models import build_model

    torch.manual_seed(0)
    calib = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    om = optimize(
        build_model("stfpm", image_size=size),
        "cpu",
        32,
        calib=calib,
        calib_samples=4,
        categories=["fabric"],
        normalization=NORMALIZATION,
        progress=False,
    )
    return om.save(path)


def write_images(folder: Path, n: int, size: tuple[int, int] = (80, 96), seed: int = 0) -> list[Path]:
    """``n`` random RGB PNGs of ``size`` (height, width)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (what 'not touched' compares)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line_error(capsys, *words: str) -> str:
    """The CLI's stderr: exactly one ``anomopt: error:`` line holding every word of ``words``."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("anomopt: warning:")]
    assert len(lines) == 1 and lines[0].startswith("anomopt: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a chmod 0555 folder, or /sys when running as root
    (root ignores permission bits); skips when neither is read-only here."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    for cand in (ro, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=cand)
        except OSError:
            return cand
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no read-only folder available to this process")


def train_argv(data: Path, out: Path, epochs: int = 1, *extra: str) -> list[str]:
    """``anomopt train`` arguments for a small unified STFPM run (default batch size 8) at SIZE px, FP32."""
    return [
        "train", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
        "--image-size", str(SIZE), "--precision", "fp32", "--quiet", *extra,
    ]
