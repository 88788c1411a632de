"""Atomic writes leave readable files and nothing else behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anomopt.io import atomic_path, write_text_atomic


def test_atomic_write_is_readable_by_others_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report" / "index.html"
    write_text_atomic(target, "<html></html>")
    assert target.read_text() == "<html></html>"
    assert os.stat(target).st_mode & 0o777 == 0o644  # mkstemp's 0600 would hide the report from others
    assert [p.name for p in target.parent.iterdir()] == ["index.html"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
