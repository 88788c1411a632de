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
    # thresholds in the checkpoint (fitted on the model's own training scores) so decisions are measured
    from anomopt.data import load_mvtec
    from anomopt.inference import predict_dataset, torch_scorer
    from anomopt.normalization import fit_normalization

    train = load_mvtec(root, "fabric", split="train", image_size=64, val_fraction=0.0)
    preds = predict_dataset(torch_scorer(model.eval()), train, batch_size=4)
    norm = fit_normalization(["fabric"] * len(train), preds.scores, preds.maps, image_z=1.0)
    save_checkpoint(ckpt, model, categories=["fabric"], normalization=norm)
    fast = evaluate_checkpoint(ckpt, root, progress=False, engine="onnx", threads=1)
    slow = evaluate_checkpoint(ckpt, root, progress=False, engine="torch")
    # AUROC is a rank statistic: the decisions at the checkpoint's thresholds also need the absolute scores
    for key in ("image_auroc", "pixel_auroc", "false_reject_rate", "escape_rate", "median_z_good"):
        assert fast["mean"][key] == pytest.approx(slow["mean"][key], abs=1e-4, nan_ok=True), key
    with pytest.raises(ConfigError, match="engine"):
        evaluate_checkpoint(ckpt, root, progress=False, engine="tvm")
