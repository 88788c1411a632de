"""Tiny real-model training shared by test_ddp_models.py and, under torchrun (2 gloo processes), by this
script: each process trains on its shard of every global batch, rank 0 writes the trained state dicts."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from anomopt.models import build_model
from anomopt.train import TrainConfig, train_model

SIZE = 64
MODELS = ("stfpm", "rd", "us")
LR = 0.05


def tiny_images(n: int = 4, seed: int = 3) -> torch.Tensor:
    """Smooth random images: the same on every process."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, SIZE // 8, SIZE // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


@contextlib.contextmanager
def per_process_batchnorm(world: int = 2) -> Iterator[None]:
    """Make one process normalise like ``world`` DDP processes: every training-mode batch norm normalises
    each process's shard of the batch (rows ``r::world``, the trainer's split) with that shard's own
    statistics, and only rank 0's shard updates the running statistics (DDP broadcasts rank 0's buffers)."""
    original = F.batch_norm

    def sharded(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
        if not training or x.shape[0] % world:
            return original(x, running_mean, running_var, weight, bias, training, momentum, eps)
        out = torch.empty_like(x)
        for r in range(world):
            stats = (running_mean, running_var) if r == 0 else (None, None)
            out[r::world] = original(x[r::world], *stats, weight, bias, True, momentum, eps)
        return out

    F.batch_norm = sharded
    try:
        yield
    finally:
        F.batch_norm = original


def train_tiny(name: str) -> dict[str, dict[str, torch.Tensor]]:
    """The real ``name`` model at 64 px, one plain SGD step on a global batch of 4 images (US, made
    narrower: one teacher step, then one student step, no teacher augmentation since it mixes images
    across the batch). Returns the state dicts before and after."""
    from conftest import ImageList

    torch.manual_seed(0)
    extra = {}
    if name == "rd":  # its bottleneck dropout draws other masks per process: exactness needs it off
        extra = {"bottleneck_dropout": 0.0}
    if name == "us":
        extra = {"teacher": "distilled", "teacher_fraction": 0.5, "teacher_augment": False, "descriptor": 32,
                 "width": 16, "students": 2, "patch_sizes": (15,)}
    model = build_model(name, image_size=SIZE, **extra)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=2 if name == "us" else 1, batch_size=4, optimizer="sgd", lr=LR, momentum=0.0,
                      weight_decay=0.0, precision="fp32", progress=False, seed=1)
    train_model(model, ImageList(tiny_images()), cfg)
    return {"before": before, "after": model.state_dict()}


if __name__ == "__main__":
    import torch.distributed as dist

    from anomopt.train import init_distributed_from_env

    init_distributed_from_env()
    results = {name: train_tiny(name) for name in MODELS}
    if dist.get_rank() == 0:
        torch.save(results, sys.argv[1])
    dist.destroy_process_group()
