"""Per-model defaults as data: the anomaly-map blur, the training optimizer and its learning-rate schedule.

Measured, not inherited (docs/training.md, "The STFPM recipe, and how it was chosen"): STFPM trains far
better with SGD + momentum than with Adam, and a Gaussian blur of the map lowers image AUROC for STFPM and
RD (it smears small defects before the max) while it helps Uninformed Students, whose raw maps are noisy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from anomopt.errors import ConfigError
from anomopt.schedule import check_schedule


@dataclass(frozen=True)
class Recipe:
    """What a model uses unless told otherwise.

    ``blur_sigma`` is in pixels at 256 px input (scaled with the image size; 0 = no blur). ``lr`` is for a
    loss averaged over the batch, as every anomopt model's distillation loss is. ``model_options`` are the
    model's constructor options (``build_model`` keyword arguments) a new model gets unless given; they are
    written into the checkpoint's config, so a checkpoint keeps rebuilding the model it was trained as.
    The schedule (:mod:`anomopt.schedule`): ``warmup`` is the fraction of the optimizer steps spent rising linearly to
    ``lr``, then ``decay`` (``constant``, ``cosine`` or ``linear``) takes it down to ``final_lr x lr`` at the
    last step.
    """

    blur_sigma: float
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float = 0.9  # SGD only
    warmup: float = 0.0
    decay: str = "constant"
    final_lr: float = 1.0
    #: e.g. RD's ``{"bottleneck_dropout": 0.2}`` (see the class doc)
    model_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"recipe: optimizer must be adam or sgd, not {self.optimizer!r}")
        if not self.lr > 0:
            raise ConfigError(f"recipe: the learning rate must be positive, not {self.lr}")
        if not (self.weight_decay >= 0 and 0 <= self.momentum < 1 and self.blur_sigma >= 0):
            raise ConfigError(
                f"recipe: weight_decay ({self.weight_decay}) and blur_sigma ({self.blur_sigma}) must be >= 0 "
                f"and momentum ({self.momentum}) in [0, 1)"
            )
        check_schedule(self.warmup, self.decay, self.final_lr)


# Schedules: every shipped recipe keeps a constant lr (warmup 0, decay "constant"): at the budgets measured
# (10 epochs, 128 px) no warm-up + decay candidate beat it on validation images with pasted defects.
# STFPM: SGD momentum 0.9 as in the STFPM paper and anomalib (lr 0.4 and weight decay 1e-3 there, on a loss
# summed over a batch of 8; ours averages, hence lr x8 would match; lr 0.8 reached higher AUROC here).
RECIPES: dict[str, Recipe] = {
    "stfpm": Recipe(blur_sigma=0.0, optimizer="sgd", lr=0.8, weight_decay=1.25e-4),
    # RD: no bottleneck perturbation by default. Dropout 0.2 of the bottleneck's input (Dinomaly's noisy
    # bottleneck, model option ``bottleneck_dropout``) won on the synthetic set's validation images but lost
    # on realdev's (docs/accuracy.md, "RD unified"), so it stays an option.
    "rd": Recipe(blur_sigma=0.0, optimizer="adam", lr=3e-3, weight_decay=1e-5),
    # US: the backbone's stride-4 features as the descriptor teacher, students of receptive field 23
    # (docs/accuracy.md, "Uninformed Students: what carries it here"). Checkpoints without these options
    # (trained before) rebuild the distilled patch teacher they were trained with.
    "us": Recipe(
        blur_sigma=4.0,
        optimizer="adam",
        lr=3e-3,
        weight_decay=1e-5,
        model_options={"teacher": "backbone", "target_taps": [0], "patch_sizes": [23]},
    ),
}

# Models outside the registry (user subclasses, test models) train with this.
DEFAULT_RECIPE = Recipe(blur_sigma=4.0, optimizer="adam", lr=3e-3, weight_decay=1e-5)


def recipe_for(model_name: str) -> Recipe:
    """The recipe of a registered model, or :data:`DEFAULT_RECIPE`."""
    return RECIPES.get(model_name, DEFAULT_RECIPE)
