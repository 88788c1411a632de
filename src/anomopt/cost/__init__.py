"""Target cost models: measured per-layer latency as data (see :mod:`anomopt.cost.model`)."""

from anomopt.cost.model import ConvShape, CostModel, Lookup, load_cost_model

__all__ = ["ConvShape", "CostModel", "Lookup", "load_cost_model"]
