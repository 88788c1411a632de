"""The lean head (fused distances, upsampling folded into the blur) equals the old head to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomopt.models.base import MapHead
from anomopt.models.head import LeanMapHead, cosine_distance, stfpm_distance, upsample_matrix


def _features(seed: int, size: int = 64, chans=(8, 16, 24), noise: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(2, c, size // s, size // s, generator=g) for c, s in zip(chans, (4, 8, 16), strict=True)]
    s = [x + noise * torch.randn(x.shape, generator=g) for x in t]
    return t, s


@pytest.mark.parametrize("noise", [1.0, 0.3, 0.01])
def test_stfpm_distance_equals_normalize_form(noise):
    t, s = _features(0, noise=noise)
    for got, ti, si in zip(stfpm_distance(t, s), t, s, strict=True):
        ref = 0.5 * (F.normalize(ti, dim=1) - F.normalize(si, dim=1)).pow(2).sum(1, keepdim=True)
        # 1 - cos loses relative precision where the distance is tiny; the absolute error stays at rounding
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=2e-6)
    zero = [torch.zeros(1, 4, 2, 2)]
    assert torch.equal(stfpm_distance(zero, zero)[0], torch.zeros(1, 1, 2, 2))  # F.normalize's eps case


def test_cosine_distance_equals_torch():
    t, s = _features(1)
    for got, ti, si in zip(cosine_distance(t, s), t, s, strict=True):
        ref = 1.0 - F.cosine_similarity(ti, si, dim=1, eps=1e-6).unsqueeze(1)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_upsample_matrix_is_bilinear_resize():
    x = torch.randn(1, 1, 16, 8, dtype=torch.float64)
    ref = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    got = upsample_matrix(16, 64) @ x[0, 0] @ upsample_matrix(8, 64).T
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("sigma", [4.0, 0.0])
def test_lean_head_equals_map_head(combine, sigma):
    t, s = _features(2)
    maps = [d.abs() for d in stfpm_distance(t, s)]
    old = MapHead(64, combine, sigma)
    new = LeanMapHead(64, combine, sigma)
    new.load_state_dict(old.state_dict())  # same checkpoints
    (s_old, m_old), (s_new, m_new) = old(maps), new(maps)
    scale = float(m_old.abs().max())
    np.testing.assert_allclose(m_new.numpy(), m_old.numpy(), rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(s_new.numpy(), s_old.numpy(), rtol=1e-5)
