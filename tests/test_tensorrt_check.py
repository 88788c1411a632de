"""benchmarks/tensorrt_check.py without a GPU: arguments, artifact discovery, the plan (--dry-run), the maths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomopt.normalization import fit_normalization

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import tensorrt_check as tc  # noqa: E402

SIZE = 64
# finished-training thresholds (optimize/export refuse a checkpoint without them)
NORM = fit_normalization(["toy"] * 20, np.linspace(0.1, 0.9, 20))


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        tc.parse_args([])  # --checkpoint or --artifacts
    with pytest.raises(SystemExit):
        tc.parse_args(["--artifacts", "x", "--modes", "int4"])
    with pytest.raises(SystemExit):
        tc.parse_args(["--artifacts", "x", "--wheels", "w"])  # --wheels needs --install
    args = tc.parse_args(["--artifacts", "x", "--modes", "fp16,int8-modelopt"])
    assert args.modes == ["fp16", "int8-modelopt"]
    cmd = tc.install_command(tc.parse_args(["--artifacts", "x", "--install", "--wheels", "/w"]))
    assert cmd[3:8] == ["install", "--no-index", "--find-links", "/w", "-c"]  # local wheels, repository pins
    assert cmd[8].endswith("constraints.txt") and {"tensorrt", "torch-tensorrt", "nvidia-modelopt"} <= set(cmd)


def test_artifact_mode_from_meta():
    trt = {"runtime": "tensorrt"}
    assert tc.artifact_mode({**trt, "precision": "fp16"}) == "fp16"
    assert tc.artifact_mode({**trt, "precision": "fp32"}) is None
    assert tc.artifact_mode({"runtime": "onnxruntime", "precision": "int8"}) is None
    assert tc.artifact_mode({**trt, "precision": "int8", "tensorrt": {"quantization": "explicit (Q/DQ)"}}) == (
        "int8-explicit"
    )
    assert tc.artifact_mode({**trt, "precision": "int8", "quant": {"backend": "modelopt"}}) == "int8-modelopt"
    assert tc.artifact_mode({**trt, "precision": "int8", "tensorrt": {"quantization": "implicit (cache)"}}) == (
        "int8-implicit"
    )
    bundle = {"files": {"model.onnx": {}, "build_torch_trt.py": {}}}
    assert tc.artifact_mode({**trt, **bundle, "precision": "fp16"}) == "torch-trt-fp16"
    assert tc.artifact_mode({**trt, **bundle, "precision": "int8", "quant": {"backend": "modelopt"}}) == (
        "torch-trt-int8"
    )
    plan = tc.plan([tc.Job("torch-trt-fp16", "/a", "/a/model.onnx", image_size=64)],
                   tc.parse_args(["--artifacts", "/a", "--work", "/w"]))
    assert plan[0]["command"] == "python3 /a/build_torch_trt.py --out /w/engines/torch-trt-fp16.ep"
    assert "compile" in plan[0]["checks"]


def test_parity_maths():
    rng = np.random.default_rng(0)
    ort = rng.random(40)
    labels = (rng.random(40) > 0.5).astype(int)
    same_order = tc.parity(ort, np.exp(ort) * 3.0, labels)  # any monotone map keeps ranks and AUROC
    assert same_order["spearman"] == pytest.approx(1.0) and same_order["auroc_delta_points"] == pytest.approx(0.0)
    assert same_order["ok"]
    shuffled = ort.copy()
    shuffled[:20] = shuffled[:20][::-1]
    bad = tc.parity(ort, shuffled, labels)
    assert bad["spearman"] < tc.SPEARMAN_MIN and not bad["ok"]
    with pytest.raises(ValueError):
        tc.spearman(np.ones(2), np.ones(3))


def test_int8_coverage_from_inspector_json():
    info = {
        "Layers": [
            {"Name": "/student/a/Conv + /student/a/Relu", "Inputs": [{"Format/Datatype": "Channel major INT8 format"}]},
            {"Name": "/student/b/Conv", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
            {"Name": "/teacher/c/Conv", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
        ]
    }
    layers = tc.int8_layers(json.dumps(info))
    cov = tc.int8_conv_coverage(layers, ["/student/a/Conv", "/student/b/Conv", "/student/x/Conv"])
    assert cov["int8"] == 1 and cov["not_int8"] == ["/student/b/Conv"] and cov["not_found"] == ["/student/x/Conv"]
    assert not cov["ok"]
    assert tc.int8_conv_coverage(layers, ["/student/a/Conv"])["ok"]
    # a name that only shares a prefix is not a match
    assert tc.int8_conv_coverage(layers, ["/student/a/Co"])["not_found"] == ["/student/a/Co"]


def _mvtec(root: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "toy" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def test_dry_run_builds_artifacts_and_prints_the_plan(tmp_path, capsys, one_torch_thread):
    from anomopt.checkpoint import save_checkpoint
    from anomopt.models import build_model

    torch.manual_seed(0)
    model = build_model("rd", image_size=SIZE)
    ckpt = save_checkpoint(tmp_path / "m.ckpt", model, ["toy"], normalization=NORM)
    data = _mvtec(tmp_path / "data")
    work = tmp_path / "work"
    modes = "int8-explicit,int8-implicit,fp16"
    argv = ["--checkpoint", str(ckpt), "--data", str(data), "--work", str(work), "--modes", modes,
            "--calib-samples", "8"]
    assert tc.main([*argv, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["would_build_artifacts_from"] == str(ckpt)
    root = tc.build_artifacts(tc.parse_args(argv))
    capsys.readouterr()
    assert tc.main(["--artifacts", str(root), "--dry-run"]) == 0
    jobs = {j["mode"]: j for j in json.loads(capsys.readouterr().out)["jobs"]}
    assert set(jobs) == {"int8-explicit", "int8-implicit", "fp16"}
    import onnx

    proto = onnx.load(jobs["int8-explicit"]["onnx"])
    student_convs = sum(n.op_type == "Conv" and n.name.startswith("/student/") for n in proto.graph.node)
    assert jobs["int8-explicit"]["quantized_convs"] == student_convs > 0
    assert jobs["int8-implicit"]["quantized_convs"] == student_convs  # every student conv input is in the cache
    assert jobs["fp16"]["quantized_convs"] == 0
    assert "--int8" in jobs["int8-explicit"]["trtexec_equivalent"]
    assert "--calib=" in jobs["int8-implicit"]["trtexec_equivalent"]
    assert "--fp16" in jobs["fp16"]["trtexec_equivalent"]
    if not torch.cuda.is_available():  # the real run refuses cleanly without a GPU
        assert tc.main(["--artifacts", str(root)]) == 2
