"""Issue #14 items 1, 3, 5 (output paths), 6 and 7: `--out` never eats a user's files or the input
checkpoint, two runs never share a folder, a bad `--out` fails before the work, modes follow the umask, and
no temp folder or hidden leftover outlives a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from anomopt.api import optimize
from anomopt.checkpoint import save_checkpoint
from anomopt.cli.main import main
from anomopt.data import generate_synthetic
from anomopt.errors import ConfigError, DriftError, OutputError
from anomopt.models import build_model
from anomopt.outputs import OWNER_FILE, prepare_output_dir, sweep_stale_work_dirs
from anomopt.runtime import Predictor
from reliability.helpers import NORMALIZATION, SIZE, one_line_error, snapshot, unwritable_dir

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "run" / "model.ckpt"  # a finished run's: it carries thresholds
    return save_checkpoint(path, build_model("stfpm", image_size=SIZE), ["fabric"], normalization=NORMALIZATION)


@pytest.fixture(scope="module")
def om(ckpt):
    """One optimized model (FP32, lowered); each ``save`` only copies its files."""
    return optimize(ckpt, "cpu", 32, calib=torch.rand(4, 3, SIZE, SIZE), calib_samples=2, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("os") / "data"
    generate_synthetic(root, categories=1, n_train=4, n_test=2, image_size=SIZE, seed=0, progress=False)
    return root


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The system temp folder of this test alone (other processes on the machine use the real one)."""
    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _optimize(ckpt: Path, data: Path, out: Path, *extra: str) -> int:
    argv = ["optimize", str(ckpt), "--data", str(data), "--out", str(out), "--bits", "32"]
    return main([*argv, "--calib-samples", "4", "--quiet", *extra])


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "sub").mkdir()
    (path / "sub" / "photo.png").write_bytes(b"\x89PNG not really")
    return snapshot(path)


# ------------------------------------------------------------------------- 1. optimize / export --out


@pytest.mark.parametrize("command", ["optimize", "export"])
def test_out_with_user_files_is_refused(command, ckpt, data, tmp_path, capsys):
    out = tmp_path / "mine"
    before = _user_folder(out)
    if command == "optimize":
        rc = _optimize(ckpt, data, out)
    else:
        rc = main(["export", str(ckpt), "--bits", "32", "--out", str(out), "--quiet"])
    assert rc == 2
    one_line_error(capsys, str(out), "not empty", "not an anomopt output", "--overwrite")
    assert snapshot(out) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_holding_the_input_checkpoint_is_refused(ckpt, data, tmp_path, capsys, overwrite):
    run = tmp_path / "run"
    run.mkdir()
    local = run / "model.ckpt"
    local.write_bytes(ckpt.read_bytes())
    before = snapshot(run)
    rc = _optimize(local, data, run, *(["--overwrite"] if overwrite else []))
    assert rc == 2
    one_line_error(capsys, str(run), "holds the input", "model.ckpt")
    assert snapshot(run) == before


def test_out_that_is_the_working_folder_is_refused(ckpt, data, tmp_path, capsys, monkeypatch):
    work = tmp_path / "cwd"
    before = _user_folder(work)
    monkeypatch.chdir(work)
    assert _optimize(ckpt, data, Path(".")) == 2
    one_line_error(capsys, "current folder", "sub-folder")
    assert snapshot(work) == before


def test_earlier_artifact_is_replaced_and_overwrite_replaces_a_foreign_folder(om, tmp_path):
    art = om.save(tmp_path / "art")
    (art / "meta.json").write_text((art / "meta.json").read_text().replace('"cpu"', '"cpu" '))  # mark it
    om.save(art)  # an earlier artifact: replaced without overwrite
    assert '"cpu" ' not in (art / "meta.json").read_text()
    assert not [p for p in art.parent.iterdir() if p.name.startswith(".")]  # no lock, tmp or old left
    mine = tmp_path / "mine"
    before = _user_folder(mine)
    with pytest.raises(ConfigError, match="not empty and it is not an anomopt output"):
        om.save(mine)
    assert snapshot(mine) == before
    om.save(mine, overwrite=True)
    Predictor(mine, threads=1)
    assert not (mine / "notes.txt").exists()


def test_library_save_never_replaces_a_folder_holding_an_input(om, ckpt):
    before = snapshot(ckpt.parent)
    with pytest.raises(ConfigError, match="holds the input"):
        om.save(ckpt.parent, overwrite=True, inputs=(str(ckpt),))
    assert snapshot(ckpt.parent) == before


