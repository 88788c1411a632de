"""Training: loss falls for every model, checkpoints round-trip safely, resume and DDP are exact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomopt.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from anomopt.errors import CheckpointError, ConfigError, WeightsNotFoundError
from anomopt.models import build_model
from anomopt.models.backbones import create_feature_extractor
from anomopt.train import TrainConfig, train_model
from conftest import ImageList, ToyKD, sgd_step_gradients


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", ["stfpm", "rd", "us"])
def test_each_model_trains_with_falling_loss(name):
    torch.manual_seed(0)
    # US: half the epochs distil the teachers, half train the students (3 + 3 below)
    us = {"teacher": "distilled", "teacher_fraction": 0.5}
    model = build_model(name, image_size=64, **(us if name == "us" else {}))
    data = ImageList(_images(16, 64))
    result = train_model(model, data, TrainConfig(epochs=6, batch_size=8, progress=False, precision="fp32"))
    assert len(result.losses) == 6
    assert all(np.isfinite(result.losses))
    if name == "us":  # two phases with different losses: each must fall
        first, second = result.losses[:3], result.losses[3:]
        assert first[-1] < first[0] and second[-1] < second[0]
    else:
        assert result.losses[-1] < 0.9 * result.losses[0]
    scores, maps = model.eval()(_images(2, 64, seed=5))
    assert scores.shape == (2,) and maps.shape == (2, 1, 64, 64)
    assert torch.isfinite(scores).all()


def test_checkpoint_roundtrip_is_weights_only_and_exact(tmp_path):
    torch.manual_seed(0)
    model = build_model("rd", image_size=64).eval()
    path = save_checkpoint(tmp_path / "m.ckpt", model, ["a", "b"], normalization={"a": {"score_mean": 1.0}})
    loaded, payload = load_checkpoint(path)
    x = _images(2, 64)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert payload["categories"] == ["a", "b"] and payload["config"]["model"] == "rd"
    torch.load(path, weights_only=True)  # no pickled code inside


def test_bad_checkpoints_get_clear_errors(tmp_path):
    torch.manual_seed(0)
    model = build_model("stfpm", image_size=64)
    path = save_checkpoint(tmp_path / "m.ckpt", model, ["a"])
    with pytest.raises(CheckpointError, match="holds model 'stfpm', not 'rd'"):
        load_checkpoint(path, expect_model="rd")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match="future.ckpt: checkpoint format version 99"):
        read_checkpoint(tmp_path / "future.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not an anomopt checkpoint"):
        load_checkpoint(tmp_path / "foreign.ckpt")


def test_resume_continues_bit_for_bit(tmp_path):
    data = ImageList(_images(12, 32))
    cfg = dict(batch_size=4, progress=False, precision="fp32", seed=1)
    straight = ToyKD(seed=0)
    train_model(straight, data, TrainConfig(epochs=3, **cfg))
    part = ToyKD(seed=0)
    ckpt = tmp_path / "toy.ckpt"
    train_model(part, data, TrainConfig(epochs=2, checkpoint=str(ckpt), **cfg))
    resumed = ToyKD(seed=0)
    result = train_model(resumed, data, TrainConfig(epochs=3, checkpoint=str(ckpt), resume=True, **cfg))
    assert result.epochs_run == 1 and len(result.losses) == 3
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_same_seed_same_weights():
    data = ImageList(_images(8, 32))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = ToyKD(seed=0)
        train_model(m, data, TrainConfig(epochs=2, batch_size=4, progress=False, precision="fp32"))
        runs.append(m.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_bad_training_options():
    data = ImageList(_images(4, 32))
    with pytest.raises(ConfigError, match="precision"):
        train_model(ToyKD(), data, TrainConfig(epochs=1, precision="fp8", progress=False))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_model(
            ToyKD(),
            data,
            TrainConfig(epochs=1, resume=True, checkpoint="/nonexistent/x.ckpt", progress=False),
        )


def test_ddp_gradients_match_single_process(tmp_path):
    """Two gloo processes, each on half of the same global batch, give the single-process gradient."""
    out = tmp_path / "ddp_grads.pt"
    tests = Path(__file__).parent
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(tests / "ddp_worker.py"),
        str(out),
    ]
    env = {**__import__("os").environ, "PYTHONPATH": f"{tests}:{Path(__file__).parents[1] / 'src'}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = torch.load(out, weights_only=True)

    single = sgd_step_gradients()
    assert set(ddp) == set(single)
    for k in single:
        assert single[k].abs().max() > 0, k
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-6)


def test_missing_backbone_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: nothing to find, nothing downloaded
    with pytest.raises(WeightsNotFoundError, match="wide_resnet50_2.*To provide them: pass weights="):
        create_feature_extractor("wide_resnet50_2", pretrained=True)


def test_resnet18_from_user_file(tmp_path):
    import timm

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save(state, tmp_path / "r18.pth")
    net = create_feature_extractor("resnet18", pretrained=True, weights=tmp_path / "r18.pth")
    feats = net(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 128, 256]
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsNotFoundError, match="bad.pth: not a resnet18 checkpoint"):
        create_feature_extractor("resnet18", pretrained=True, weights=tmp_path / "bad.pth")
