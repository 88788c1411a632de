"""Feature extractors end at their last tap: no dead compute, every student weight trains, old
checkpoints (which still hold the cut blocks) load."""

from __future__ import annotations

import pytest
import torch

import anomopt.models.backbones as backbones
from anomopt.checkpoint import load_checkpoint, save_checkpoint
from anomopt.errors import CheckpointError
from anomopt.models import build_model

SIZE = 64


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_extractors_hold_only_the_blocks_up_to_the_last_tap():
    net = backbones.create_feature_extractor("efficientnet_lite0", pretrained=False)
    assert len(net.blocks) == 5  # blocks 5 and 6 (strides 32) fed no tap
    assert [f.shape[1] for f in net(_images(1))] == backbones.feature_channels("efficientnet_lite0")
    shallow = backbones.create_feature_extractor("efficientnet_lite0", pretrained=False, taps=(1,))
    assert len(shallow.blocks) == 2
    resnet = backbones.create_feature_extractor("resnet18", pretrained=False)
    assert not hasattr(resnet, "layer4")  # timm already stops ResNets at the last tap


@pytest.mark.parametrize("name", ["stfpm", "rd", "us"])
def test_every_trained_parameter_gets_a_gradient(name):
    """What DDP requires (and what failed for STFPM: student blocks after the last tap got none)."""
    torch.manual_seed(0)
    model = build_model(name, image_size=SIZE, pretrained=False).train()
    phases = ["teacher", "students"] if name == "us" else [None]
    for phase in phases:
        if phase is not None:
            model.set_epoch(0 if phase == "teacher" else 1, 2)
        params = dict((id(p), n) for n, p in model.named_parameters())
        trained = model.trainable_parameters()
        model.zero_grad(set_to_none=True)
        model.distillation_loss(_images(2)).backward()
        missing = [params[id(p)] for p in trained if p.grad is None]
        assert trained and not missing, f"{name} {phase}: no gradient for {missing[:3]}"


def _uncut_model(monkeypatch, name: str):
    """The model as built before the extractors were cut (timm's full block list)."""
    with monkeypatch.context() as m:
        m.setattr(backbones, "cut_after_last_tap", lambda net: 0)
        torch.manual_seed(0)
        return build_model(name, image_size=SIZE, pretrained=False).eval()


@pytest.mark.parametrize("name", ["stfpm", "us"])
def test_old_checkpoints_with_the_cut_blocks_still_load(monkeypatch, tmp_path, name):
    old = _uncut_model(monkeypatch, name)
    dropped = {k for k in old.state_dict() if ".features.blocks.5." in k or ".features.blocks.6." in k}
    assert dropped  # the old layout really holds the blocks the new one cuts
    path = save_checkpoint(tmp_path / "old.ckpt", old, ["a"])
    loaded, _ = load_checkpoint(path)  # strict: only the cut blocks' keys are dropped
    assert not dropped & set(loaded.state_dict())
    x = _images(2, seed=1)
    with torch.no_grad():
        for a, b in zip(old(x), loaded(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_other_unexpected_keys_still_fail(monkeypatch, tmp_path):
    old = _uncut_model(monkeypatch, "stfpm")
    state = old.state_dict()
    state["student.features.extra.weight"] = torch.zeros(1)
    path = save_checkpoint(tmp_path / "old.ckpt", old, ["a"])
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = state
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="extra.weight"):
        load_checkpoint(path)
