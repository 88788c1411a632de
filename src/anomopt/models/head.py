"""Lean formulations of the FP32 head, equal to :class:`~anomopt.models.base.MapHead` and the models'
distances up to float rounding (``tests/test_head_lean.py`` says so), measured by
``benchmarks/head_variants.py``.

- :func:`stfpm_distance`: ``0.5 |t/|t| - s/|s||^2`` from three channel reductions (``t.t``, ``s.s``,
  ``t.s``) instead of normalizing both feature maps first (two full-size divisions fewer).
- :func:`cosine_distance`: RD's ``1 - cos(t, s)`` from the same three reductions.
- :class:`LeanMapHead`: for ``combine="sum"`` the bilinear upsampling and the separable blur are both linear,
  so each scale's map goes to the blurred full-size map with two small matrix products,
  ``(B U_h) m (B U_w)^T``, and no full-size Resize, add or blur remains. For ``"product"`` the blur cannot
  move past the product, but each scale's upsampling is still two small matrix products ``U_h m U_w^T``
  instead of a Resize (ONNX Runtime's bilinear Resize is the slower kernel on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomopt.models.base import MapHead

EPS = 1e-12  # F.normalize's default


def _reductions(t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (t * t).sum(1, keepdim=True), (s * s).sum(1, keepdim=True), (t * s).sum(1, keepdim=True)


def stfpm_distance(t: list[torch.Tensor], s: list[torch.Tensor]) -> list[torch.Tensor]:
    """``0.5 * |normalize(t) - normalize(s)|^2`` over channels, per scale, as ``(N, 1, h, w)`` maps."""
    out = []
    for ti, si in zip(t, s, strict=True):
        tt, ss, ts = _reductions(ti, si)
        nt = tt.sqrt().clamp_min(EPS)
        ns = ss.sqrt().clamp_min(EPS)
        out.append(0.5 * (tt / (nt * nt) + ss / (ns * ns)) - ts / (nt * ns))
    return out


def cosine_distance(t: list[torch.Tensor], s: list[torch.Tensor], eps: float = 1e-6) -> list[torch.Tensor]:
    """``1 - cosine_similarity(t, s, dim=1, eps)`` per scale, as ``(N, 1, h, w)`` maps."""
    out = []
    for ti, si in zip(t, s, strict=True):
        tt, ss, ts = _reductions(ti, si)
        out.append(1.0 - ts / (tt.sqrt().clamp_min(eps) * ss.sqrt().clamp_min(eps)))
    return out


def upsample_matrix(n: int, size: int) -> torch.Tensor:
    """The ``(size, n)`` matrix ``U`` with ``U @ x`` = bilinear (align_corners=False) resize of ``x`` along
    its first axis from ``n`` to ``size`` samples."""
    eye = torch.eye(n, dtype=torch.float64)[None, None]  # (1, 1, n, n): row j = e_j
    up = F.interpolate(eye, size=(n, size), mode="bilinear", align_corners=False)[0, 0]  # (n, size)
    return up.transpose(0, 1).contiguous()


class LeanMapHead(MapHead):
    """:class:`MapHead` with the upsampling folded into the blur for ``combine="sum"`` (see the module doc)."""

    def __init__(self, image_size: int, combine: str = "sum", blur_sigma: float = 4.0) -> None:
        super().__init__(image_size, combine, blur_sigma)
        self._folded: dict[tuple[int, int, torch.dtype, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    def _matrices(self, h: int, w: int, ref: torch.Tensor, fold_blur: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w, ref.dtype, fold_blur)
        if key not in self._folded:
            blur = self.blur_matrix.double() if self.blur_matrix is not None and fold_blur else None
            mats = []
            for n in (h, w):
                u = upsample_matrix(n, self.image_size)
                mats.append((blur @ u if blur is not None else u).to(ref.dtype))
            self._folded[key] = (mats[0], mats[1].transpose(0, 1).contiguous())
        left, right_t = self._folded[key]
        return left.to(ref.device), right_t.to(ref.device)

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # "sum": the blur is folded into each scale's matrices; "product": it cannot pass the product, so each
        # scale is only upsampled by its matrices and the product is blurred after, as in MapHead
        folded = self.combine == "sum"
        total: torch.Tensor | None = None
        for m in maps:
            left, right_t = self._matrices(int(m.shape[-2]), int(m.shape[-1]), m, fold_blur=folded)
            up = left @ m @ right_t
            total = up if total is None else (total + up if folded else total * up)
        assert total is not None
        if not folded and self.blur_matrix is not None:
            total = self.blur_matrix @ total @ self.blur_matrix.transpose(0, 1)
        return total.flatten(1).amax(dim=1), total


def lean_head(head: MapHead) -> nn.Module:
    """A :class:`LeanMapHead` computing what ``head`` computes (same size, combination and blur)."""
    lean = LeanMapHead(head.image_size, head.combine, 0.0)
    lean.blur = head.blur
    lean.blur_matrix = head.blur_matrix
    return lean
