"""The IR a pass sees: a trained model's whole inference path with every layer tagged by role."""

from anomopt.graph.ir import ROLES, ModelGraph, Node, capture

__all__ = ["ROLES", "ModelGraph", "Node", "capture"]
