"""Issue #14 items 2, 5 (checkpoints, weights), 8 and 9, issue #16 item 7: a finished run is never trained
over by accident, `--resume` says where it resumes and keeps train.json true, degenerate inputs are refused
or warned about, folders that are not categories are reported, and `--help` shows the defaults."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from anomopt.api import optimize
from anomopt.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from anomopt.cli.main import build_parser, main
from anomopt.data import generate_synthetic
from anomopt.errors import CheckpointError, DataError
from anomopt.models import build_model
from reliability.helpers import NORMALIZATION, SIZE, one_line_error, snapshot, train_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tr") / "data"
    generate_synthetic(root, categories=["fabric", "mesh"], n_train=12, n_test=2, image_size=SIZE, progress=False)
    (root / "notes" / "test" / "good").mkdir(parents=True)  # looks like a category, has no train/good
    return root


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> dict:
    """One finished 1-epoch unified run of both categories, and what the CLI printed."""
    out = tmp_path_factory.mktemp("run") / "run"
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        rc = main(train_argv(data, out))
    assert rc == 0, err.getvalue()
    return {"out": out, "stderr": err.getvalue(), "stdout": std.getvalue()}


# ------------------------------------------------------------------------------------ 2. finished runs


def test_training_over_a_finished_run_is_refused(finished, data, capsys):
    out = finished["out"]
    before = snapshot(out)
    assert main(train_argv(data, out)) == 2
    one_line_error(capsys, str(out), "finished training run", "--resume", "--overwrite")
    assert snapshot(out) == before


def test_training_over_an_interrupted_run_is_refused(finished, data, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished["out"], out)
    payload = torch.load(out / "model.ckpt", weights_only=True)
    payload["training"]["complete"] = False
    torch.save(payload, out / "model.ckpt")
    before = snapshot(out)
    assert main(train_argv(data, out, 3)) == 2
    one_line_error(capsys, "interrupted training run", "after epoch 1", "--resume")
    assert snapshot(out) == before


def test_training_into_a_folder_of_other_files_is_refused(data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("chapter 1")
    assert main(train_argv(data, out)) == 2
    one_line_error(capsys, str(out), "not an anomopt output", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_resume_says_where_and_keeps_train_json_true(finished, data, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished["out"], out)
    assert main(train_argv(data, out, 2, "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {out / 'model.ckpt'}: 1 of 2 epochs done, continuing at epoch 2" in printed
    summary = json.loads((out / "train.json").read_text())["runs"]["unified"]
    assert summary["epochs"] == 2 and summary["epochs_this_run"] == 1 and summary["resumed_from_epoch"] == 1
    assert read_checkpoint(out / "model.ckpt")["training"]["epoch"] == 2
    # asking for fewer epochs than the checkpoint has is refused, and nothing is rewritten
    before = snapshot(out)
    assert main(train_argv(data, out, 1, "--resume")) == 2
    one_line_error(capsys, "has 2 epochs, more than --epochs 1")
    assert snapshot(out) == before


def test_resume_and_overwrite_together_are_refused(finished, data, capsys):
    assert main(train_argv(data, finished["out"], 1, "--resume", "--overwrite")) == 2
    one_line_error(capsys, "--resume", "--overwrite", "only one")


# --------------------------------------------------------------------- 5. checkpoints and weights files


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda p: p["config"].update(colour="red"), ["unknown key", "colour"]),
        (lambda p: p.update(config=[1, 2]), ["'config' must be a mapping", "list"]),
        (lambda p: p["config"].update(image_size=10**6), ["'config.image_size'", "1000000"]),
        (lambda p: p["config"].update(image_size="big"), ["'config.image_size'", "'big'"]),
        (lambda p: p["config"].update(blur_sigma=float("nan")), ["'config.blur_sigma'"]),
        (lambda p: p.update(categories="fabric"), ["'categories'"]),
    ],
)
def test_edited_checkpoint_config_is_one_line(edit, words, tmp_path, capsys):
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "model.ckpt", build_model("stfpm", image_size=SIZE), ["fabric"])
    payload = torch.load(ck, weights_only=True)
    edit(payload)
    torch.save(payload, ck)
    with pytest.raises(CheckpointError, match="model.ckpt: field"):
        load_checkpoint(ck)
    data = tmp_path / "no-data"
    assert main(["optimize", str(ck), "--data", str(data), "--out", str(tmp_path / "art"), "--quiet"]) == 2
    one_line_error(capsys, str(ck), *words)
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("content", [b"", b"garbage, not a torch file", b"PK\x03\x04 truncated zip"])
def test_corrupt_weights_file_is_one_line(content, data, tmp_path, capsys):
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(content)
    argv = train_argv(data, tmp_path / "run", 1, "--backbone", "resnet18", "--weights", str(weights))
    assert main(argv) == 2
    one_line_error(capsys, str(weights), "not a readable resnet18 weights file")
    assert not (tmp_path / "run").exists()  # the folder this run created is gone again


# ------------------------------------------------------------------------------- 8. degenerate inputs


def test_constant_calibration_images_are_refused(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("stfpm", image_size=SIZE)
    calib = torch.rand(6, 3, SIZE, SIZE)
    calib[2] = 0.5
    with pytest.raises(DataError, match=r"index 2: calibration image is constant \(every pixel 0.5"):
        optimize(model, "cpu", 8, calib=calib, calib_samples=6, progress=False)
    # through the CLI, the file is named
    root = tmp_path / "data"
    generate_synthetic(root, categories=["fabric"], n_train=6, n_test=2, image_size=SIZE, progress=False)
    flat = sorted((root / "fabric" / "train" / "good").iterdir())[3]
    Image.new("RGB", (SIZE, SIZE), (7, 7, 7)).save(flat)
    ck = save_checkpoint(tmp_path / "model.ckpt", model, ["fabric"], normalization=NORMALIZATION)
    out = tmp_path / "art"
    argv = ["optimize", str(ck), "--data", str(root), "--out", str(out), "--calib-samples", "64", "--quiet"]
    assert main(argv) == 2
    one_line_error(capsys, str(flat), "calibration image is constant", "remove")
    assert not out.exists()


def test_too_few_images_to_hold_out_a_threshold_set_are_refused(tmp_path, capsys):
    root = tmp_path / "data"
    generate_synthetic(root, categories=["fabric"], n_train=4, n_test=2, image_size=SIZE, progress=False)
    assert main(train_argv(root, tmp_path / "run")) == 2
    one_line_error(capsys, "fabric", "4 normal training image(s)", "5 are held out", "add normal images")
    assert not (tmp_path / "run" / "model.ckpt").exists()


def test_validation_holds_out_at_least_five_images(finished):
    runs = json.loads((finished["out"] / "train.json").read_text())["runs"]["unified"]
    assert runs["val_images"] == 10 and runs["train_images"] == 14  # 5 of each category's 12, not round(1.2)
    norm = read_checkpoint(finished["out"] / "model.ckpt")["normalization"]
    assert {c: norm[c]["n_val"] for c in norm} == {"fabric": 5, "mesh": 5}


@pytest.mark.parametrize("value", ["1.0", "-0.1", "0"])
def test_val_fraction_out_of_range_is_one_line(value, data, tmp_path, capsys):
    assert main(train_argv(data, tmp_path / "run", 1, "--val-fraction", value)) == 2
    one_line_error(capsys, "--val-fraction must be in (0, 1)", value, "threshold")


# ------------------------------------------------------------------ 9. folders that are not categories


def test_train_all_reports_a_folder_without_train_good(finished, data):
    assert f"anomopt: warning: {data / 'notes'}: no train/good folder" in finished["stderr"]
    assert json.loads((finished["out"] / "train.json").read_text())["runs"]["unified"]["categories"] == [
        "fabric",
        "mesh",
    ]


def test_data_check_reports_a_folder_without_train_good(data, capsys):
    assert main(["data", "check", str(data)]) == 2
    out = capsys.readouterr()
    assert "fabric: 12 train" in out.out and "mesh: 12 train" in out.out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and str(data / "notes" / "train" / "good") in lines[0] and "(notes)" in lines[0]
    assert main(["data", "check", str(data), "--categories", "fabric,mesh"]) == 0  # named: nothing to report


# -------------------------------------------------------------------------------------- #16.7 --help


def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(sub.choices[command].format_help().split())


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("train", ["--epochs EPOCHS total epochs", "(default: 20)", "(default: 0.1)", "(default: stfpm)"]),
        ("optimize", ["(default: cpu)", "(default: 64)", "(default: train)", "(default: 8)"]),
        ("evaluate", ["(default: all)"]),
        ("demo", ["(default: runs/demo)", "(default: 128)"]),
    ],
)
def test_help_shows_defaults(command, shown):
    text = _help(command)
    for s in shown:
        assert s in text, (s, text)
    assert "(default: None)" not in text and "(default: False)" not in text
