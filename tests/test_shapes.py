"""Shape helpers shared by the synthetic set and the pasted defects: non-square images, determinism."""

from __future__ import annotations

import numpy as np

from anomopt.data.shapes import blob_depth, draw_lines, grid, to_u8


def test_grid_and_lines_follow_height_then_width():
    yy, xx = grid(3, 5)
    assert yy.shape == xx.shape == (3, 5) and yy[2, 0] == 2 and xx[0, 4] == 4
    assert not yy.flags.writeable
    line = draw_lines((10, 20), [[(0.0, 5.0), (19.0, 5.0)]], 1)
    assert line.shape == (10, 20) and line[5].all() and line.sum() == 20
    assert draw_lines(8, [[(0, 0), (7, 7)]], 1).shape == (8, 8)


def test_blob_is_inside_at_its_centre_and_seeded():
    for signed in (False, True):
        a = blob_depth((40, 60), 20.0, 30.0, 8.0, np.random.default_rng(1), harmonics=3, signed=signed)
        b = blob_depth((40, 60), 20.0, 30.0, 8.0, np.random.default_rng(1), harmonics=3, signed=signed)
        assert a.shape == (40, 60) and np.array_equal(a, b)
        assert a[20, 30] > 0 and a[0, 0] < 0 and a[39, 59] < 0
        assert 4 < (a > 0).sum() ** 0.5 < 30  # about the area of a radius-8 disk


def test_to_u8_rounds_and_clips():
    assert to_u8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0])).tolist() == [0, 0, 128, 255, 255]
