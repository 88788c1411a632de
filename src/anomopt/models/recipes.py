"""Per-model defaults as data: the anomaly-map blur and the training optimizer.

Measured, not inherited (docs/training.md, "The STFPM recipe, and how it was chosen"): STFPM trains far
better with SGD + momentum than with Adam, and a Gaussian blur of the map lowers image AUROC for STFPM and
RD (it smears small defects before the max) while it helps Uninformed Students, whose raw maps are noisy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """What a model uses unless told otherwise.

    ``blur_sigma`` is in pixels at 256 px input (scaled with the image size; 0 = no blur). ``lr`` is for a
    loss averaged over the batch, as every anomopt model's distillation loss is. ``model_options`` are the
    model's constructor options (``build_model`` keyword arguments) a new model gets unless given; they are
    written into the checkpoint's config, so a checkpoint keeps rebuilding the model it was trained as.
    """

    blur_sigma: float
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float = 0.9  # SGD only
    model_options: Mapping[str, Any] = field(default_factory=dict)


# STFPM: SGD momentum 0.9 as in the STFPM paper and anomalib (lr 0.4 and weight decay 1e-3 there, on a loss
# summed over a batch of 8; ours averages, hence lr x8 would match; lr 0.8 reached higher AUROC here).
RECIPES: dict[str, Recipe] = {
    "stfpm": Recipe(blur_sigma=0.0, optimizer="sgd", lr=0.8, weight_decay=1.25e-4),
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
