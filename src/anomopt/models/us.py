"""Uninformed Students (Bergmann et al. 2020), dense and fully convolutional.

- The US *teacher* is a compact patch-descriptor network, distilled from the frozen pretrained backbone
  (it regresses the backbone's multi-scale features through a 1x1 projection).
- Three *students* with the teacher's architecture regress the teacher's standardised descriptors.
- Score = regression error of the ensemble mean + predictive variance across students.

Inference is one convolutional pass per network at stride 4: no per-pixel patch loop. The pretrained
backbone is used only in training; the inference graph is the descriptor teacher plus the students.
Training has two phases, as in the paper: the first ``teacher_fraction`` of the epochs distils the
descriptor teacher from the backbone; then the teacher is frozen and the students regress its output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomopt.models.backbones import feature_channels
from anomopt.models.base import KDModel, MapHead, ModelConfig, freeze
from anomopt.models.layers import conv_bn_relu
from anomopt.models.teacher import Teacher


def patch_net(descriptor: int = 128) -> nn.Sequential:
    """A small stride-4 CNN (receptive field about 23 px) mapping an image to dense descriptors."""
    return nn.Sequential(
        conv_bn_relu(3, 32, stride=2),
        conv_bn_relu(32, 64, stride=2),
        conv_bn_relu(64, 64),
        conv_bn_relu(64, 128),
        nn.Conv2d(128, descriptor, 1),
    )


class DescriptorTeacher(nn.Module):
    """Patch-descriptor net whose output is standardised per channel (running statistics)."""

    def __init__(self, descriptor: int, target_channels: int) -> None:
        super().__init__()
        self.net = patch_net(descriptor)
        self.standardize = nn.BatchNorm2d(descriptor, affine=False, momentum=0.05)
        self.project = nn.Conv2d(descriptor, target_channels, 1)  # training only: regress the backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardize(self.net(x))


class Students(nn.Module):
    """An ensemble of independently initialised students."""

    def __init__(self, count: int, descriptor: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(patch_net(descriptor) for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=0)  # (K, N, C, h, w)


class UninformedStudents(KDModel):
    """Uninformed Students with a dense descriptor teacher and a 3-student ensemble."""

    def __init__(self, config: ModelConfig | None = None, pretrained: bool = True, weights=None) -> None:
        super().__init__()
        self.config = config or ModelConfig(model="us")
        descriptor = int(self.config.extra.get("descriptor", 128))
        n_students = int(self.config.extra.get("students", 3))
        self.backbone = freeze(Teacher(self.config.backbone, pretrained, weights))
        self.teacher = DescriptorTeacher(descriptor, sum(feature_channels(self.config.backbone)))
        self.student = Students(n_students, descriptor)
        self.head = MapHead(self.config.image_size, combine="sum", blur_sigma=self.config.blur_sigma)
        self.teacher_fraction = float(self.config.extra.get("teacher_fraction", 0.5))
        self.phase = "students"  # a loaded (trained) model is past the teacher phase

    def set_epoch(self, epoch: int, total: int) -> None:
        self.phase = "teacher" if epoch < max(1, round(self.teacher_fraction * total)) and total > 1 else "students"

    def train(self, mode: bool = True) -> UninformedStudents:
        nn.Module.train(self, mode)
        self.backbone.eval()
        if self.phase == "students":
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in list(self.teacher.parameters()) + list(self.student.parameters()) if p.requires_grad]

    def student_parameters(self) -> list[nn.Parameter]:
        """What QAT fine-tunes: the students only."""
        return [p for p in self.student.parameters() if p.requires_grad]

    @torch.no_grad()
    def frozen_targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features resized to stride 4 and concatenated: the descriptor teacher's target."""
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        cat = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats], 1)
        return [cat]

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.teacher(x)]

    def student_features(self, x: torch.Tensor, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.student(x)]

    def distances(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> list[torch.Tensor]:
        preds = s[0]
        mean = preds.mean(dim=0)
        error = (mean - t[0]).pow(2).mean(dim=1, keepdim=True)
        variance = preds.var(dim=0, unbiased=False).mean(dim=1, keepdim=True)
        return [error + variance]

    def loss_from_features(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> torch.Tensor:
        return (s[0] - t[0].detach().unsqueeze(0)).pow(2).mean()

    def distillation_loss(self, x: torch.Tensor, targets: list[torch.Tensor] | None = None) -> torch.Tensor:
        if targets is None:
            targets = self.frozen_targets(x)
        if self.phase == "teacher":
            target = targets[0]
            raw = self.teacher.net(x)
            self.teacher.standardize(raw)  # tracks the descriptor statistics used after this phase
            # Standardise the regression target per channel so every backbone scale weighs alike.
            mean = target.mean(dim=(0, 2, 3), keepdim=True)
            std = target.std(dim=(0, 2, 3), keepdim=True) + 1e-4
            return (self.teacher.project(raw) - (target - mean) / std).pow(2).mean()
        with torch.no_grad():
            desc = self.teacher(x)
        return self.loss_from_features([desc], self.student_features(x, [desc]))
