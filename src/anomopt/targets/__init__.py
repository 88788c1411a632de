"""Deployment targets: specs as data, and lowering to ONNX Runtime or TensorRT."""

from anomopt.passes.registry import register_pass
from anomopt.targets.lower import Lower, lower_graph
from anomopt.targets.modelopt_quant import ModeloptQuantize
from anomopt.targets.spec import TARGETS, TargetSpec, get_target

register_pass(Lower)
register_pass(ModeloptQuantize)

__all__ = ["TARGETS", "Lower", "TargetSpec", "get_target", "lower_graph"]
