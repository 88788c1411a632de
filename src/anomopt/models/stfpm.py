"""STFPM: a frozen pretrained teacher and a same-shape student trained from scratch (Wang et al. 2021).

Anomaly map: per scale, half the squared distance of channel-L2-normalised features; maps multiplied
across scales; image score = max of the map.
"""

from __future__ import annotations

import torch
from torch import nn

from anomopt.models.backbones import create_feature_extractor, get_backbone_config
from anomopt.models.base import InputNormalize, KDModel, ModelConfig, freeze
from anomopt.models.head import LeanMapHead, stfpm_distance
from anomopt.models.teacher import Teacher


class STFPM(KDModel):
    """Student-Teacher Feature Pyramid Matching."""

    def __init__(self, config: ModelConfig | None = None, pretrained: bool = True, weights=None) -> None:
        super().__init__()
        self.config = config or ModelConfig(model="stfpm")
        cfg = get_backbone_config(self.config.backbone)
        self.teacher = freeze(Teacher(self.config.backbone, pretrained, weights))
        self.student = nn.Sequential()
        self.student.add_module("normalize", InputNormalize(cfg.mean, cfg.std))
        self.student.add_module("features", create_feature_extractor(self.config.backbone, pretrained=False))
        self.head = LeanMapHead(self.config.image_size, combine="product", blur_sigma=self.config.blur_sigma)

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.teacher(x)

    def student_features(self, x: torch.Tensor, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.student(x))

    def distances(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> list[torch.Tensor]:
        # 0.5 |t/|t| - s/|s||^2 from three channel reductions (models/head.py; head 1.1x faster in ONNX Runtime)
        return stfpm_distance(t, s)

    def loss_from_features(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> torch.Tensor:
        return sum(d.mean() for d in self.distances(t, s))  # type: ignore[return-value]
