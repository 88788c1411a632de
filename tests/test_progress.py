"""Progress and the final summary of optimize(): per-pass lines on stderr (silent when progress=False),
drift beside its tolerance, n/a with a reason where no drift is measured, and AUROC limits that need
labelled data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomopt.api import optimize
from anomopt.cli.main import main
from anomopt.errors import ConfigError
from anomopt.progress import Progress
from conftest import ToyKD


class Labelled(torch.utils.data.Dataset):
    """Toy images, every other one with a bright square (label 1, mask set)."""

    def __init__(self, n: int = 12, size: int = 32) -> None:
        g = torch.Generator().manual_seed(5)
        self.images = torch.rand(n, 3, size, size, generator=g) * 0.3
        self.masks = torch.zeros(n, 1, size, size)
        for i in range(1, n, 2):
            self.images[i, :, 8:20, 8:20] = 1.0
            self.masks[i, :, 8:20, 8:20] = 1.0
        self.categories = ["toy"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "label": i % 2, "category": "toy", "path": f"#{i}"}


def test_progress_lines_per_pass_and_summary_on_stderr(toy_images, capsys):
    om = optimize(ToyKD().eval(), "cpu", 8, calib=toy_images, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays free for results
    err = captured.err
    for i, name in enumerate(["fold_batchnorm", "insert_fake_quant", "calibrate", "lower"], 1):
        assert f"pass {i}/4 {name}: start" in err
        assert f"pass {i}/4 {name}: done in" in err
    assert "calibrate: percentile ranges of 2 layers" in err
    assert "lower: ONNX Runtime static INT8" in err
    assert "optimize: done in" in err and "artifact: model.onnx" in err
    assert om.summary().splitlines()[-1] in err


def test_progress_false_prints_nothing(toy_images, capsys):
    optimize(ToyKD().eval(), "cpu", 8, calib=toy_images, variant="qat", progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_insert_fake_quant_drift_is_measured_weight_only_error(toy_images):
    om = optimize(ToyKD().eval(), "cpu", 8, calib=toy_images, progress=False)
    rec = {r.name: r for r in om.passes_report.records}["insert_fake_quant"]
    # the per-channel weight quantizers are live from insertion: a small but non-zero drift
    assert rec.drift is not None and 0 < rec.drift["score"] < 0.05 and np.isfinite(rec.drift["map"])
    row = next(line for line in om.passes_report.table().splitlines() if line.startswith("insert_fake_quant"))
    assert "nan" not in row and "<= 0.6" in row and "<= 0.8" in row  # cpu-int8.toml's tolerances


def test_summary_has_auroc_before_after_and_gate_row_says_why_no_drift(toy_images):
    data = Labelled()
    om = optimize(ToyKD().eval(), "cpu", 8, calib=toy_images, eval=data,
                  tolerance={"max_image_auroc_drop": 100.0}, progress=False)
    gate = om.passes_report.records[-1]
    assert gate.name == "accuracy_gate" and gate.drift is None and "evaluation only" in gate.drift_note
    text = om.summary()
    assert "n/a" in text and "(evaluation only" in text and "nan" not in text
    image_row = next(line for line in text.splitlines() if line.startswith("image AUROC"))
    before = 100 * om.metrics_before["mean"]["image_auroc"]
    assert f"{before:.2f}" in image_row and "drop <= 100 points" in image_row


def test_auroc_limit_without_eval_is_refused(toy_images):
    with pytest.raises(ConfigError, match="max_image_auroc_drop needs labelled test data"):
        optimize(ToyKD().eval(), "cpu", 8, calib=toy_images, tolerance={"max_image_auroc_drop": 1.0},
                 progress=False)


def test_cli_auroc_limit_without_evaluate_exits_2(tmp_path, capsys):
    code = main(["optimize", str(tmp_path / "none.ckpt"), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--max-pixel-auroc-drop", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--max-pixel-auroc-drop needs --evaluate" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_progress_helper_indents_lines_and_is_silent_when_disabled(capsys):
    Progress(False).log("hidden")
    Progress(True).log("first\nsecond")
    err = capsys.readouterr().err.splitlines()
    assert "hidden" not in "".join(err)
    assert err[0].endswith("] first") and err[1].strip() == "second" and err[1].startswith(" ")
