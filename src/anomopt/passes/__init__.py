"""Passes: the pass protocol, the manager, the registry and the built-in passes."""

from anomopt.passes.base import Pass, PassContext, Tolerance
from anomopt.passes.calibrate import Calibrate
from anomopt.passes.fake_quant import InsertFakeQuant
from anomopt.passes.fold_bn import FoldBatchNorm
from anomopt.passes.gate import AccuracyGate
from anomopt.passes.manager import PassManager, PipelineReport
from anomopt.passes.mixed_precision import AutoMixedPrecision
from anomopt.passes.pipeline import Pipeline, available_pipelines, load_pipeline, shipped_pipeline
from anomopt.passes.prune import Prune
from anomopt.passes.qat import QATFineTune
from anomopt.passes.registry import PASS_REGISTRY, register_pass, resolve_pass

for _cls in (FoldBatchNorm, Prune, InsertFakeQuant, Calibrate, AutoMixedPrecision, QATFineTune, AccuracyGate):
    register_pass(_cls)

__all__ = [
    "PASS_REGISTRY",
    "AccuracyGate",
    "AutoMixedPrecision",
    "Calibrate",
    "FoldBatchNorm",
    "InsertFakeQuant",
    "Pass",
    "PassContext",
    "PassManager",
    "Pipeline",
    "Prune",
    "PipelineReport",
    "QATFineTune",
    "Tolerance",
    "available_pipelines",
    "load_pipeline",
    "shipped_pipeline",
    "register_pass",
    "resolve_pass",
]
