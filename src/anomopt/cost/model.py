"""A target cost model as data: measured latency of conv shapes in FP32 and INT8 QDQ on ONNX Runtime.

A :class:`CostModel` maps a :class:`ConvShape` (input channels, output channels, kernel, stride, groups,
input height and width) to the latency of one such conv in FP32 and in INT8 (uint8 activations x int8
per-channel weights, the ``QLinearConv`` ONNX Runtime fuses from our QDQ lowering), plus the per-element
cost of a ``QuantizeLinear`` and a ``DequantizeLinear`` (the conversions a precision boundary adds).
``anomopt profile`` measures it (:mod:`anomopt.cost.measure`); the file records the CPU model, the thread
count and the ONNX Runtime version it was measured with.

Lookup of a shape that was not measured (:meth:`CostModel.conv_us`): the measured shape of the same kind
(kernel size, stride, depthwise or not) nearest in log-MACs, scaled by the MAC ratio; with no shape of that
kind, MACs divided by the median MAC rate of every measured shape at that precision. The lookup says
which rule it used.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from anomopt.errors import ConfigError

#: the file format version written by ``anomopt profile``
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "int8")
#: the shipped default (measured on the development CPU; re-measure with ``anomopt profile``)
DEFAULT_FILE = "cpu-default.json"


@dataclass(frozen=True, order=True)
class ConvShape:
    """One 2-D convolution at batch 1 ("same" padding: output = ceil(input / stride))."""

    cin: int
    cout: int
    k: int
    stride: int
    groups: int
    h: int
    w: int

    @property
    def depthwise(self) -> bool:
        """Every group has one input channel (and there is more than one group)."""
        return self.groups > 1 and self.groups == self.cin

    @property
    def out_hw(self) -> tuple[int, int]:
        return -(-self.h // self.stride), -(-self.w // self.stride)

    @property
    def macs(self) -> int:
        ho, wo = self.out_hw
        return self.cout * (self.cin // self.groups) * self.k * self.k * ho * wo

    @property
    def in_elems(self) -> int:
        return self.cin * self.h * self.w

    @property
    def out_elems(self) -> int:
        ho, wo = self.out_hw
        return self.cout * ho * wo

    @property
    def kind(self) -> tuple[int, int, bool]:
        """What the fallback matches on: kernel size, stride, depthwise."""
        return self.k, self.stride, self.depthwise

    def key(self) -> str:
        """``cin-cout-k-stride-groups-HxW``, the JSON key."""
        return f"{self.cin}-{self.cout}-{self.k}-{self.stride}-{self.groups}-{self.h}x{self.w}"

    @classmethod
    def from_key(cls, key: str) -> ConvShape:
        try:
            cin, cout, k, stride, groups, hw = key.split("-")
            h, w = hw.split("x")
            return cls(int(cin), int(cout), int(k), int(stride), int(groups), int(h), int(w))
        except ValueError:
            raise ConfigError(f"cost model: bad shape key {key!r}; expected cin-cout-k-stride-groups-HxW") from None


@dataclass
class Lookup:
    """A conv's estimated latency and how it was found (``exact``, ``nearest ...`` or ``mac-rate``)."""

    us: float
    rule: str


class CostModel:
    """Measured conv latencies (microseconds) per shape and precision, Q/DQ cost per element, and metadata."""

    def __init__(
        self,
        convs: dict[ConvShape, dict[str, float]],
        quantize_ns_per_elem: float,
        dequantize_ns_per_elem: float,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.convs = dict(convs)
        self.quantize_ns_per_elem = float(quantize_ns_per_elem)
        self.dequantize_ns_per_elem = float(dequantize_ns_per_elem)
        self.meta = dict(meta or {})
        for shape, entry in self.convs.items():
            for p in PRECISIONS:
                if p not in entry or not (math.isfinite(entry[p]) and entry[p] > 0):
                    raise ConfigError(
                        f"cost model: shape {shape.key()} has no positive {p} latency; re-run anomopt profile"
                    )

    # ------------------------------------------------------------------ lookups
    def conv_us(self, shape: ConvShape, precision: str) -> Lookup:
        """Latency of ``shape`` at ``precision`` (``fp32`` or ``int8``), with the rule used."""
        if precision not in PRECISIONS:
            raise ConfigError(f"cost model: precision must be one of {PRECISIONS}, not {precision!r}")
        if shape in self.convs:
            return Lookup(self.convs[shape][precision], "exact")
        same_kind = [s for s in self.convs if s.kind == shape.kind]
        if same_kind:
            near = min(same_kind, key=lambda s: (abs(math.log(s.macs / shape.macs)), s))
            return Lookup(self.convs[near][precision] * shape.macs / near.macs, f"nearest {near.key()} x MACs")
        if not self.convs:
            raise ConfigError("cost model: no conv shapes measured; run anomopt profile")
        rates = sorted(s.macs / self.convs[s][precision] for s in self.convs)
        rate = rates[len(rates) // 2]
        return Lookup(shape.macs / rate, "mac-rate (no shape of this kind measured)")

    def quantize_us(self, elems: int) -> float:
        """A ``QuantizeLinear`` of ``elems`` float values to uint8."""
        return elems * self.quantize_ns_per_elem / 1000.0

    def dequantize_us(self, elems: int) -> float:
        """A ``DequantizeLinear`` of ``elems`` uint8 values to float."""
        return elems * self.dequantize_ns_per_elem / 1000.0

    # ------------------------------------------------------------------ data
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "meta": self.meta,
            "quantize_ns_per_elem": self.quantize_ns_per_elem,
            "dequantize_ns_per_elem": self.dequantize_ns_per_elem,
            "convs": {s.key(): {p: round(v[p], 3) for p in PRECISIONS} for s, v in sorted(self.convs.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "cost model") -> CostModel:
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ConfigError(f"{source}: not an anomopt cost model of format {FORMAT_VERSION}; re-run anomopt profile")
        try:
            convs = {ConvShape.from_key(k): {p: float(v[p]) for p in PRECISIONS} for k, v in data["convs"].items()}
            q, dq = float(data["quantize_ns_per_elem"]), float(data["dequantize_ns_per_elem"])
            return cls(convs, q, dq, data.get("meta"))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{source}: missing or bad field ({err}); re-run anomopt profile") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model as JSON, atomically."""
        from anomopt.io import write_json_atomic

        write_json_atomic(path, self.to_dict())


def load_cost_model(path: str | os.PathLike[str] | None = None) -> CostModel:
    """The cost model at ``path``, or the shipped default (``anomopt/cost/data/cpu-default.json``)."""
    if path is None:
        text = resources.files("anomopt.cost").joinpath("data", DEFAULT_FILE).read_text()
        return CostModel.from_dict(json.loads(text), f"shipped {DEFAULT_FILE}")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cost model {p}: no such file; make one with `anomopt profile --out {p}`")
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cost model {p}: cannot read JSON ({err}); re-run anomopt profile") from None
    return CostModel.from_dict(data, str(p))
