"""Learning-rate schedules: a linear warm-up, then a decay to a floor, as a function of the step.

The schedule is part of a model's recipe (:class:`anomopt.models.recipes.Recipe` fields ``warmup``,
``decay`` and ``final_lr``) and is applied per optimizer step by :func:`apply_lr`, so every training loop
that knows its step index and its total step count gets the same curve:

- steps ``0 .. w-1`` (``w = round(warmup * total)``): the factor rises linearly, ``(step + 1) / w``;
- then ``decay`` ``constant`` keeps 1, ``cosine`` follows half a cosine and ``linear`` a straight line from
  1 down to ``final_lr`` at the last step (``total - 1``).
"""

from __future__ import annotations

import math

import torch

from anomopt.errors import ConfigError

DECAYS = ("constant", "cosine", "linear")


def check_schedule(warmup: float, decay: str, final_lr: float, where: str = "recipe") -> None:
    """Raise :class:`ConfigError` naming ``where`` when a schedule setting is out of range."""
    if decay not in DECAYS:
        raise ConfigError(f"{where}: decay must be one of {', '.join(DECAYS)}, not {decay!r}")
    if not (0.0 <= warmup < 1.0) or math.isnan(warmup):
        raise ConfigError(f"{where}: warmup is a fraction of the training steps in [0, 1), not {warmup}")
    if not (0.0 <= final_lr <= 1.0) or math.isnan(final_lr):
        raise ConfigError(f"{where}: final_lr is a fraction of the learning rate in [0, 1], not {final_lr}")


def lr_factor(step: int, total: int, warmup: float = 0.0, decay: str = "constant", final_lr: float = 1.0) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``."""
    check_schedule(warmup, decay, final_lr)
    if total <= 0:
        raise ConfigError(f"a schedule needs at least one step, not {total}")
    step = min(max(int(step), 0), total - 1)
    w = min(int(round(warmup * total)), total - 1)
    if step < w:
        return (step + 1) / w
    if decay == "constant":
        return 1.0
    span = total - 1 - w
    progress = 1.0 if span <= 0 else (step - w) / span
    if decay == "cosine":
        return final_lr + (1.0 - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return final_lr + (1.0 - final_lr) * (1.0 - progress)


def apply_lr(optimizer: torch.optim.Optimizer, base_lr: float, step: int, total: int, warmup: float,
             decay: str, final_lr: float) -> float:
    """Set every parameter group's lr to ``base_lr * lr_factor(...)``; returns the lr set."""
    lr = base_lr * lr_factor(step, total, warmup, decay, final_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
