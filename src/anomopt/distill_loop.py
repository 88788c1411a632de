"""The one distillation training loop: epochs of shuffled mini-batches, each a loss, a backward pass and
an optimizer step. Training (:func:`anomopt.train.train_model`), the prune pass's fine-tune and QAT
fine-tuning all run it; what differs between them (how a batch becomes a loss, which parts train, the
learning-rate schedule, checkpoints, per-epoch weight-range updates) comes in as callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from anomopt.errors import ConfigError


def distill_epochs(
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    batch_size: int,
    epochs: int,
    order: Callable[[int], torch.Tensor],
    *,
    start_epoch: int = 0,
    begin_epoch: Callable[[int], None] | None = None,
    before_update: Callable[[int, int], None] | None = None,
    end_epoch: Callable[[int, float], None] | None = None,
    bar: Any = None,
    show_loss: bool = False,
    diverged_hint: str | None = None,
) -> list[float]:
    """Run epochs ``start_epoch .. epochs - 1``; returns each epoch's mean loss.

    - ``batch_loss(indices)``: the loss of the images at ``indices`` (of ``n``);
    - ``order(epoch)``: the permutation of ``range(n)`` that epoch visits;
    - ``begin_epoch(epoch)``: called first in every epoch (put the trained parts in train mode);
    - ``before_update(epoch, step)``: after the backward pass, before the optimizer step (the learning
      rate schedule);
    - ``end_epoch(epoch, mean_loss)``: after the epoch (checkpoints, weight-range updates, logs);
    - ``bar``: a progress bar advanced once a step (its postfix shows the loss when ``show_loss``);
    - ``diverged_hint``: when given, a non-finite loss raises :class:`ConfigError` with this advice.
    """
    steps = math.ceil(n / batch_size)
    losses: list[float] = []
    for epoch in range(start_epoch, epochs):
        if begin_epoch is not None:
            begin_epoch(epoch)
        perm = order(epoch)
        total = 0.0
        for step in range(steps):
            loss = batch_loss(perm[step * batch_size : (step + 1) * batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            if before_update is not None:
                before_update(epoch, step)
            optimizer.step()
            if diverged_hint is not None and not torch.isfinite(loss):
                value = float(loss.detach())
                raise ConfigError(f"training diverged at epoch {epoch + 1} (loss {value}); {diverged_hint}")
            total += float(loss.detach())
            if bar is not None:
                bar.update(1)
                if show_loss:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.4f}")
        losses.append(total / steps)
        if end_epoch is not None:
            end_epoch(epoch, losses[-1])
    return losses


def seeded_order(n: int, seed: int) -> Callable[[int], torch.Tensor]:
    """Epoch permutations from one generator seeded once (fine-tunes: each epoch draws the next)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda _epoch: torch.randperm(n, generator=gen)


def finetune_adam(
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    params: list[torch.nn.Parameter],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    *,
    begin_epoch: Callable[[int], None],
    end_epoch: Callable[[int, float], None] | None = None,
    bar: Any = None,
) -> list[float]:
    """A short fine-tune of ``params`` with Adam at a constant ``lr`` on ``loss_of(batch of images)``,
    visiting ``images`` in an order drawn from ``seed`` (the prune and QAT passes)."""
    optimizer = torch.optim.Adam(params, lr=lr)
    return distill_epochs(
        optimizer,
        lambda idx: loss_of(images[idx]),
        len(images),
        batch_size,
        epochs,
        seeded_order(len(images), seed),
        begin_epoch=begin_epoch,
        end_epoch=end_epoch,
        bar=bar,
    )