# ------------------------------------------------------------------------------- 3. one run per folder

HOLD = textwrap.dedent(
    """
    import sys, time
    from anomopt.outputs import prepare_output_dir
    with prepare_output_dir(sys.argv[1], sys.argv[2]):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def _holder(out: Path, kind: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), kind], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("command", ["train", "optimize"])
def test_second_run_into_a_locked_folder_names_the_holder(command, ckpt, data, tmp_path, capsys):
    out = tmp_path / "out"
    proc = _holder(out, "train" if command == "train" else "artifact")
    try:
        if command == "train":
            rc = main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--quiet"])
        else:
            rc = _optimize(ckpt, data, out)
        assert rc == 2
        one_line_error(capsys, str(out), f"pid {proc.pid}", "another anomopt run")
    finally:
        proc.kill()
        proc.wait()
    # The kernel dropped the lock with the process: the folder is free again, leftover lock file or not.
    with prepare_output_dir(out, "train" if command == "train" else "artifact"):
        pass


def test_lock_is_exclusive_within_the_library(tmp_path):
    out = tmp_path / "art"
    proc = _holder(out, "artifact")
    try:
        with pytest.raises(OutputError, match=f"pid {proc.pid}"), prepare_output_dir(out, "artifact"):
            pass
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------ 5. bad --out fails early


@pytest.mark.parametrize("command", ["train", "optimize", "predict", "demo"])
def test_out_that_is_a_file_fails_before_any_work(command, ckpt, tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    missing = str(tmp_path / "no-data")  # never read: --out is checked first
    argv = {
        "train": ["train", "--data", missing, "--out", str(target)],
        "optimize": ["optimize", str(ckpt), "--data", missing, "--out", str(target)],
        "predict": ["predict", str(tmp_path / "no-artifact"), str(ckpt), "--out", str(target)],
        "demo": ["demo", "--data", missing, "--out", str(target)],
    }[command]
    assert main(argv) == 2
    one_line_error(capsys, str(target), "is a file")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["train", "optimize", "predict"])
def test_read_only_out_fails_before_any_work(command, ckpt, tmp_path, capsys):
    out = unwritable_dir(tmp_path) / "out"
    missing = str(tmp_path / "no-data")
    argv = {
        "train": ["train", "--data", missing, "--out", str(out)],
        "optimize": ["optimize", str(ckpt), "--data", missing, "--out", str(out)],
        "predict": ["predict", str(tmp_path / "no-artifact"), str(ckpt), "--out", str(out)],
    }[command]
    assert main(argv) == 2
    one_line_error(capsys, str(out), "--out", "cannot be created")


def test_evaluate_json_that_is_a_folder_fails_before_any_work(ckpt, tmp_path, capsys):
    folder = tmp_path / "metrics"
    folder.mkdir()
    assert main(["evaluate", str(ckpt), "--data", str(tmp_path / "no-data"), "--json", str(folder)]) == 2
    one_line_error(capsys, str(folder), "--json is a folder")


# ---------------------------------------------------------------------------------------- 6. umask


@pytest.mark.parametrize(("umask", "dmode", "fmode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_artifact_modes_follow_the_umask(om, tmp_path, umask, dmode, fmode):
    old = os.umask(umask)
    try:
        art = om.save(tmp_path / "art")
    finally:
        os.umask(old)
    assert art.stat().st_mode & 0o777 == dmode
    for f in art.iterdir():
        assert f.stat().st_mode & 0o777 == fmode, f


def test_checkpoint_and_summary_modes_follow_the_umask(tmp_path):
    from anomopt.io import write_json_atomic

    old = os.umask(0o022)
    try:
        ck = save_checkpoint(tmp_path / "run" / "model.ckpt", build_model("stfpm", image_size=SIZE), ["x"])
        write_json_atomic(tmp_path / "run" / "train.json", {"a": 1})
    finally:
        os.umask(old)
    assert ck.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run" / "train.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755


# ---------------------------------------------------------------------------------------- 7. litter


def _anomopt_temp(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith("anomopt-")]


def test_library_temp_folder_lives_as_long_as_the_model(ckpt, private_tmp):
    import gc

    model = optimize(ckpt, "cpu", 32, calib=torch.rand(4, 3, SIZE, SIZE), calib_samples=2, progress=False)
    assert len(_anomopt_temp(private_tmp)) == 1  # lowering's files: the model's runner reads them
    del model
    gc.collect()
    assert _anomopt_temp(private_tmp) == []


def test_failed_optimize_leaves_no_temp_folder(ckpt, data, tmp_path, private_tmp, capsys):
    pipeline = tmp_path / "strict.toml"  # fails its drift check right after lowering wrote its files
    pipeline.write_text(
        '[pipeline]\nname = "strict"\ntarget = "cpu"\nbits = 32\n[tolerance]\nmax_score_drift = -1.0\n'
        '[[pass]]\nname = "lower"\n'
    )
    assert _optimize(ckpt, data, tmp_path / "art", "--pipeline", str(pipeline)) == 2
    one_line_error(capsys, "lower")
    assert _anomopt_temp(private_tmp) == []
    assert not (tmp_path / "art").exists()
    with pytest.raises(DriftError):
        optimize(ckpt, "cpu", 32, calib=torch.rand(4, 3, SIZE, SIZE), calib_samples=2, passes=pipeline, progress=False)
    assert _anomopt_temp(private_tmp) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_optimize_leaves_no_litter_and_removes_a_killed_runs(ckpt, data, tmp_path, private_tmp):
    stale = private_tmp / "anomopt-cpu-int8-killed1"
    stale.mkdir()
    (stale / OWNER_FILE).write_text(f"{_dead_pid()}\n")
    (stale / "model.onnx").write_bytes(b"x" * 1000)
    alive = private_tmp / "anomopt-cpu-int8-running"
    alive.mkdir()
    (alive / OWNER_FILE).write_text(f"{os.getpid()}\n")
    foreign = private_tmp / "anomopt-not-ours"  # no owner file: never touched
    foreign.mkdir()
    arts = tmp_path / "arts"
    arts.mkdir()
    (arts / ".art.ab12cd34.tmp").mkdir()  # a killed folder swap's temp folder
    (arts / ".art.ab12cd34.tmp" / "model.onnx").write_bytes(b"half")
    (arts / ".art.old").mkdir()
    (arts / "keep.txt").write_text("mine")
    assert _optimize(ckpt, data, arts / "art") == 0
    Predictor(arts / "art", threads=1)
    assert not stale.exists() and alive.exists() and foreign.exists()
    assert sorted(p.name for p in _anomopt_temp(private_tmp)) == [alive.name, foreign.name]  # none of its own
    assert sorted(p.name for p in arts.iterdir()) == ["art", "keep.txt"]
    assert sweep_stale_work_dirs(private_tmp) == []


def test_interrupted_swap_puts_the_previous_artifact_back(om, tmp_path):
    art = om.save(tmp_path / "art")
    os.replace(art, tmp_path / ".art.old")  # killed between the two renames of the swap
    with prepare_output_dir(art, "artifact"):
        pass
    Predictor(art, threads=1)


def test_resume_removes_a_killed_runs_temp_files(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run / "model.ckpt", build_model("stfpm", image_size=SIZE), ["x"])
    (run / ".model.ckpt.k1ll3d_x.tmp").write_bytes(b"half a checkpoint")
    (run / ".train.json.abcdefgh.tmp").write_text("{")
    (run / "notes.tmp").write_text("not ours")
    with prepare_output_dir(run, "train") as od:
        assert od.found == "train" and od.checkpoints == [run / "model.ckpt"]
    assert sorted(p.name for p in run.iterdir()) == ["model.ckpt", "notes.tmp"]


def test_sigterm_cleans_up_and_exits_143(ckpt, data, tmp_path):
    sys_tmp = tmp_path / "systmp"
    sys_tmp.mkdir()
    out = tmp_path / "arts" / "art"
    argv = [sys.executable, "-m", "anomopt.cli.main", "optimize", str(ckpt), "--data", str(data), "--out", str(out)]
    proc = subprocess.Popen(
        [*argv, "--bits", "8", "--calib-samples", "4", "--quiet"],
        env={**ENV, "TMPDIR": str(sys_tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.monotonic() + 120
    while not _anomopt_temp(sys_tmp) and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # finished before the signal landed
        Predictor(out, threads=1)
    else:
        assert proc.returncode == 143 and "anomopt: terminated" in err, err[-1000:]
        assert not out.exists()
    assert _anomopt_temp(sys_tmp) == []
    if out.parent.exists():  # a terminated run removes the parent folder it created, if still empty
        assert not [p for p in out.parent.iterdir() if p.name != "art"]
