"""Passes: the pass protocol, the manager, the registry and the built-in passes.

Each built-in pass is a module of its own that registers its class with ``@register_pass``; the registry
also knows every built-in name ahead (``BUILTIN_PASSES``) and imports a pass the first time it is named.
"""

from anomopt.passes.base import Pass, PassContext, Tolerance
from anomopt.passes.calibrate import Calibrate
from anomopt.passes.fake_quant import InsertFakeQuant
from anomopt.passes.fold_bn import FoldBatchNorm
from anomopt.passes.gate import AccuracyGate
from anomopt.passes.latency_precision import LatencyAwarePrecision
from anomopt.passes.manager import PassManager, PipelineReport
from anomopt.passes.mixed_precision import AutoMixedPrecision
from anomopt.passes.options import option
from anomopt.passes.pipeline import Pipeline, available_pipelines, load_pipeline, pipeline_path
from anomopt.passes.prune import Prune
from anomopt.passes.qat import QATFineTune
from anomopt.passes.registry import BUILTIN_PASSES, PASS_REGISTRY, known_passes, register_pass, resolve_pass

__all__ = [
    "BUILTIN_PASSES",
    "PASS_REGISTRY",
    "AccuracyGate",
    "AutoMixedPrecision",
    "Calibrate",
    "FoldBatchNorm",
    "InsertFakeQuant",
    "LatencyAwarePrecision",
    "Pass",
    "PassContext",
    "PassManager",
    "Pipeline",
    "Prune",
    "PipelineReport",
    "QATFineTune",
    "Tolerance",
    "available_pipelines",
    "known_passes",
    "load_pipeline",
    "option",
    "pipeline_path",
    "register_pass",
    "resolve_pass",
]
