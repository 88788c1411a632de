"""Fake quantization and range estimation used by the quantization passes."""

from anomopt.quant.fake_quant import FakeQuantizer, QuantScheme
from anomopt.quant.ranges import CALIBRATION_METHODS, RangeCollector, compute_range

__all__ = ["CALIBRATION_METHODS", "FakeQuantizer", "QuantScheme", "RangeCollector", "compute_range"]
