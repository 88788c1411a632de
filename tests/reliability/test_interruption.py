"""Killing `anomopt train` or `anomopt optimize` part-way leaves nothing a later run would load by mistake:
only a complete model.ckpt (which `--resume` continues) and either no artifact folder or a complete one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anomopt.checkpoint import load_checkpoint, save_checkpoint
from anomopt.cli.main import main
from anomopt.data import generate_synthetic
from anomopt.errors import CheckpointError
from anomopt.models import build_model
from anomopt.runtime import Predictor
from reliability.helpers import SIZE, train_argv

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("intr") / "data"
    generate_synthetic(root, categories=2, n_train=6, n_test=2, image_size=SIZE, seed=0, progress=False)
    return root



def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"process ended ({proc.returncode}) before {path} appeared: "
                f"{proc.stderr.read()[-2000:] if proc.stderr else ''}"
            )
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def _assert_only_complete_checkpoint_loads(out: Path) -> dict:
    """model.ckpt loads; anything else in the folder is a hidden temp file that is not a checkpoint name."""
    _, payload = load_checkpoint(out / "model.ckpt")
    for f in out.iterdir():
        if f.name in ("model.ckpt", "train.json"):
            continue
        assert f.name.startswith(".") and f.name.endswith(".tmp"), f"unexpected leftover {f}"
        # A leftover temp file is never picked up as a checkpoint: it has another name, and, if it was
        # cut short, it does not load as one either.
        with contextlib.suppress(CheckpointError):
            load_checkpoint(f)
    return payload


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_train_killed_after_first_checkpoint_then_resumes(data, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "anomopt.cli.main", *train_argv(data, out, 4)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(out / "model.ckpt", proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGINT and proc.returncode != 0:  # it may have finished before the signal landed
        assert proc.returncode == 130 and "anomopt: interrupted" in err
    elif proc.returncode != 0:  # SIGTERM: cleanup ran, then exit 143
        assert proc.returncode == 143 and "anomopt: terminated" in err
    payload = _assert_only_complete_checkpoint_loads(out)
    done = payload["training"]["epoch"]
    assert 1 <= done <= 4
    # SIGTERM: resume all the way to 4 epochs; SIGINT: one more epoch (keeps the suite fast).
    target = 4 if sig == signal.SIGTERM else min(done + 1, 4)
    assert main([*train_argv(data, out, target), "--resume"]) == 0
    payload = _assert_only_complete_checkpoint_loads(out)
    assert payload["training"]["epoch"] == target


def test_optimize_killed_part_way_leaves_no_half_artifact(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "model.ckpt", build_model("stfpm", image_size=SIZE), ["fabric"])
    data = tmp_path / "data"
    generate_synthetic(data, categories=1, n_train=4, n_test=2, image_size=SIZE, seed=0, progress=False)
    out = tmp_path / "arts" / "art"
    argv = [
        "optimize",
        str(ckpt),
        "--data",
        str(data),
        "--out",
        str(out),
        "--bits",
        "32",
        "--calib-samples",
        "4",
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "anomopt.cli.main", *argv], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # Kill it at the worst moment: while the artifact folder is being written (a hidden temp folder
        # beside --out exists), or whenever it gets that far.
        end = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < end:
            if out.parent.is_dir() and any(p.name.startswith(".art.") for p in out.parent.iterdir()):
                break
            time.sleep(0.005)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if out.exists():
        scores = Predictor(out, threads=1).run(torch.rand(1, 3, SIZE, SIZE).numpy())[0]
        assert scores.shape == (1,)
    else:
        assert not out.exists()
    # Leftover temp folders are hidden and never the --out path; a rerun writes a complete artifact.
    assert all(p.name.startswith(".") for p in (out.parent.iterdir() if out.parent.exists() else []) if p != out)
