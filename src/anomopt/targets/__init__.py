"""Deployment targets: the target table (``spec.py``), lowering (``lower.py``) through one backend per
runtime (``backends/``), the ONNX exporter (``onnx_export.py``) and the artifact writer (``artifact.py``)."""

from anomopt.targets.lower import Lower, lower_graph
from anomopt.targets.modelopt_quant import ModeloptQuantize
from anomopt.targets.spec import TARGETS, TargetSpec, get_target, pipeline_path

__all__ = ["TARGETS", "Lower", "ModeloptQuantize", "TargetSpec", "get_target", "lower_graph", "pipeline_path"]
