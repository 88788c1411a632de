"""Deployment targets: specs as data, and lowering to ONNX Runtime or TensorRT."""

from anomopt.targets.lower import Lower, lower_graph
from anomopt.targets.modelopt_quant import ModeloptQuantize
from anomopt.targets.spec import TARGETS, TargetSpec, get_target

__all__ = ["TARGETS", "Lower", "ModeloptQuantize", "TargetSpec", "get_target", "lower_graph"]
