"""Shared fixtures: a tiny two-tap KD model for fast pass tests, offline hub settings, real-data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental hub download fails fast instead of hanging
torch.set_num_threads(2)

from anomopt.models.base import KDModel, MapHead, ModelConfig, freeze  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def realdev_root() -> Path:
    """../shared/data/realdev beside the repository (or $ANOMOPT_REALDEV)."""
    env = os.environ.get("ANOMOPT_REALDEV")
    return Path(env) if env else REPO.parent / "shared" / "data" / "realdev"


class TwoTap(nn.Module):
    """Two conv-BN-ReLU stages returning both feature maps."""

    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if bn else (lambda n: nn.Identity())
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), norm(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), norm(16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.block1(x)
        return [a, self.block2(a)]


def randomize_bn(module: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)


class ToyKD(KDModel):
    """STFPM-shaped toy: frozen random teacher, student of the same shape, FP32 head."""

    def __init__(self, image_size: int = 32, seed: int = 0, student_bn: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.config = ModelConfig(model="toy", image_size=image_size, blur_sigma=0.0)
        self.teacher = TwoTap()
        self.student = TwoTap(bn=student_bn)
        randomize_bn(self.teacher, g)
        randomize_bn(self.student, g)
        freeze(self.teacher)
        self.head = MapHead(image_size, combine="sum", blur_sigma=0.0)

    def teacher_features(self, x):
        return self.teacher(x)

    def student_features(self, x, teacher_feats):
        return self.student(x)

    def distances(self, t, s):
        return [
            (nn.functional.normalize(a, dim=1) - nn.functional.normalize(b, dim=1)).pow(2).sum(1, keepdim=True)
            for a, b in zip(t, s)
        ]

    def loss_from_features(self, t, s):
        return sum(d.mean() for d in self.distances(t, s))


class ImageList(torch.utils.data.Dataset):
    """A minimal data set of dicts over an image tensor (what the trainer and inference expect)."""

    def __init__(self, images: torch.Tensor, category: str = "toy") -> None:
        self.images = images
        self.categories = [category]
        self.category = category

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i]
        return {
            "image": x,
            "mask": torch.zeros(1, *x.shape[1:]),
            "label": 0,
            "category": self.category,
            "path": f"#{i}",
        }


def sgd_step_gradients(seed: int = 7) -> dict[str, torch.Tensor]:
    """The student gradient implied by one SGD step of ``train_model`` on a fixed batch of 8 toy images
    (``(w0 - w1) / lr``); under torchrun each process takes its shard of the same batch."""
    from anomopt.train import TrainConfig, train_model

    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    model = ToyKD(seed=0, student_bn=False)
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    cfg = TrainConfig(
        epochs=1, batch_size=8, lr=0.5, weight_decay=0.0, optimizer="sgd", precision="fp32", progress=False, seed=3
    )
    train_model(model, ImageList(images), cfg)
    return {k: (before[k] - v) / cfg.lr for k, v in model.student.state_dict().items()}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): the CI
    box is small and shared, where two OpenMP threads can crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def toy_model() -> ToyKD:
    return ToyKD().eval()


@pytest.fixture
def toy_images() -> torch.Tensor:
    return torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
