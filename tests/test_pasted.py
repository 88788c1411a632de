"""Synthetic defects pasted on normal images: exact masks, deterministic per seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomopt.data.pasted import DEFECT_KINDS, PastedDefects, paste_defect
from anomopt.errors import ConfigError, DataError
from conftest import ImageList


def _texture(seed: int = 0, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_kind_changes_exactly_its_mask(kind):
    img = _texture()
    out, mask, got = paste_defect(img, seed=3, kind=kind)
    assert got == kind and out.shape == img.shape and out.dtype == np.uint8
    changed = (out != img).any(axis=2)
    assert mask.sum() > 0
    np.testing.assert_array_equal(mask.astype(bool), changed)


def test_same_seed_same_defect_other_seed_other_defect():
    img = _texture(1)
    a = paste_defect(img, seed=7)
    b = paste_defect(img, seed=7)
    c = paste_defect(img, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_bad_input_is_refused():
    with pytest.raises(DataError, match="uint8"):
        paste_defect(np.zeros((32, 32, 3), np.float32), 0)
    with pytest.raises(ConfigError, match="kind"):
        paste_defect(_texture(), 0, kind="burn")
    with pytest.raises(DataError, match="16 x 16"):
        paste_defect(_texture(size=8), 0)


def test_pasted_set_pairs_each_normal_with_its_defective_copy():
    images = torch.from_numpy(np.stack([_texture(i, 32) for i in range(3)])).permute(0, 3, 1, 2).float() / 255
    ds = PastedDefects(ImageList(images, category="tex"), seed=2)
    assert len(ds) == 6
    assert [ds[i]["label"] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert torch.equal(ds[0]["image"], images[0]) and ds[0]["mask"].sum() == 0
    bad = ds[4]
    assert bad["category"] == "tex" and bad["mask"].sum() > 0 and bad["path"].startswith("#1#pasted-")
    changed = (bad["image"] - images[1]).abs().amax(dim=0) > 0
    assert torch.equal(changed, bad["mask"][0] > 0)
    again = PastedDefects(ImageList(images, category="tex"), seed=2)[4]
    assert torch.equal(again["image"], bad["image"])
