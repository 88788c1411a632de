"""The one distillation loop (training, the prune fine-tune and QAT run it): hooks, order, divergence."""

from __future__ import annotations

import pytest
import torch

from anomopt.distill_loop import distill_epochs, seeded_order
from anomopt.errors import ConfigError


def _setup(n: int = 10):
    w = torch.nn.Parameter(torch.tensor(2.0))
    data = torch.arange(n, dtype=torch.float32)
    return w, data, torch.optim.SGD([w], lr=0.01)


def test_every_image_once_per_epoch_and_hooks_in_order():
    w, data, opt = _setup(10)
    events: list[tuple] = []
    seen: list[list[int]] = []

    def batch_loss(idx):
        seen.append(idx.tolist())
        return ((w * data[idx]) ** 2).mean()

    losses = distill_epochs(
        opt, batch_loss, 10, 4, 3, seeded_order(10, 0), start_epoch=1,
        begin_epoch=lambda e: events.append(("begin", e)),
        before_update=lambda e, s: events.append(("update", e, s, w.grad is not None)),
        end_epoch=lambda e, loss: events.append(("end", e, round(loss, 6))),
    )
    assert len(losses) == 2  # epochs 1 and 2 (start_epoch=1)
    assert [ev[:3] for ev in events if ev[0] != "end"] == [
        ("begin", 1), ("update", 1, 0), ("update", 1, 1), ("update", 1, 2),
        ("begin", 2), ("update", 2, 0), ("update", 2, 1), ("update", 2, 2),
    ]
    assert all(ev[3] for ev in events if ev[0] == "update")  # after the backward pass, before the step
    assert [ev for ev in events if ev[0] == "end"] == [("end", 1, round(losses[0], 6)), ("end", 2, round(losses[1], 6))]
    for epoch in range(2):
        batches = seen[epoch * 3 : (epoch + 1) * 3]
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(i for b in batches for i in b) == list(range(10))
    assert seen[:3] != seen[3:]  # a new order each epoch
    assert w.item() < 2.0  # the optimizer stepped


def test_same_seed_same_order():
    a, b = seeded_order(16, 3), seeded_order(16, 3)
    assert [a(e).tolist() for e in range(3)] == [b(e).tolist() for e in range(3)]


def test_non_finite_loss_raises_only_with_a_hint():
    w, data, opt = _setup(4)

    def nan_loss(idx):
        return (w * data[idx]).sum() * float("nan")

    with pytest.raises(ConfigError, match=r"training diverged at epoch 1 \(loss nan\); lower --lr"):
        distill_epochs(opt, nan_loss, 4, 2, 1, seeded_order(4, 0), diverged_hint="lower --lr")
    w, data, opt = _setup(4)
    losses = distill_epochs(opt, nan_loss, 4, 2, 1, seeded_order(4, 0))
    assert len(losses) == 1 and losses[0] != losses[0]  # NaN passes through, as the fine-tunes always did
