"""Mixed precision (bf16 autocast, FP32 depthwise convs) and the training-throughput benchmark's bookkeeping."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anomopt.data import generate_synthetic
from anomopt.errors import ConfigError
from anomopt.models import RECIPES, build_model
from anomopt.train import TrainConfig, depthwise_in_fp32, resolve_precision, train_model
from conftest import ImageList

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


def _bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def test_resolve_precision_knows_mixed():
    assert resolve_precision("mixed", "cpu") is torch.bfloat16
    assert resolve_precision("fp32", "cpu") is None
    with pytest.raises(ConfigError, match="mixed"):
        resolve_precision("fp16", "cpu")


def test_depthwise_convs_run_in_fp32_under_autocast_and_are_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 8, 16, 16).bfloat16()
    dw, pw = net[0], net[1]
    exact = F.conv2d(x.float(), dw.weight, dw.bias, padding=1, groups=8)  # FP32 maths on the bf16 input
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = dw(x)
        with depthwise_in_fp32(net) as n:
            assert n == 1  # the pointwise conv is left alone
            mixed = dw(x)
            assert pw(mixed).dtype == torch.bfloat16
        after = dw(x)
    assert mixed.dtype == torch.bfloat16  # cast back to the input's dtype
    assert torch.equal(mixed, exact.bfloat16())
    assert not torch.equal(plain, exact.bfloat16())  # plain autocast really runs the conv in bf16
    assert "forward" not in dw.__dict__ and torch.equal(after, plain)


def test_mixed_training_learns_is_repeatable_and_leaves_the_model_unpatched():
    data = ImageList(_images(16, 64))
    states, losses = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("stfpm", image_size=64)
        result = train_model(model, data, TrainConfig(epochs=4, batch_size=8, progress=False, precision="mixed"))
        assert not any("forward" in m.__dict__ for m in model.modules())
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        losses.append(result.losses)
    assert losses[0][-1] < 0.9 * losses[0][0]
    assert losses[0] == losses[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def _run(name: str, seconds: list[float], aurocs: list[float], setup: float = 0.0):
    b = _bench()
    recs = [
        b.EpochRecord(i + 1, s, setup if i == 0 else 0.5, 1.0, a, 0.1) for i, (s, a) in enumerate(zip(seconds, aurocs))
    ]
    return b.MethodRun(name, recs)


def test_summary_rates_ratios_and_time_to_accuracy():
    b = _bench()
    ours = _run("fp32", [5.0, 2.0, 3.0, 2.5], [0.5, 0.8, 0.9, 0.95], setup=4.0)
    theirs = _run("anomalib", [9.0, 6.0, 6.0, 9.0], [0.4, 0.6, 0.7, 0.8])
    rows = {r["method"]: r for r in b.summarize([ours, theirs], n_train=10, target=0.9)}
    assert rows["fp32"]["images_per_s"] == pytest.approx(10 / 2.5)  # median of epochs 2..
    assert rows["anomalib"]["images_per_s"] == pytest.approx(10 / 6.0)
    assert rows["fp32"]["x_anomalib"] == pytest.approx(6.0 / 2.5)
    assert rows["fp32"]["x_anomalib_paired_median"] == pytest.approx(3.0)  # median of 6/2, 6/3, 9/2.5
    assert rows["fp32"]["first_epoch_images_per_s"] == pytest.approx(2.0)
    level = 0.9 * 0.8  # the lowest final AUROC
    assert rows["fp32"]["common_level"] == pytest.approx(level)
    assert rows["fp32"]["tta_common_s"] == pytest.approx(4.0 + 5.0 + 2.0)  # 0.8 at epoch 2, after setup
    assert rows["anomalib"]["tta_common_s"] == pytest.approx(9 + 6 + 6 + 9)  # 0.72 only at the end
    assert rows["fp32"]["tta_own_s"] == pytest.approx(4 + 5 + 2 + 3)  # 0.9 x 0.95 = 0.855
    assert rows["fp32"]["tta_high_s"] == pytest.approx(4 + 5 + 2 + 3)  # 0.9 x 0.95 again
    assert math.isnan(rows["anomalib"]["tta_high_s"])  # never reaches 0.855
    assert rows["fp32"]["setup_s"] == 4.0


def test_summary_without_anomalib_and_a_level_never_reached():
    b = _bench()
    dip = _run("bf16", [2.0, 2.0, 2.0], [0.5, 0.9, 0.6])
    row = b.summarize([dip], n_train=4, target=1.6)[0]  # 1.6 x 0.6 = 0.96: never reached
    assert math.isnan(row["x_anomalib"]) and math.isnan(row["tta_common_s"])
    assert row["best_image_auroc"] == 0.9


def test_balanced_test_subset():
    b = _bench()
    samples = [SimpleNamespace(category=c) for c in ["a"] * 10 + ["b"] * 6]
    labels = np.array([0] * 3 + [1] * 7 + [0] * 4 + [1] * 2)
    ds = SimpleNamespace(samples=samples, labels=labels, __len__=lambda: 16)
    sub = b._subset(ds, 6, seed=0, balanced=True)
    picked = labels[sub.indices]
    cats = np.array([samples[i].category for i in sub.indices])
    assert (picked[cats == "a"] == 0).sum() == 3 and (picked[cats == "a"] == 1).sum() == 3
    assert (picked[cats == "b"] == 1).sum() == 2  # only two anomalous there
    assert sub.indices == sorted(set(sub.indices))


def test_benchmark_end_to_end_skips_anomalib_cleanly(tmp_path, capsys):
    b = _bench()
    root = generate_synthetic(tmp_path / "data", categories=1, n_train=6, n_test=6, image_size=64, progress=False)
    args = b.parse_args(
        [
            "--data", str(root), "--methods", "fp32,anomalib", "--epochs", "2", "--image-size", "64",
            "--train-per-category", "4", "--test-per-category", "4", "--no-write",
            "--anomalib-python", str(tmp_path / "no-venv" / "python"),
        ]
    )  # fmt: skip
    rows, meta, runs = b.run(args)
    assert "anomalib venv not found" in meta["skipped"] and "SKIP anomalib" in capsys.readouterr().out
    assert [r["method"] for r in rows] == ["fp32"]
    assert len(runs[0].epochs) == 2 and rows[0]["images_per_s"] > 0 and rows[0]["setup_s"] > 0
    assert 0.0 <= rows[0]["final_image_auroc"] <= 1.0
    assert "| fp32 |" in b.to_markdown(rows, meta)
    assert f"sgd lr {RECIPES['stfpm'].lr:g} momentum 0.9" in meta["optimizer"]
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"rows": rows, "meta": meta, "runs": [asdict(r) for r in runs]}))
    again, meta2, runs2 = b.load_json(saved, 0.9)
    assert again == rows and runs2 == runs and "--from-json run.json" in meta2["command"]
    md = b.to_markdown(again, meta2, runs2)
    assert f"- fp32: {runs[0].epochs[0].image_auroc:.3f} {runs[0].epochs[1].image_auroc:.3f}" in md
    results = tmp_path / "RESULTS.md"  # the --from-json path writes its section with the run's own header
    assert b.main(["--from-json", str(saved), "--results", str(results)]) == 0
    section = results.read_text()
    assert "<!-- section: train-throughput script: benchmarks/train_throughput.py -->" in section
    assert f"- run: {meta['date']}; {meta['machine_start']['cpu']}" in section and md in section
