"""The frozen pretrained teacher: input normalisation followed by the backbone's feature taps."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from anomopt.models.backbones import create_feature_extractor, get_backbone_config
from anomopt.models.base import InputNormalize


class Teacher(nn.Module):
    """Input normalisation followed by the pretrained feature taps (by default the backbone's three scales;
    ``taps`` picks other timm feature indices). Layers after the last tap are not built."""

    def __init__(
        self,
        backbone: str,
        pretrained: bool,
        weights: str | os.PathLike | None = None,
        taps: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        cfg = get_backbone_config(backbone)
        self.normalize = InputNormalize(cfg.mean, cfg.std)
        self.features = create_feature_extractor(backbone, pretrained=pretrained, weights=weights, taps=taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.features(self.normalize(x)))
