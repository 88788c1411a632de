"""Training of the unified (or one-class) distillation models.

Fast on CPUs: the frozen teacher's features are computed once and cached when no augmentation is used,
the student runs under bf16 autocast where the CPU supports it, and the whole training set sits in memory
so the data pipeline is off the critical path. Checkpoints are written atomically every epoch and
``resume=True`` continues from the last complete one. Multi-process training uses torch DDP (gloo on CPU).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from anomopt.checkpoint import read_checkpoint, save_checkpoint
from anomopt.data.dataset import AnomalyDataset, dataset_categories, split_record
from anomopt.distill_loop import distill_epochs
from anomopt.errors import CheckpointError, ConfigError, DataError
from anomopt.inference import predict_dataset, stack_images, torch_scorer
from anomopt.models import KDModel
from anomopt.models.recipes import Recipe, recipe_for
from anomopt.normalization import fit_normalization
from anomopt.schedule import apply_lr


@dataclass
class TrainConfig:
    """Training options (all have sensible CPU defaults)."""

    epochs: int = 20
    batch_size: int = 8
    # None = the model's recipe (anomopt.models.RECIPES): SGD + momentum for STFPM, Adam for RD and US
    optimizer: str | None = None  # adam | sgd
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None  # SGD only
    # learning-rate schedule (anomopt.schedule); None = the model's recipe
    warmup: float | None = None  # fraction of the optimizer steps
    decay: str | None = None  # constant | cosine | linear
    final_lr: float | None = None  # fraction of lr reached at the last step
    # epochs the schedule spans (None = epochs): set it when reaching a total in several resumed calls
    schedule_epochs: int | None = None
    seed: int = 0
    precision: str = "auto"  # auto (mixed on a bf16 CPU, bf16 on CUDA, else fp32) | bf16 | mixed | fp32
    cache_features: bool = True
    checkpoint: str | None = None
    resume: bool = False
    progress: bool = True
    device: str = "cpu"


@dataclass
class TrainResult:
    """What training measured."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    epochs_run: int = 0
    normalization: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed torch and numpy; CPU training is then bit-for-bit repeatable."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def bf16_supported() -> bool:
    """Whether this CPU has fast bf16 (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None = full FP32)."""
    if precision not in ("auto", "bf16", "mixed", "fp32"):
        raise ConfigError(f"precision must be auto, bf16, mixed or fp32, not {precision!r}")
    if precision == "fp32":
        return None
    if precision in ("bf16", "mixed") or (device == "cpu" and bf16_supported()) or device.startswith("cuda"):
        return torch.bfloat16
    return None


def _fp32_forward(module: nn.Module, forward, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return forward(module, x.float()).to(x.dtype)


@contextlib.contextmanager
def depthwise_in_fp32(model: nn.Module) -> Iterator[int]:
    """Run ``model``'s depthwise convolutions in FP32 inside a bf16 autocast region (yields how many).

    oneDNN's bf16 depthwise-convolution backward is several times slower than its FP32 one on CPUs, while
    bf16 pointwise convolutions, BatchNorm and activations are faster: ``precision="mixed"`` keeps the
    depthwise convolutions in FP32 (their output is cast back to the input's dtype). The instance
    ``forward`` overrides are removed on exit, so the model is unchanged afterwards.
    """
    patched = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]
    for m in patched:
        m.forward = functools.partial(_fp32_forward, m, type(m).forward)  # type: ignore[method-assign]
    try:
        yield len(patched)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


def resolved_recipe(config: TrainConfig, model_name: str) -> Recipe:
    """The optimizer settings training will use: ``config``'s where set, else the model's recipe."""
    recipe = recipe_for(model_name)
    chosen = config.optimizer or recipe.optimizer
    if chosen not in ("adam", "sgd"):
        raise ConfigError(f"optimizer must be adam or sgd, not {chosen!r}")
    if config.lr is not None and not config.lr > 0:
        raise ConfigError(f"the learning rate must be positive, not {config.lr}")
    if config.optimizer is not None and config.optimizer != recipe.optimizer and config.lr is None:
        raise ConfigError(
            f"optimizer {chosen!r} is not {model_name}'s default ({recipe.optimizer}): give its learning rate too"
        )
    given = {
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "momentum": config.momentum,
        "warmup": config.warmup,
        "decay": config.decay,
        "final_lr": config.final_lr,
    }
    return replace(recipe, optimizer=chosen, **{k: v for k, v in given.items() if v is not None})


