"""Range estimation for activation quantizers: max, percentile, entropy (KL) and mse.

Two passes over the calibration data: the first finds each tensor's min and max, the second fills a
fixed 2048-bin histogram over ``[-absmax, absmax]``. From that:

- ``max``: the observed min and max (never clips calibration data);
- ``percentile``: the p-th percentile of the values (right bin edge, clamped to the observed range, so
  percentile 100 is exactly max);
- ``entropy``: TensorRT's KL-divergence threshold, computed by onnxruntime's calibrator
  (``HistogramCollector.get_entropy_threshold``);
- ``mse``: the clipping threshold minimising the expected quantization error over the histogram
  (written here: neither onnxruntime nor modelopt 0.47 has a working one; see docs/design.md).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from anomopt.errors import ConfigError, DataError

CALIBRATION_METHODS = ("max", "percentile", "entropy", "mse")
NUM_BINS = 2048


class RangeCollector:
    """Collects min/max (pass 1) and a histogram (pass 2) of one tensor stream."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.min = float("inf")
        self.max = float("-inf")
        self.hist: np.ndarray | None = None
        self.absmax = 0.0

    def observe_minmax(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if not torch.isfinite(x).all():
            raise DataError(
                f"calibration produced NaN or Inf at {self.name or 'a quantizer'}; check the calibration images"
            )
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def start_histogram(self) -> None:
        self.absmax = max(abs(self.min), abs(self.max), 1e-12)
        self.hist = np.zeros(NUM_BINS, dtype=np.float64)

    def observe_histogram(self, x: torch.Tensor) -> None:
        assert self.hist is not None, "call start_histogram() after the min/max pass"
        h = torch.histc(x.detach().float().flatten(), bins=NUM_BINS, min=-self.absmax, max=self.absmax)
        self.hist += h.double().numpy()

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.absmax, self.absmax, NUM_BINS + 1)


def _percentile_range(c: RangeCollector, p: float, symmetric: bool) -> tuple[float, float]:
    assert c.hist is not None
    edges = c.edges
    if symmetric:
        half = NUM_BINS // 2
        folded = c.hist[half:] + c.hist[:half][::-1]  # |x| histogram over [0, absmax]
        cdf = np.cumsum(folded) / max(folded.sum(), 1.0)
        idx = int(np.searchsorted(cdf, p / 100.0 - 1e-12))
        bound = float(min(edges[half + min(idx, half - 1) + 1], max(abs(c.min), abs(c.max))))
        return -bound, bound
    cdf = np.cumsum(c.hist) / max(c.hist.sum(), 1.0)
    tail = (100.0 - p) / 200.0
    lo_idx = int(np.searchsorted(cdf, tail + 1e-12)) if tail > 0 else 0
    hi_idx = int(np.searchsorted(cdf, 1.0 - tail - 1e-12))
    lo = c.min if tail == 0 else max(float(edges[lo_idx]), c.min)
    hi = min(float(edges[min(hi_idx, NUM_BINS - 1) + 1]), c.max)
    return lo, hi


def _entropy_range(c: RangeCollector, bits: int, symmetric: bool) -> tuple[float, float]:
    from onnxruntime.quantization.calibrate import HistogramCollector

    assert c.hist is not None
    collector = HistogramCollector(
        method="entropy",
        symmetric=True,
        num_bins=NUM_BINS,
        num_quantized_bins=2 ** (bits - 1),
        percentile=100.0,
        scenario="same",
    )
    histogram = (c.hist.astype(np.int64), c.edges, np.float32(c.min), np.float32(c.max), np.float32(c.absmax))
    with contextlib.redirect_stdout(io.StringIO()):
        lo, hi = collector.get_entropy_threshold(histogram, 2 ** (bits - 1))
    bound = float(max(abs(float(lo)), abs(float(hi))))
    if symmetric:
        return -bound, bound
    return max(c.min, -bound), min(c.max, bound)


def _mse_range(c: RangeCollector, bits: int, symmetric: bool) -> tuple[float, float]:
    assert c.hist is not None
    edges = c.edges
    centers = 0.5 * (edges[:-1] + edges[1:])
    counts = c.hist
    best, best_err = (c.min, c.max), float("inf")
    for frac in np.linspace(0.2, 1.0, 81):
        if symmetric:
            bound = frac * max(abs(c.min), abs(c.max))
            lo, hi = -bound, bound
            scale = bound / (2 ** (bits - 1) - 1)
            q = (
                np.clip(np.round(centers / max(scale, 1e-12)), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                * scale
            )
        else:
            lo, hi = min(c.min * frac, 0.0), max(c.max * frac, 0.0)
            scale = max((hi - lo) / (2**bits - 1), 1e-12)
            zp = np.round(-lo / scale)
            q = (np.clip(np.round(centers / scale) + zp, 0, 2**bits - 1) - zp) * scale
        err = float((counts * (centers - q) ** 2).sum())
        if err < best_err:
            best, best_err = (lo, hi), err
    return best


def compute_range(
    collector: RangeCollector, method: str, bits: int = 8, symmetric: bool = False, percentile: float = 99.99
) -> tuple[float, float]:
    """The ``(amin, amax)`` clipping range of one tensor by ``method``."""
    if method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, not {method!r}"
        )
    if collector.min > collector.max:
        raise DataError(f"quantizer {collector.name or '?'} saw no calibration data")
    if method == "max":
        if symmetric:
            bound = max(abs(collector.min), abs(collector.max))
            return -bound, bound
        return collector.min, collector.max
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], not {percentile}")
        return _percentile_range(collector, percentile, symmetric)
    if method == "entropy":
        return _entropy_range(collector, bits, symmetric)
    return _mse_range(collector, bits, symmetric)
