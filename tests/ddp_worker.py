"""Run by test_train.py under torchrun (2 processes, gloo): one SGD step of DDP training of a toy model.

Writes the per-parameter gradient implied by the step ((w0 - w1) / lr) from rank 0.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from anomopt.train import TrainConfig, init_distributed_from_env, train_model
from conftest import ImageList, ToyKD

if __name__ == "__main__":
    out = sys.argv[1]
    init_distributed_from_env()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    model = ToyKD(seed=0, student_bn=False)
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    cfg = TrainConfig(
        epochs=1,
        batch_size=8,
        lr=0.5,
        weight_decay=0.0,
        optimizer="sgd",
        precision="fp32",
        progress=False,
        seed=3,
    )
    train_model(model, ImageList(images), cfg)
    if dist.get_rank() == 0:
        grads = {k: (before[k] - v) / 0.5 for k, v in model.student.state_dict().items() if k in before}
        torch.save(grads, out)
    dist.destroy_process_group()
