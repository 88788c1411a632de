"""Deployment targets: the target table (``spec.py``), lowering (``lower.py``) through one backend per
runtime (``backends/``), the ONNX exporter (``onnx_export.py``) and the artifact writer (``artifact.py``)."""

from anomopt.passes.registry import register_pass
from anomopt.targets.lower import Lower, lower_graph
from anomopt.targets.modelopt_quant import ModeloptQuantize
from anomopt.targets.spec import TARGETS, TargetSpec, get_target, pipeline_path

register_pass(Lower)
register_pass(ModeloptQuantize)

__all__ = ["TARGETS", "Lower", "TargetSpec", "get_target", "lower_graph", "pipeline_path"]
