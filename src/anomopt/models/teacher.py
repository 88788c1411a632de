"""The frozen pretrained teacher: input normalisation followed by the backbone's feature taps."""

from __future__ import annotations

import os

import torch
from torch import nn

from anomopt.models.backbones import create_feature_extractor, get_backbone_config
from anomopt.models.base import InputNormalize


class Teacher(nn.Module):
    """Input normalisation followed by the pretrained feature taps (three scales)."""

    def __init__(self, backbone: str, pretrained: bool, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        cfg = get_backbone_config(backbone)
        self.normalize = InputNormalize(cfg.mean, cfg.std)
        self.features = create_feature_extractor(backbone, pretrained=pretrained, weights=weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.features(self.normalize(x)))
