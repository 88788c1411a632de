"""Multi-process (DDP, 2 gloo processes) training of the real STFPM / RD / US models at a tiny size.

Two processes give the one-process model exactly when the one process normalises each half batch with
that half's own BatchNorm statistics (what DDP's per-process BatchNorm does); docs/design.md, Training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomopt.checkpoint import load_checkpoint
from ddp_models_worker import MODELS, per_process_batchnorm, train_tiny

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": f"{TESTS}:{TESTS.parent / 'src'}", "OMP_NUM_THREADS": "1"}


def _relative_update_difference(a: dict, b: dict, before: dict) -> float:
    """|a - b| / |a - before| over every floating tensor: how far two trainings of one start ended apart,
    relative to how far training moved."""
    num = den = 0.0
    for k, v in a.items():
        if v.is_floating_point():
            num += float((v.double() - b[k].double()).norm() ** 2)
            den += float((v.double() - before[k].double()).norm() ** 2)
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "states.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "ddp_models_worker.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_two_processes_train_the_one_process_model(ddp_results, name):
    with per_process_batchnorm(world=2):
        single = train_tiny(name)
    before, after, ddp = single["before"], single["after"], ddp_results[name]["after"]
    assert set(ddp) == set(after)
    moved = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("student.") for k in moved), "training changed no student weight"
    for k, v in after.items():
        if v.is_floating_point():
            torch.testing.assert_close(ddp[k], v, rtol=1e-3, atol=2e-4, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(ddp[k], v), k
    assert _relative_update_difference(ddp, after, before) < 1e-3


@pytest.mark.slow
def test_cli_trains_stfpm_with_two_processes(tmp_path):
    """The reported failure: ``anomopt train --nproc 2`` (DDP found student blocks with no gradient)."""
    cli = [sys.executable, "-m", "anomopt.cli.main"]
    data, out = tmp_path / "data", tmp_path / "run"
    synth = [*cli, "data", "synth", "--out", str(data), "--categories", "1", "--train", "9", "--test", "2",
             "--size", "64", "--quiet"]
    assert subprocess.run(synth, capture_output=True, text=True, env=ENV).returncode == 0
    train = [*cli, "train", "--model", "stfpm", "--data", str(data), "--image-size", "64", "--epochs", "1",
             "--batch-size", "4", "--precision", "fp32", "--no-cache", "--nproc", "2", "--quiet",
             "--out", str(out)]
    proc = subprocess.run(train, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, payload = load_checkpoint(out / "model.ckpt", expect_model="stfpm")
    assert payload["training"]["complete"]
    assert json.loads((out / "train.json").read_text())["runs"]["unified"]["epochs"] == 1
    with torch.no_grad():
        scores, _ = model(torch.rand(2, 3, 64, 64))
    assert torch.isfinite(scores).all()
