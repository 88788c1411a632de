"""Area under the per-region-overlap (PRO) curve, as defined for MVTec AD (Bergmann et al.).

For a threshold ``t`` a pixel is predicted anomalous when ``score >= t``. Then

* PRO(t) is the mean, over every connected ground-truth region (8-connectivity, labelled per image),
  of the fraction of that region's pixels predicted anomalous;
* FPR(t) is the fraction of all normal (mask == 0) pixels, over all images, predicted anomalous.

The curve (FPR, PRO), starting at (0, 0) for ``t = +inf``, is integrated with the trapezoid rule from
FPR 0 to ``fpr_limit`` (interpolating linearly at exactly ``fpr_limit``) and divided by ``fpr_limit``.

Thresholds are picked by rank, never from a ``linspace`` of the score range, so the result is
invariant to any strictly increasing transform of the maps (up to floating-point ties the transform
itself creates). They are:

* the normal-pixel order statistics whose FPR steps evenly through ``[0, fpr_limit]``
  (``num_thresholds`` of them, plus the largest normal score);
* for each of those, the next larger score present in the data, so the exact curve's step just
  before each chosen normal score is kept;
* ``num_thresholds`` evenly spaced order statistics of the anomalous-pixel scores.

Every chosen threshold gives a point of the exact curve (the one over all unique score values), and
the segment crossing ``fpr_limit`` is one of the exact curve's own segments. Between chosen points
below the limit at most ``(fpr_limit + 1 / N0) / num_thresholds`` of FPR is spanned (``N0`` normal
pixels); the curve is monotone, so each chord is off by at most half its box and the result differs
from the exact area by at most ``(1 + 1 / (fpr_limit * N0)) / (2 * num_thresholds)``, about
``1 / (2 * num_thresholds)``. Once ``num_thresholds >= fpr_limit * N0`` it is exact.

Counting is vectorised: each pixel is assigned a threshold bin with :func:`numpy.searchsorted` and the
bins are summed with :func:`numpy.bincount` (region pixels weighted by ``1 / region size``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from anomopt.errors import ConfigError, DataError
from anomopt.metrics.classification import _pixel_inputs

# 8-connectivity inside each image, no connectivity across the image axis.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True


def _count_at_or_above(thr_asc: np.ndarray, values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """For each threshold in ascending ``thr_asc``: (weighted) count of ``values >= threshold``."""
    m = thr_asc.size
    idx = np.searchsorted(thr_asc, values, side="right")  # value >= thr_asc[j] for all j < idx
    hist = np.bincount(idx, weights=weights, minlength=m + 1)
    suffix = np.cumsum(hist[::-1])[::-1]  # suffix[j] = sum(hist[j:])
    return suffix[1:]


def _select_thresholds(normal: np.ndarray, anomalous: np.ndarray, fpr_limit: float, n: int) -> np.ndarray:
    """Rank-based thresholds (descending, unique); see the module docstring."""
    n0 = normal.size
    # The K-th largest normal score is the first whose FPR reaches fpr_limit; rank K + 1 is a spare
    # in case floating-point rounding puts K / n0 just below fpr_limit.
    big_k = min(n0, max(1, math.ceil(fpr_limit * n0 - 1e-9)))
    k = min(n0, big_k + 1)
    # k largest normal scores, ascending.
    tail = np.sort(np.partition(normal, n0 - k)[n0 - k :]) if k < n0 else np.sort(normal)
    even = np.ceil(np.arange(1, n + 1) * (big_k / n)).astype(np.int64)
    ranks = np.clip(np.unique(np.concatenate(([1], even, [k]))), 1, k)
    normal_thr = tail[tail.size - ranks]  # rank r -> r-th largest normal score

    anom_sorted = np.sort(anomalous)
    # Next larger score present in the data, for each chosen normal threshold.
    pos_n = np.searchsorted(tail, normal_thr, side="right")
    next_n = np.where(pos_n < tail.size, tail[np.minimum(pos_n, tail.size - 1)], np.inf)
    pos_a = np.searchsorted(anom_sorted, normal_thr, side="right")
    next_a = np.where(pos_a < anom_sorted.size, anom_sorted[np.minimum(pos_a, anom_sorted.size - 1)], np.inf)
    successors = np.minimum(next_n, next_a)
    successors = successors[np.isfinite(successors)]

    q_idx = np.unique(np.round(np.linspace(0, anom_sorted.size - 1, n)).astype(np.int64))
    anom_thr = anom_sorted[q_idx]

    thr = np.unique(np.concatenate((normal_thr, successors, anom_thr)).astype(normal.dtype))
    return thr[::-1]


def pro_curve(
    masks: object, maps: object, fpr_limit: float = 0.3, num_thresholds: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(fpr, pro, thresholds)`` of the PRO curve, thresholds descending.

    The arrays start with the point (0, 0) at threshold ``+inf``. Raises :class:`DataError` when the
    masks contain no anomalous region or no normal pixel.
    """
    if not (0.0 < fpr_limit <= 1.0):
        raise ConfigError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if int(num_thresholds) != num_thresholds or num_thresholds < 1:
        raise ConfigError(f"num_thresholds must be a positive integer, got {num_thresholds}")
    m, a = _pixel_inputs(masks, maps)
    labels, n_regions = ndimage.label(m, structure=_STRUCTURE)
    if n_regions == 0:
        raise DataError("masks contain no anomalous region; AUPRO is undefined")
    normal = a[~m]
    if normal.size == 0:
        raise DataError("masks contain no normal pixel; the false positive rate (and AUPRO) is undefined")
    anomalous = a[m]
    region = labels[m]
    sizes = np.bincount(region, minlength=n_regions + 1)
    weights = 1.0 / sizes[region]

    thr = _select_thresholds(normal, anomalous, fpr_limit, int(num_thresholds))
    thr_asc = thr[::-1]
    # Normal pixels below the lowest threshold never count; drop them before binning.
    normal = normal[normal >= thr_asc[0]]
    fp = _count_at_or_above(thr_asc, normal, None)[::-1]
    overlap = _count_at_or_above(thr_asc, anomalous, weights)[::-1]
    n_normal = int(m.size - np.count_nonzero(m))
    fpr = np.concatenate(([0.0], fp / n_normal))
    pro = np.concatenate(([0.0], np.minimum(overlap / n_regions, 1.0)))
    return fpr, pro, np.concatenate(([np.inf], thr.astype(np.float64)))


