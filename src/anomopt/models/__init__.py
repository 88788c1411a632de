"""Unified knowledge-distillation anomaly models and their teacher backbones."""

from __future__ import annotations

from typing import Any

from anomopt.errors import ConfigError
from anomopt.models.backbones import BACKBONES, create_feature_extractor, get_backbone_config
from anomopt.models.base import KDModel, ModelConfig
from anomopt.models.rd import ReverseDistillation
from anomopt.models.recipes import RECIPES, Recipe, recipe_for
from anomopt.models.stfpm import STFPM
from anomopt.models.us import UninformedStudents

MODELS: dict[str, type[KDModel]] = {
    "stfpm": STFPM,
    "rd": ReverseDistillation,
    "us": UninformedStudents,
}


def build_model(
    name: str,
    backbone: str = "efficientnet_lite0",
    image_size: int = 256,
    pretrained: bool = True,
    weights: str | None = None,
    **extra: Any,
) -> KDModel:
    """Build ``stfpm``, ``rd`` or ``us`` on a registered backbone (weights loaded offline).

    ``blur_sigma`` (in ``extra``) defaults to the model's :data:`RECIPES` entry, scaled to ``image_size``;
    other ``extra`` options not given take the recipe's ``options``.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if image_size % 32 != 0 or image_size < 64:
        raise ConfigError(f"image_size must be a multiple of 32 and at least 64, not {image_size}")
    get_backbone_config(backbone)
    blur = float(extra.pop("blur_sigma", recipe_for(name).blur_sigma * image_size / 256))
    extra = {**dict(recipe_for(name).options), **extra}  # the recipe's model options unless given
    config = ModelConfig(model=name, backbone=backbone, image_size=image_size, blur_sigma=blur, extra=extra)
    return MODELS[name](config, pretrained=pretrained, weights=weights)


def model_from_config(config: dict[str, Any], pretrained: bool = True) -> KDModel:
    """Rebuild a model (weights still to load) from a checkpoint's config dict."""
    cfg = ModelConfig(**config)
    if cfg.model not in MODELS:
        raise ConfigError(f"checkpoint names unknown model {cfg.model!r}")
    return MODELS[cfg.model](cfg, pretrained=pretrained)


__all__ = [
    "BACKBONES",
    "KDModel",
    "MODELS",
    "ModelConfig",
    "RECIPES",
    "Recipe",
    "ReverseDistillation",
    "STFPM",
    "UninformedStudents",
    "build_model",
    "create_feature_extractor",
    "model_from_config",
    "recipe_for",
]
