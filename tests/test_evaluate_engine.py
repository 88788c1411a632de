"""``evaluate`` on a checkpoint through its FP32 ONNX export gives the metrics torch eager gives."""

from __future__ import annotations

import pytest
import torch

from anomopt.checkpoint import save_checkpoint
from anomopt.data.synthetic import generate_synthetic
from anomopt.errors import ConfigError
from anomopt.evaluate import evaluate_checkpoint
from anomopt.models import build_model


def test_onnx_engine_matches_torch(tmp_path):
    root = generate_synthetic(tmp_path / "d", ["fabric"], n_train=2, n_test=4, image_size=64, progress=False)
    torch.manual_seed(0)
    model = build_model("stfpm", image_size=64)
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, model, categories=["fabric"])
    fast = evaluate_checkpoint(ckpt, root, progress=False, engine="onnx", threads=1)
    slow = evaluate_checkpoint(ckpt, root, progress=False, engine="torch")
    for key in ("image_auroc", "pixel_auroc"):
        assert fast["mean"][key] == pytest.approx(slow["mean"][key], abs=1e-6)
    with pytest.raises(ConfigError, match="engine"):
        evaluate_checkpoint(ckpt, root, progress=False, engine="tvm")
