"""Per-model recipes: the map blur and the optimizer each model trains with unless told otherwise."""

from __future__ import annotations

import pytest
import torch

from anomopt.errors import ConfigError
from anomopt.models import RECIPES, build_model, model_from_config
from anomopt.train import TrainConfig, make_optimizer, resolved_recipe


def test_stfpm_trains_with_sgd_momentum_by_default():
    model = build_model("stfpm", image_size=64, pretrained=False)
    opt = make_optimizer(model.trainable_parameters(), TrainConfig(), "stfpm")
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert group["momentum"] == pytest.approx(0.9)
    assert group["lr"] == pytest.approx(RECIPES["stfpm"].lr)
    assert group["weight_decay"] == pytest.approx(RECIPES["stfpm"].weight_decay)


@pytest.mark.parametrize("name", ["rd", "us", "some_user_model"])
def test_other_models_train_with_adam(name):
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(make_optimizer(params, TrainConfig(), name), torch.optim.Adam)


def test_config_values_override_the_recipe():
    r = resolved_recipe(TrainConfig(lr=0.05, momentum=0.5, weight_decay=0.0), "stfpm")
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay) == ("sgd", 0.05, 0.5, 0.0)
    r = resolved_recipe(TrainConfig(optimizer="adam", lr=1e-3), "stfpm")
    assert (r.optimizer, r.lr) == ("adam", 1e-3)


def test_switching_optimizer_without_a_learning_rate_is_refused():
    with pytest.raises(ConfigError, match="learning rate"):
        resolved_recipe(TrainConfig(optimizer="adam"), "stfpm")  # SGD's lr 0.8 would wreck Adam
    with pytest.raises(ConfigError, match="adam or sgd"):
        resolved_recipe(TrainConfig(optimizer="lion", lr=1e-3), "stfpm")
    with pytest.raises(ConfigError, match="positive"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(lr=0.0), "stfpm")


@pytest.mark.parametrize("name,blurred", [("stfpm", False), ("rd", False), ("us", True)])
def test_blur_follows_the_recipe_and_scales_with_image_size(name, blurred):
    model = build_model(name, image_size=128, pretrained=False)
    assert model.config.blur_sigma == pytest.approx(RECIPES[name].blur_sigma * 128 / 256)
    assert (model.head.blur_matrix is not None) == blurred


def test_a_checkpoint_config_keeps_the_blur_it_was_trained_with():
    config = build_model("stfpm", image_size=64, pretrained=False).config.to_dict()
    config["blur_sigma"] = 1.0  # an STFPM saved before the recipe dropped the blur
    model = model_from_config(config, pretrained=False)
    assert model.head.blur_matrix is not None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        _, blurred = model(x)
        model.head.blur_matrix = None
        _, raw = model(x)
    assert not torch.allclose(blurred, raw)
