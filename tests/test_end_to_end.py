"""End to end: train a small unified STFPM on generated data, optimize it for CPU INT8, assert the
AUROC tolerance, save the artifact, and serve it through the runtime and the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from anomopt.api import optimize
from anomopt.cli.main import main
from anomopt.data import generate_synthetic, load_mvtec
from anomopt.errors import DriftError
from anomopt.inference import predict_dataset, torch_scorer
from anomopt.metrics import evaluate_predictions
from anomopt.models import build_model
from anomopt.train import TrainConfig, seed_everything, train_model

SIZE = 128
# The CI tolerance: INT8 may lose at most this many AUROC points against FP32 (image and pixel).
MAX_IMAGE_AUROC_DROP = 2.0
MAX_PIXEL_AUROC_DROP = 2.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e") / "data"
    generate_synthetic(root, categories=5, n_train=30, n_test=12, image_size=SIZE, seed=0, progress=False)
    train = load_mvtec(root, "all", split="train", image_size=SIZE)
    val = load_mvtec(root, "all", split="val", image_size=SIZE)
    test = load_mvtec(root, "all", split="test", image_size=SIZE)
    seed_everything(0)
    model = build_model("stfpm", image_size=SIZE)
    ckpt = root.parent / "model.ckpt"
    result = train_model(
        model,
        train,
        TrainConfig(epochs=10, progress=False, precision="fp32", checkpoint=str(ckpt)),
        val_set=val,
        categories=list(train.categories),
    )
    return {
        "root": root,
        "model": model,
        "train": train,
        "test": test,
        "ckpt": ckpt,
        "norm": result.normalization,
    }


@pytest.mark.slow
def test_short_unified_stfpm_reaches_auroc_090(trained):
    preds = predict_dataset(torch_scorer(trained["model"]), trained["test"])
    metrics = evaluate_predictions(preds.categories, preds.labels, preds.scores, preds.masks, preds.maps)
    assert metrics["mean"]["image_auroc"] >= 0.90, metrics["mean"]


@pytest.mark.slow
def test_optimize_int8_within_auroc_tolerance_and_deploys(trained, tmp_path):
    om = optimize(
        trained["model"],
        target="cpu",
        bits=8,
        calib=trained["train"],
        eval=trained["test"],
        tolerance={
            "max_image_auroc_drop": MAX_IMAGE_AUROC_DROP,
            "max_pixel_auroc_drop": MAX_PIXEL_AUROC_DROP,
        },
        categories=list(trained["train"].categories),
        normalization=trained["norm"],
        progress=False,
    )
    before, after = om.metrics_before["mean"], om.metrics_after["mean"]
    assert 100 * (before["image_auroc"] - after["image_auroc"]) <= MAX_IMAGE_AUROC_DROP
    assert 100 * (before["pixel_auroc"] - after["pixel_auroc"]) <= MAX_PIXEL_AUROC_DROP
    names = [p["name"] for p in om.report["passes"]]
    assert (
        names[:4] == ["fold_batchnorm", "insert_fake_quant", "calibrate", "lower"]
        and names[-1] == "accuracy_gate"
    )
    assert all(p["drift"] is None or np.isfinite(p["drift"]["map"]) for p in om.report["passes"])

    folder = om.save(tmp_path / "artifact")
    from anomopt.runtime import Predictor

    predictor = Predictor(folder)
    batch = torch.stack([trained["test"][i]["image"] for i in range(4)])
    scores, _ = predictor.run(batch.numpy())
    np.testing.assert_allclose(scores, om.predict(batch)[0], rtol=1e-5)


@pytest.mark.slow
def test_gate_refuses_an_impossible_tolerance(trained):
    with pytest.raises(DriftError, match="accuracy_gate: (image|pixel) AUROC fell"):
        optimize(
            trained["model"],
            target="cpu",
            bits=8,
            calib=trained["train"],
            eval=trained["test"],
            passes=[
                "fold_batchnorm",
                ("insert_fake_quant", {"weight_bits": 4}),
                ("calibrate", {"method": "max"}),
            ],
            tolerance={"max_image_auroc_drop": -50.0},
            progress=False,
        )


@pytest.mark.slow
def test_cli_optimize_then_predict(trained, tmp_path, capsys):
    art = tmp_path / "art"
    assert (
        main(
            [
                "optimize",
                str(trained["ckpt"]),
                "--data",
                str(trained["root"]),
                "--out",
                str(art),
                "--quiet",
                "--calib-samples",
                "32",
            ]
        )
        == 0
    )
    assert (art / "model.onnx").is_file() and (art / "meta.json").is_file()
    out = tmp_path / "pred"
    images = str(trained["root"] / "fabric" / "test")
    assert main(["predict", str(art), images, "--category", "fabric", "--out", str(out)]) == 0
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["decision"] for r in rows} <= {"normal", "anomalous"}
    assert len(list((out / "overlays").glob("*.png"))) == 12
    flagged = [r for r in rows if r["decision"] == "anomalous"]
    assert sum("/good/" not in r["path"] for r in flagged) >= len(flagged) / 2
