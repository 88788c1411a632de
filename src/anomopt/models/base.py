"""Shared pieces of the knowledge-distillation anomaly models.

Every model is an ``nn.Module`` with three named parts that passes can act on separately:
``teacher`` (frozen), ``student`` and ``head`` (the anomaly-map post-processing, kept in FP32).
``forward(x)`` takes RGB images in [0, 1] (N, 3, H, W) and returns ``(score[N], map[N, 1, H, W])``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    """The configuration a checkpoint carries so the model can be rebuilt without pickled code."""

    model: str
    backbone: str = "efficientnet_lite0"
    image_size: int = 256
    blur_sigma: float = 4.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InputNormalize(nn.Module):
    """Maps [0, 1] RGB to the backbone's normalisation (mean/std as buffers, exported into the graph)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def gaussian_1d(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of odd length ~ 8 sigma."""
    radius = max(1, int(math.ceil(4 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian kernel of odd size ~ 8 sigma, shaped ``(1, 1, k, k)``."""
    g = gaussian_1d(sigma).float()
    return (g[:, None] * g[None, :])[None, None]


def reflect_blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """The ``(size, size)`` matrix ``B`` with ``B @ x`` = a 1-D Gaussian blur of ``x`` along its first axis
    with reflect padding (what ``F.pad(mode="reflect")`` + ``conv`` computes), folded into one linear map."""
    g = gaussian_1d(sigma)
    radius = (len(g) - 1) // 2
    if radius >= size:
        raise ValueError(f"a blur of sigma {sigma} (radius {radius}) needs an image larger than {size} px")
    rows = torch.arange(size)[:, None] + torch.arange(-radius, radius + 1)[None, :]  # (size, k) source indices
    rows = rows.abs()  # reflect at 0: -i -> i
    rows = torch.where(rows > size - 1, 2 * (size - 1) - rows, rows)  # reflect at the far edge
    out = torch.zeros(size, size, dtype=torch.float64)
    out.scatter_add_(1, rows, g[None, :].expand(size, -1).contiguous())
    return out.float()


class MapHead(nn.Module):
    """Turns per-scale distance maps into the anomaly map at input size and the image score (max).

    ``combine`` is ``"product"`` (STFPM) or ``"sum"`` (RD, US). Stays in FP32 through every pass.
    """

    def __init__(self, image_size: int, combine: str = "sum", blur_sigma: float = 4.0) -> None:
        super().__init__()
        if combine not in ("sum", "product"):
            raise ValueError(f"combine must be 'sum' or 'product', not {combine!r}")
        self.image_size = image_size
        self.combine = combine
        if blur_sigma > 0:
            # "blur" (the 2-D kernel) stays in checkpoints for compatibility; the forward pass applies the
            # same separable blur as two matrix products (GEMMs are far faster on CPUs than a 33-tap conv).
            self.register_buffer("blur", gaussian_kernel(blur_sigma))
            self.register_buffer("blur_matrix", reflect_blur_matrix(image_size, blur_sigma), persistent=False)
        else:
            self.blur = None
            self.blur_matrix = None

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        size = (self.image_size, self.image_size)
        total: torch.Tensor | None = None
        for m in maps:
            up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            if total is None:
                total = up
            elif self.combine == "product":
                total = total * up
            else:
                total = total + up
        assert total is not None
        if self.blur_matrix is not None:
            total = self.blur_matrix @ total @ self.blur_matrix.transpose(0, 1)  # blur columns, then rows
        score = total.flatten(1).amax(dim=1)
        return score, total


def freeze(module: nn.Module) -> nn.Module:
    """Set eval mode and stop gradients (a frozen teacher)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class KDModel(nn.Module):
    """Base class: a frozen teacher, a trainable student, and an FP32 map head."""

    config: ModelConfig
    teacher: nn.Module
    student: nn.Module
    head: MapHead

    def train(self, mode: bool = True) -> KDModel:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics never move
        return self

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's tapped features (the distillation targets)."""
        raise NotImplementedError

    def student_features(self, x: torch.Tensor, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The student's predictions of the teacher features."""
        raise NotImplementedError

    def distances(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-scale anomaly maps (N, 1, h, w) from teacher and student features."""
        raise NotImplementedError

    def loss_from_features(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> torch.Tensor:
        """The distillation loss given teacher and student features."""
        raise NotImplementedError

    def feature_taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named teacher and student features, for passes that look inside."""
        t = self.teacher_features(x)
        s = self.student_features(x, t)
        taps = {f"teacher.{i}": f for i, f in enumerate(t)}
        taps.update({f"student.{i}": f for i, f in enumerate(s)})
        return taps

    @torch.no_grad()
    def frozen_targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the frozen pretrained part: what the trainer may cache when there is no augmentation."""
        return self.teacher_features(x)

    def distillation_loss(self, x: torch.Tensor, targets: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The training loss; ``targets`` (from :meth:`frozen_targets`) may come from a feature cache."""
        if targets is None:
            targets = self.frozen_targets(x)
        return self.loss_from_features(targets, self.student_features(x, targets))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.teacher_features(x)
        s = self.student_features(x, t)
        return self.head(self.distances(t, s))

    def set_epoch(self, epoch: int, total: int) -> None:
        """Called by the trainer before each epoch (models with training phases override it)."""

    def refit_statistics(self, images: torch.Tensor, batch_size: int = 8) -> dict[str, Any]:
        """Re-fit what training fitted at its end from normal ``images`` (after QAT or pruning changed the
        student). The passes that retrain a model call this one hook; the default model has nothing to
        re-fit and returns ``{}``. Returns a short summary of what changed, for the pass notes."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the distillation loss trains."""
        return [p for p in self.student.parameters() if p.requires_grad]