def make_optimizer(params: list[nn.Parameter], config: TrainConfig, model_name: str) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam over ``params``, as :func:`resolved_recipe` says."""
    r = resolved_recipe(config, model_name)  # Recipe validates lr > 0
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)


class _LossModule(nn.Module):
    """Wraps a model's distillation loss as a forward, so DDP can own the backward all-reduce."""

    def __init__(self, model: KDModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, targets: list[torch.Tensor] | None) -> torch.Tensor:
        return self.model.distillation_loss(images, targets)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cache_targets(
    model: KDModel, images: torch.Tensor, batch: int, dtype, progress: bool
) -> list[torch.Tensor]:
    """Frozen-teacher outputs for every training image, stored in bf16 to halve memory."""
    chunks: list[list[torch.Tensor]] = []
    for i in tqdm(range(0, len(images), batch), desc="cache teacher", disable=not progress, leave=False):
        x = images[i : i + batch].float() / 255.0
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            feats = model.frozen_targets(x)
        chunks.append([f.to(torch.bfloat16) for f in feats])
    return [torch.cat([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def train_model(
    model: KDModel,
    train_set: Dataset,
    config: TrainConfig,
    val_set: Dataset | None = None,
    categories: list[str] | None = None,
    split: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model``'s student(s) with the distillation loss; fit per-category normalization on ``val_set``.

    ``split`` (:func:`anomopt.data.dataset.split_record`) is stored in every checkpoint so optimization can
    re-fit thresholds on the same validation images; without it an :class:`AnomalyDataset` ``val_set``'s
    files are recorded.
    """
    rank, world = _world()
    n = len(train_set)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("the training split is empty: nothing to train on")
    if config.batch_size < world:
        raise ConfigError(f"batch size {config.batch_size} is smaller than the {world} processes")
    dtype = resolve_precision(config.precision, config.device)
    show = config.progress and rank == 0
    categories = categories or dataset_categories(train_set) or ["default"]
    if split is None and isinstance(val_set, AnomalyDataset):
        split = split_record(None, categories, None, None, val_set)

    images = (stack_images(train_set) * 255.0).round().to(torch.uint8)  # in memory, off the critical path
    optimizer = make_optimizer(model.trainable_parameters(), config, model.config.model)
    ckpt = Path(config.checkpoint) if config.checkpoint else None
    result = TrainResult()
    start_epoch = _resume(ckpt, model, optimizer, result) if config.resume else 0
    targets = _cache_targets(model.eval(), images, 16, dtype, show) if config.cache_features else None

    def save(epoch: int, final: bool = False) -> None:
        """The checkpoint after ``epoch`` (the final one also carries the normalization)."""
        if ckpt is None or rank != 0:
            return
        training = {"epoch": epoch, "optimizer": optimizer.state_dict(), "losses": result.losses}
        if final:
            save_checkpoint(ckpt, model, categories, normalization=result.normalization,
                            training={**training, "complete": True}, data_split=split)
        else:
            save_checkpoint(ckpt, model, categories, training=training, data_split=split)

    t0 = time.perf_counter()
    seen = _train_epochs(model, images, targets, optimizer, config, start_epoch, dtype, show, result, save)
    result.seconds = time.perf_counter() - t0
    result.images_per_second = seen / max(result.seconds, 1e-9)
    model.eval()
    if val_set is not None and len(val_set) > 0:  # type: ignore[arg-type]
        preds = predict_dataset(torch_scorer(model), val_set, batch_size=config.batch_size)
        result.normalization = fit_normalization(preds.categories, preds.scores, preds.maps)
    save(config.epochs, final=True)
    return result


def _resume(ckpt: Path | None, model: KDModel, optimizer: torch.optim.Optimizer, result: TrainResult) -> int:
    """Load the last complete epoch's weights, optimizer state and losses; returns the epoch to start at."""
    if ckpt is None or not ckpt.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {ckpt} to resume from")
    payload = read_checkpoint(ckpt)
    if payload["config"] != model.config.to_dict():
        raise CheckpointError(f"{ckpt}: checkpoint was trained with another model config; cannot resume")
    model.load_state_dict(payload["state_dict"])
    state = payload["training"]
    if state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    result.losses = list(state.get("losses", []))
    return int(state.get("epoch", 0))


def _train_epochs(
    model: KDModel,
    images: torch.Tensor,
    targets: list[torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    start_epoch: int,
    dtype: torch.dtype | None,
    show: bool,
    result: TrainResult,
    save: Callable[[int], None],
) -> int:
    """The epochs from ``start_epoch`` on (the shared loop, :func:`anomopt.distill_loop.distill_epochs`),
    with this process's shard of every batch, autocast, and a checkpoint after each epoch; returns the
    number of images all processes saw."""
    rank, world = _world()
    n = len(images)
    model.to(memory_format=torch.channels_last)  # faster depthwise/BN kernels on CPU
    if targets is not None:
        targets = [t.contiguous(memory_format=torch.channels_last) for t in targets]
    runner: nn.Module = _LossModule(model)
    if world > 1:
        # Every parameter a step trains must get a gradient (the feature extractors end at their last tap);
        # only models whose trained parameters change by phase (US) let DDP look for unused ones.
        phased = bool(getattr(model, "phased_training", False))
        runner = nn.parallel.DistributedDataParallel(runner, find_unused_parameters=phased)
    steps = math.ceil(n / config.batch_size)
    seen = 0

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        nonlocal seen
        idx = idx[rank::world]  # each process takes its shard of the same global batch
        x = (images[idx].float() / 255.0).contiguous(memory_format=torch.channels_last)
        tg = [t[idx].float() for t in targets] if targets is not None else None
        seen += len(idx) * world
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return runner(x, tg)

    def begin_epoch(epoch: int) -> None:
        model.set_epoch(epoch, config.epochs)
        model.train()

    # --- learning-rate schedule hook (anomopt.schedule: warm-up + decay, from the recipe) ---
    recipe = resolved_recipe(config, model.config.model)
    total_steps = (config.schedule_epochs or config.epochs) * steps

    def schedule(epoch: int, step: int) -> None:
        apply_lr(optimizer, recipe.lr, epoch * steps + step, total_steps, recipe.warmup, recipe.decay, recipe.final_lr)

    def end_epoch(epoch: int, loss: float) -> None:
        result.losses.append(loss)
        result.epochs_run += 1
        save(epoch + 1)

    bar = tqdm(total=(config.epochs - start_epoch) * steps, desc=f"train {model.config.model}", disable=not show)
    # "auto" on a bf16 CPU means "mixed": plain bf16 is the slowest of the three there (docs/training.md)
    keep_depthwise_fp32 = config.precision == "mixed" or (config.precision == "auto" and config.device == "cpu")
    mixed = depthwise_in_fp32(model) if keep_depthwise_fp32 and dtype is not None else None
    with mixed if mixed is not None else contextlib.nullcontext():
        distill_epochs(
            optimizer,
            batch_loss,
            n,
            config.batch_size,
            config.epochs,
            lambda epoch: torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch)),
            start_epoch=start_epoch,
            begin_epoch=begin_epoch,
            before_update=schedule,
            end_epoch=end_epoch,
            bar=bar,
            show_loss=True,
            diverged_hint="lower --lr",
        )
    bar.close()
    model.set_epoch(config.epochs, config.epochs)
    model.to(memory_format=torch.contiguous_format)
    return seen


def init_distributed_from_env() -> bool:
    """Join a torchrun process group (gloo on CPU) when launched by torchrun; returns whether joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group(backend="gloo")
    return True
