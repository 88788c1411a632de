"""Checkpoints from another version or model, pipelines with unknown passes, targets without a precision,
NaN/Inf calibration batches and a one-image data set: clear anomopt errors from the library and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from anomopt.api import optimize
from anomopt.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from anomopt.cli.main import main
from anomopt.data import generate_synthetic, load_mvtec
from anomopt.errors import CheckpointError, ConfigError, DataError, TargetError
from anomopt.models import build_model
from anomopt.passes import load_pipeline
from anomopt.targets import get_target
from anomopt.train import TrainConfig, train_model
from conftest import ImageList, ToyKD

SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mf") / "data"
    generate_synthetic(root, categories=1, n_train=3, n_test=2, image_size=SIZE, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "model.ckpt"
    norm = {"fabric": {"score_mean": 1.0, "score_std": 0.5, "image_threshold_z": 3.0}}  # a finished run's
    return save_checkpoint(path, build_model("stfpm", image_size=SIZE), ["fabric"], normalization=norm)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("anomopt: error: ") and err.count("\n") == 1, err
    return err


def _cli_optimize(ckpt: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["optimize", str(ckpt), "--data", str(data), "--out", str(out), "--quiet", *extra])


# ----------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_from_another_version(ckpt, data, tmp_path, capsys):
    payload = torch.load(ckpt, weights_only=True)
    payload["format_version"] = 7
    payload["anomopt_version"] = "9.9.9"
    old = tmp_path / "future.ckpt"
    torch.save(payload, old)
    with pytest.raises(CheckpointError, match=r"future.ckpt: checkpoint format version 7 written by anomopt 9.9.9"):
        load_checkpoint(old)
    assert _cli_optimize(old, data, tmp_path / "art") == 2
    assert str(old) in _one_line_error(capsys)
    assert not (tmp_path / "art").exists()


def test_checkpoint_of_another_model(ckpt, data, tmp_path, capsys):
    with pytest.raises(CheckpointError, match=r"model.ckpt: checkpoint holds model 'stfpm', not 'rd'"):
        load_checkpoint(ckpt, expect_model="rd")
    # Weights of one model under another model's config: a CheckpointError, not a torch RuntimeError.
    payload = torch.load(ckpt, weights_only=True)
    payload["config"] = build_model("rd", image_size=SIZE).config.to_dict()
    mixed = tmp_path / "mixed.ckpt"
    torch.save(payload, mixed)
    with pytest.raises(CheckpointError, match=r"mixed.ckpt: weights do not fit model 'rd'"):
        load_checkpoint(mixed)
    assert _cli_optimize(mixed, data, tmp_path / "art") == 2
    err = _one_line_error(capsys)
    assert str(mixed) in err and "do not fit" in err


@pytest.mark.parametrize("content", [b"", b"\x80\x02garbage", b"PK\x03\x04truncated zip"])
def test_corrupt_checkpoint_file(tmp_path, data, capsys, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.ckpt: not a readable anomopt checkpoint"):
        read_checkpoint(bad)
    assert _cli_optimize(bad, data, tmp_path / "art") == 2
    assert str(bad) in _one_line_error(capsys)


def test_missing_checkpoint_cli(tmp_path, data, capsys):
    assert _cli_optimize(tmp_path / "none.ckpt", data, tmp_path / "art") == 2
    assert "none.ckpt: checkpoint file not found" in _one_line_error(capsys)


# ----------------------------------------------------------------------------------------------- pipelines, targets


def test_unknown_pass_in_pipeline_file(ckpt, data, tmp_path, capsys):
    pipe = tmp_path / "mine.toml"
    pipe.write_text(
        '[pipeline]\ntarget = "cpu"\nbits = 8\n\n[[pass]]\nname = "fold_batchnorm"\n\n'
        '[[pass]]\nname = "quantise_everything"\n'
    )
    with pytest.raises(ConfigError, match=r"mine.toml: \[\[pass\]\] #2: unknown pass 'quantise_everything'"):
        load_pipeline(pipe)
    with pytest.raises(ConfigError, match="unknown pass 'quantise_everything'"):
        optimize(ToyKD().eval(), "cpu", 8, calib=torch.rand(4, 3, 32, 32), passes=str(pipe), progress=False)
    assert _cli_optimize(ckpt, data, tmp_path / "art", "--pipeline", str(pipe)) == 2
    err = _one_line_error(capsys)
    assert str(pipe) in err and "quantise_everything" in err
    assert not (tmp_path / "art").exists()


def test_target_without_the_precision(ckpt, data, tmp_path, capsys):
    with pytest.raises(TargetError, match="target 'cpu' does not run FP16"):
        get_target("cpu").check_bits(16)
    get_target("cpu").check_bits(8)
    with pytest.raises(TargetError, match="FP16"):
        optimize(ToyKD().eval(), "cpu", 16, calib=torch.rand(4, 3, 32, 32), progress=False)
    assert _cli_optimize(ckpt, data, tmp_path / "art", "--bits", "16") == 2
    assert "does not run FP16" in _one_line_error(capsys)
    assert not (tmp_path / "art").exists()


def test_unknown_target(ckpt, data, tmp_path, capsys):
    with pytest.raises(TargetError):
        get_target("toaster")
    assert _cli_optimize(ckpt, data, tmp_path / "art", "--target", "toaster") == 2
    assert "toaster" in _one_line_error(capsys)


# ----------------------------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 7])
def test_non_finite_calibration_batch(bad, where):
    calib = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calib[where, 1, 4, 4] = bad
    with pytest.raises(DataError, match=rf"calibration images hold NaN or Inf values \(1 of 8 images: index {where}\)"):
        optimize(
            ToyKD().eval(),
            "cpu",
            8,
            calib=calib,
            passes=["fold_batchnorm", "insert_fake_quant", "calibrate"],
            progress=False,
        )


# ----------------------------------------------------------------------------------------------- tiny data sets


def test_one_image_training_set_library(tmp_path):
    """One normal image trains (batch of one) and gives finite scores."""
    torch.manual_seed(0)
    model = ToyKD(seed=0)
    result = train_model(
        model,
        ImageList(torch.rand(1, 3, 32, 32)),
        TrainConfig(epochs=1, batch_size=4, progress=False, precision="fp32"),
    )
    assert len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses)).all()


def test_one_image_data_set_cli(data, tmp_path, capsys):
    """`anomopt train` on a category with a single normal image: it either trains or says why, clearly."""
    one = tmp_path / "one"
    shutil.copytree(data, one)
    for f in sorted((one / "fabric" / "train" / "good").glob("*.png"))[1:]:
        f.unlink()
    assert len(load_mvtec(one, "all", split="train", image_size=SIZE, val_fraction=0.0)) == 1
    rc = main(
        [
            "train",
            "--model",
            "stfpm",
            "--data",
            str(one),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--image-size",
            str(SIZE),
            "--quiet",
        ]
    )
    if rc == 0:
        _, payload = load_checkpoint(tmp_path / "run" / "model.ckpt")
        assert payload["training"]["epoch"] == 1
    else:
        assert rc == 2
        err = _one_line_error(capsys)
        assert str(one) in err
