"""The IR a pass sees: a trained model's whole inference path with every layer tagged by role."""

from anomopt.graph.ir import ROLES, ModelGraph, Node, capture
from anomopt.graph.state import CalibrationRecord, GraphState, PrunePlan, QATRecord, QuantRecord

__all__ = [
    "ROLES",
    "CalibrationRecord",
    "GraphState",
    "ModelGraph",
    "Node",
    "PrunePlan",
    "QATRecord",
    "QuantRecord",
    "capture",
]
