"""A fake quantizer on torch's own fake-quant kernels (straight-through gradients, so QAT works).

Why not nvidia-modelopt's ``TensorQuantizer``: it has no asymmetric (zero-point) activations, which
ONNX Runtime's fast x86 path (uint8 activations, int8 weights) needs; its histogram calibrators are
broken in 0.47; and its modules do not survive a plain ``torch.save``. See docs/design.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class QuantScheme:
    """How one tensor is quantized."""

    bits: int = 8
    symmetric: bool = True  # symmetric: zero point 0, signed grid; else affine unsigned grid
    per_channel_axis: int | None = None  # None = per tensor

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def to_dict(self) -> dict:
        return asdict(self)


class FakeQuantizer(nn.Module):
    """Quantize-dequantize with calibrated ranges ``[amin, amax]``.

    Symmetric: ``scale = max(|amin|, |amax|) / qmax``, zero point 0 (TensorRT style; ``qmin`` is
    ``-2**(b-1)`` so the ONNX export is a plain int8 QuantizeLinear). Asymmetric: the range is widened
    to include 0 and ``scale = (amax - amin) / (qmax - qmin)`` with an integer zero point (ONNX Runtime
    uint8 style). Until calibrated (or when disabled) it is the identity.
    """

    def __init__(self, scheme: QuantScheme, channels: int = 1) -> None:
        super().__init__()
        self.scheme = scheme
        shape = (channels,) if scheme.per_channel_axis is not None else ()
        self.register_buffer("amin", torch.zeros(shape))
        self.register_buffer("amax", torch.zeros(shape))
        self.register_buffer("calibrated", torch.tensor(False))
        self.enabled = True

    def set_range(self, amin: torch.Tensor | float, amax: torch.Tensor | float) -> None:
        """Set the clipping range and mark the quantizer calibrated."""
        self.amin.copy_(torch.as_tensor(amin, dtype=torch.float32).expand_as(self.amin))
        self.amax.copy_(torch.as_tensor(amax, dtype=torch.float32).expand_as(self.amax))
        self.calibrated.fill_(True)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` for the current range."""
        s = self.scheme
        eps = torch.finfo(torch.float32).eps
        if s.symmetric:
            bound = torch.maximum(self.amin.abs(), self.amax.abs())
            scale = torch.clamp(bound / s.qmax, min=eps)
            zero = torch.zeros_like(scale, dtype=torch.int32)
        else:
            lo = torch.clamp(self.amin, max=0.0)
            hi = torch.clamp(self.amax, min=0.0)
            scale = torch.clamp((hi - lo) / (s.qmax - s.qmin), min=eps)
            zero = torch.clamp(torch.round(s.qmin - lo / scale), s.qmin, s.qmax).to(torch.int32)
        return scale, zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not bool(self.calibrated):
            return x
        s = self.scheme
        scale, zero = self.qparams()
        if s.per_channel_axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale.float(), zero, s.qmin, s.qmax)
        return torch.fake_quantize_per_channel_affine(
            x, scale.float(), zero, s.per_channel_axis, s.qmin, s.qmax
        )

    def extra_repr(self) -> str:
        return (
            f"bits={self.scheme.bits}, symmetric={self.scheme.symmetric}, axis={self.scheme.per_channel_axis}"
        )