def _area_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under the (fpr, pro) polyline from 0 to ``limit``, interpolated at ``limit``."""
    inside = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    x, y = fpr[:inside], pro[:inside]
    if x[-1] < limit and inside < fpr.size:
        x0, y0, x1, y1 = fpr[inside - 1], pro[inside - 1], fpr[inside], pro[inside]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x, y = np.append(x, limit), np.append(y, y_lim)
    elif x[-1] < limit:  # cannot happen with the chosen thresholds; extend flat for safety
        x, y = np.append(x, limit), np.append(y, y[-1])
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) * 0.5))


def aupro(masks: object, maps: object, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (1.0 = perfect).

    ``masks`` are binary (N,H,W) or (N,1,H,W); ``maps`` have the same shape. Raises
    :class:`DataError` (rather than returning NaN) when there is no anomalous region or no normal
    pixel, and :class:`ConfigError` for an invalid ``fpr_limit`` / ``num_thresholds``. The result
    is within about ``1 / (2 * num_thresholds)`` of the exact area (see the module docstring).
    """
    fpr, pro, _ = pro_curve(masks, maps, fpr_limit=fpr_limit, num_thresholds=num_thresholds)
    return min(1.0, max(0.0, _area_up_to(fpr, pro, fpr_limit) / fpr_limit))
