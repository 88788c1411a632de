"""The map head's blur: two matrix products equal reflect padding + the 2-D Gaussian conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from anomopt.models.base import MapHead, gaussian_kernel, reflect_blur_matrix


@settings(max_examples=25, deadline=None)
@given(size=st.integers(8, 80), sigma=st.sampled_from([0.5, 1.0, 1.5, 4.0]), seed=st.integers(0, 2**16))
def test_blur_matrix_equals_reflect_pad_and_conv(size: int, sigma: float, seed: int) -> None:
    kernel = gaussian_kernel(sigma)
    pad = kernel.shape[-1] // 2
    if pad >= size:
        with pytest.raises(ValueError, match="larger than"):
            reflect_blur_matrix(size, sigma)
        return
    x = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), kernel.double())
    b = reflect_blur_matrix(size, sigma).double()
    torch.testing.assert_close(b @ x @ b.T, ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(b.sum(1), torch.ones(size, dtype=torch.float64), atol=1e-6)  # rows are weights


def test_head_blurs_the_combined_map_and_scores_its_max() -> None:
    head = MapHead(64, "product", blur_sigma=4.0)
    maps = [torch.rand(3, 1, 16, 16), torch.rand(3, 1, 8, 8)]
    score, amap = head(maps)
    up = [F.interpolate(m, size=(64, 64), mode="bilinear", align_corners=False) for m in maps]
    kernel = head.blur
    pad = kernel.shape[-1] // 2
    ref = F.conv2d(F.pad(up[0] * up[1], (pad,) * 4, mode="reflect"), kernel)
    torch.testing.assert_close(amap, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(score, ref.flatten(1).amax(1))
    assert "blur_matrix" not in head.state_dict()  # derived, not stored: old checkpoints still load
