"""Run by test_train.py under torchrun (2 processes, gloo): one SGD step of DDP training of a toy model.

Writes the per-parameter gradient implied by the step from rank 0.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from anomopt.train import init_distributed_from_env
from conftest import sgd_step_gradients

if __name__ == "__main__":
    init_distributed_from_env()
    grads = sgd_step_gradients()
    if dist.get_rank() == 0:
        torch.save(grads, sys.argv[1])
    dist.destroy_process_group()
