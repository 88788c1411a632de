"""RD's training-only bottleneck perturbations (the unified-training fix) and recipe model options."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from anomopt.errors import ConfigError
from anomopt.models import RECIPES, build_model, model_from_config


def _rd(**extra):
    torch.manual_seed(0)
    return build_model("rd", image_size=64, pretrained=False, **extra)


def test_perturbation_acts_in_training_only():
    plain = _rd(bottleneck_dropout=0.0, feature_jitter=0.0)
    noisy = _rd(bottleneck_dropout=0.3, feature_jitter=0.5)
    noisy.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(plain.eval()(x), noisy.eval()(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # inference (and the exported graph) unchanged
        t = noisy.teacher_features(x)
        noisy.train()
        s_noisy = noisy.student_features(x, t)
        plain.train()
        s_plain = plain.student_features(x, t)
    assert all(not torch.allclose(a, b) for a, b in zip(s_noisy, s_plain))


def test_jitter_scales_with_the_features():
    model = _rd(bottleneck_dropout=0.0, feature_jitter=0.5).train()
    f = [torch.full((4, 8, 6, 6), 3.0)]
    torch.manual_seed(2)
    noise = model.perturb(f)[0] - f[0]
    assert noise.std().item() == pytest.approx(1.5, rel=0.1)


def test_options_are_checked_and_come_from_the_recipe(monkeypatch):
    with pytest.raises(ConfigError, match="bottleneck_dropout"):
        _rd(bottleneck_dropout=1.0)
    with pytest.raises(ConfigError, match="feature_jitter"):
        _rd(feature_jitter=-1.0)
    monkeypatch.setitem(RECIPES, "rd", replace(RECIPES["rd"], model_options={"bottleneck_dropout": 0.3}))
    model = build_model("rd", image_size=64, pretrained=False)
    assert model.config.extra["bottleneck_dropout"] == 0.3 and model.bottleneck_dropout == 0.3
    assert build_model("rd", image_size=64, pretrained=False, bottleneck_dropout=0.1).bottleneck_dropout == 0.1
    rebuilt = model_from_config(model.config.to_dict(), pretrained=False)
    assert rebuilt.config.extra == model.config.extra and rebuilt.bottleneck_dropout == 0.3
