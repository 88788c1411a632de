"""Drift of a model's outputs against a reference, on a held batch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr


@dataclass
class Drift:
    """Relative L2 errors of scores and maps, plus the rank correlation of scores."""

    score: float
    map: float
    score_rank_corr: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def relative_l2(value: np.ndarray, reference: np.ndarray) -> float:
    """``|value - reference| / |reference|`` (0 when both are zero)."""
    num = float(np.linalg.norm((value - reference).ravel().astype(np.float64)))
    den = float(np.linalg.norm(reference.ravel().astype(np.float64)))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def measure_drift(
    scores: np.ndarray, maps: np.ndarray, ref_scores: np.ndarray, ref_maps: np.ndarray
) -> Drift:
    """Drift of ``(scores, maps)`` from the reference outputs."""
    if len(scores) > 2 and np.ptp(ref_scores) > 0 and np.ptp(scores) > 0:
        rho = float(spearmanr(scores, ref_scores).statistic)
    else:
        rho = 1.0 if np.allclose(scores, ref_scores) else float("nan")
    return Drift(score=relative_l2(scores, ref_scores), map=relative_l2(maps, ref_maps), score_rank_corr=rho)
