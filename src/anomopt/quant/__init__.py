"""Fake quantization: the quantizer module, where quantizers attach, and range estimation."""

from anomopt.quant.quantizer import FakeQuantizer, QuantScheme
from anomopt.quant.ranges import CALIBRATION_METHODS, RangeCollector, compute_range

__all__ = ["CALIBRATION_METHODS", "FakeQuantizer", "QuantScheme", "RangeCollector", "compute_range"]
