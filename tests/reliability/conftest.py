"""Fixtures shared by the reliability tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.helpers import make_artifact


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    """A 64 px FP32 STFPM artifact with thresholds for category 'fabric' (made once per session)."""
    return make_artifact(tmp_path_factory.mktemp("tiny-artifact") / "art")
