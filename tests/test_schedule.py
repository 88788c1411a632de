"""The learning-rate schedule (warm-up + decay) as recipe data, and training that follows it."""

from __future__ import annotations

import math

import pytest
import torch

from anomopt.checkpoint import read_checkpoint
from anomopt.errors import ConfigError
from anomopt.models import RECIPES, Recipe
from anomopt.schedule import lr_factor
from anomopt.train import TrainConfig, resolved_recipe, train_model
from conftest import ImageList, ToyKD


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warm_up_then_monotone_decay_to_the_floor(decay):
    total, warmup, floor = 100, 0.1, 0.02
    f = [lr_factor(s, total, warmup, decay, floor) for s in range(total)]
    w = 10
    assert f[0] == pytest.approx(1 / w) and f[w - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[: w - 1], f[1:w]))  # strictly rising warm-up
    assert f[w] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[w:], f[w + 1 :]))  # never rises again
    assert f[-1] == pytest.approx(floor)
    assert min(f[w:]) == pytest.approx(floor)
    mid = lr_factor(w + (total - 1 - w) // 2, total, warmup, decay, floor)
    assert floor < mid < 1.0


def test_constant_and_no_warm_up_keep_the_learning_rate():
    assert [lr_factor(s, 7) for s in range(7)] == [1.0] * 7
    assert lr_factor(0, 10, 0.0, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(9, 10, 0.0, "cosine", 0.0) == pytest.approx(0.0)
    assert lr_factor(0, 1, 0.5, "cosine", 0.1) == pytest.approx(0.1)  # one step: warm-up gives way


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"decay": "step"}, "decay"),
        ({"warmup": 1.0}, "warmup"),
        ({"warmup": -0.1}, "warmup"),
        ({"final_lr": 1.5}, "final_lr"),
        ({"final_lr": math.nan}, "final_lr"),
        ({"lr": 0.0}, "learning rate"),
        ({"optimizer": "lion"}, "adam or sgd"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_recipe_fields_are_validated(kwargs, match):
    base = {"blur_sigma": 0.0, "optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0}
    with pytest.raises(ConfigError, match=match):
        Recipe(**{**base, **kwargs})


def test_shipped_recipes_are_valid_and_config_overrides_their_schedule():
    for name, r in RECIPES.items():
        assert Recipe(**{**r.__dict__}) == r, name  # every field passes validation
        f = [lr_factor(s, 50, r.warmup, r.decay, r.final_lr) for s in range(50)]
        assert max(f) == pytest.approx(1.0) and f[-1] == pytest.approx(r.final_lr)
    r = resolved_recipe(TrainConfig(warmup=0.0, decay="linear", final_lr=0.5), "stfpm")
    assert (r.warmup, r.decay, r.final_lr) == (0.0, "linear", 0.5)
    with pytest.raises(ConfigError, match="decay"):
        resolved_recipe(TrainConfig(decay="exp"), "rd")


def test_training_follows_the_schedule(tmp_path):
    """A tiny run: the optimizer's lr after the last step is the floor, and a decayed run ends elsewhere
    than a constant one from the same seed."""
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    weights = {}
    for decay in ("constant", "cosine"):
        model = ToyKD(image_size=32, seed=0)
        ckpt = tmp_path / f"{decay}.pt"
        config = TrainConfig(epochs=3, batch_size=4, optimizer="sgd", lr=0.05, warmup=0.2, decay=decay,
                             final_lr=0.1, progress=False, precision="fp32", checkpoint=str(ckpt))
        train_model(model, ImageList(images), config)
        lr_end = read_checkpoint(ckpt)["training"]["optimizer"]["param_groups"][0]["lr"]
        assert lr_end == pytest.approx(0.05 if decay == "constant" else 0.005)
        weights[decay] = torch.cat([p.detach().flatten() for p in model.trainable_parameters()])
    assert not torch.allclose(weights["constant"], weights["cosine"])


def test_resumed_calls_with_schedule_epochs_follow_the_one_shot_curve(tmp_path):
    """Training to 3 epochs in three resumed calls with ``schedule_epochs=3`` ends where one call ends."""
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    common = {"batch_size": 4, "optimizer": "sgd", "lr": 0.05, "warmup": 0.2, "decay": "cosine",
              "final_lr": 0.1, "progress": False, "precision": "fp32", "cache_features": False}
    one = ToyKD(image_size=32, seed=0)
    train_model(one, ImageList(images), TrainConfig(epochs=3, checkpoint=str(tmp_path / "one.pt"), **common))
    steps = ToyKD(image_size=32, seed=0)
    for k in (1, 2, 3):
        train_model(steps, ImageList(images), TrainConfig(epochs=k, schedule_epochs=3, resume=k > 1,
                                                          checkpoint=str(tmp_path / "steps.pt"), **common))
    for a, b in zip(one.trainable_parameters(), steps.trainable_parameters()):
        torch.testing.assert_close(a, b)
