"""Reverse Distillation (Deng & Li 2022): frozen encoder, one-class bottleneck embedding (OCBE), and a
decoder student that reconstructs the encoder's multi-scale features from the compact embedding.

Anomaly map: per scale 1 - cosine similarity, summed over scales; image score = max of the map.

Unified (multi-class) training: one bottleneck for many looks learns to pass anomalies through (an
"identical shortcut"). Two training-only perturbations of the encoder features that enter the bottleneck,
so the decoder must restore normal features from a corrupted embedding (options in ``config.extra``):

- ``bottleneck_dropout`` p: element-wise dropout of the bottleneck's input features (the "noisy bottleneck"
  of Dinomaly, Guo et al. 2025);
- ``feature_jitter`` a: additive Gaussian noise of std ``a`` x the feature map's RMS (UniAD's feature
  jittering, You et al. 2022).

The targets stay the clean encoder features; inference (eval mode, the exported graph) is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomopt.errors import ConfigError
from anomopt.models.backbones import feature_channels
from anomopt.models.base import KDModel, ModelConfig, freeze
from anomopt.models.head import LeanMapHead
from anomopt.models.layers import conv_bn_relu, upsample_block
from anomopt.models.teacher import Teacher


class OneClassBottleneck(nn.Module):
    """Fuses the three encoder scales at stride 16 and squeezes them into a stride-32 embedding."""

    def __init__(self, channels: list[int], width: int = 96, embed: int = 256) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = nn.Sequential(
            conv_bn_relu(c1, width // 2, stride=2), conv_bn_relu(width // 2, width, stride=2)
        )
        self.down2 = conv_bn_relu(c2, width, stride=2)
        self.down3 = conv_bn_relu(c3, width, kernel=1)
        self.fuse = nn.Sequential(
            conv_bn_relu(3 * width, embed, stride=2), conv_bn_relu(embed, embed, kernel=1)
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = feats
        return self.fuse(torch.cat([self.down1(f1), self.down2(f2), self.down3(f3)], dim=1))


class Decoder(nn.Module):
    """Upsamples the embedding back to strides 16, 8, 4, predicting the encoder features there."""

    def __init__(
        self, channels: list[int], embed: int = 256, widths: tuple[int, int, int] = (128, 64, 32)
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        w3, w2, w1 = widths
        self.up3 = upsample_block(embed, w3)
        self.up2 = upsample_block(w3, w2)
        self.up1 = upsample_block(w2, w1)
        self.out3 = nn.Conv2d(w3, c3, 1)
        self.out2 = nn.Conv2d(w2, c2, 1)
        self.out1 = nn.Conv2d(w1, c1, 1)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        x3 = self.up3(z)
        x2 = self.up2(x3)
        x1 = self.up1(x2)
        return [self.out1(x1), self.out2(x2), self.out3(x3)]


class Student(nn.Module):
    """OCBE followed by the decoder: the trainable half of Reverse Distillation."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.bottleneck = OneClassBottleneck(channels)
        self.decoder = Decoder(channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.decoder(self.bottleneck(feats))


class ReverseDistillation(KDModel):
    """Reverse Distillation with a one-class bottleneck."""

    def __init__(self, config: ModelConfig | None = None, pretrained: bool = True, weights=None) -> None:
        super().__init__()
        self.config = config or ModelConfig(model="rd")
        self.teacher = freeze(Teacher(self.config.backbone, pretrained, weights))
        self.student = Student(feature_channels(self.config.backbone))
        self.head = LeanMapHead(self.config.image_size, combine="sum", blur_sigma=self.config.blur_sigma)
        extra = self.config.extra
        self.bottleneck_dropout = float(extra.get("bottleneck_dropout", 0.0))
        self.feature_jitter = float(extra.get("feature_jitter", 0.0))
        if not 0.0 <= self.bottleneck_dropout < 1.0:
            raise ConfigError(f"rd option bottleneck_dropout must be in [0, 1), not {self.bottleneck_dropout}")
        if not self.feature_jitter >= 0.0:
            raise ConfigError(f"rd option feature_jitter must be >= 0, not {self.feature_jitter}")

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.teacher(x)

    def perturb(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The bottleneck's input in training: dropout and / or jitter (unchanged in eval mode)."""
        if not self.training or (self.bottleneck_dropout == 0.0 and self.feature_jitter == 0.0):
            return feats
        out = []
        for f in feats:
            if self.feature_jitter > 0.0:
                rms = f.detach().float().pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
                f = f + torch.randn_like(f) * (self.feature_jitter * rms).to(f.dtype)
            if self.bottleneck_dropout > 0.0:
                f = F.dropout(f, p=self.bottleneck_dropout, training=True)
            out.append(f)
        return out

    def student_features(self, x: torch.Tensor, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.student(self.perturb(teacher_feats))

    def distances(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> list[torch.Tensor]:
        return [1.0 - F.cosine_similarity(ti, si, dim=1, eps=1e-6).unsqueeze(1) for ti, si in zip(t, s)]

    def loss_from_features(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> torch.Tensor:
        return sum(d.mean() for d in self.distances(t, s))  # type: ignore[return-value]
