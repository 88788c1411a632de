"""TensorRT path, checked without TensorRT: QDQ ONNX, calibration cache, trtexec command, build errors."""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from anomopt.api import optimize
from anomopt.errors import TargetError
from anomopt.models import build_model
from anomopt.normalization import fit_normalization
from anomopt.passes.drift import relative_l2
from anomopt.runtime import Predictor
from anomopt.targets import tensorrt as trt
from anomopt.targets.onnx_export import export_onnx

SIZE = 64
# finished-training thresholds (optimize/export refuse a checkpoint without them)
NORM = fit_normalization(["toy"] * 20, np.linspace(0.1, 0.9, 20))
PTQ = ["fold_batchnorm", "insert_fake_quant", ("calibrate", {"method": "max"})]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trt_graph(calib):
    """STFPM with symmetric int8 fake quantizers (the xavier_nx scheme), calibrated."""
    torch.manual_seed(0)
    om = optimize(
        build_model("stfpm", image_size=SIZE),
        "xavier_nx",
        8,
        calib=calib,
        passes=PTQ,
        calib_samples=8,
        progress=False,
    )
    return om.graph


@pytest.fixture(scope="module")
def qdq_path(trt_graph, tmp_path_factory):
    return trt.export_qdq_onnx(trt_graph, tmp_path_factory.mktemp("qdq") / "model.onnx").path


def test_qdq_onnx_is_symmetric_int8_per_channel(trt_graph, qdq_path):
    proto = onnx.load(str(qdq_path))
    onnx.checker.check_model(proto, full_check=True)
    info = trt.qdq_summary(proto)
    n_convs = sum(n.name.startswith("/student/") and n.op_type == "Conv" for n in proto.graph.node)
    assert info["zero_point_types"] == ["int8"]
    assert info["asymmetric"] == []
    assert info["quantize_linear"] == n_convs  # activations: one Q/DQ pair per quantized conv input
    assert info["weight_dequantize_linear"] == n_convs == info["per_channel_weights"]  # int8 weights, axis 0
    inits = {t.name: t for t in proto.graph.initializer}
    weight_dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in weight_dqs)
    assert all(next(a.i for a in n.attribute if a.name == "axis") == 0 for n in weight_dqs)
    # the teacher and the head hold no Q/DQ
    consumers = {i: n for n in proto.graph.node for i in n.input}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear":
            assert consumers[n.output[0]].name.startswith("/student/")


def test_qdq_onnx_runs_in_onnxruntime_like_torch(trt_graph, qdq_path):
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref_s, ref_m = trt_graph.model(x)
    s, m = ort.InferenceSession(str(qdq_path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    # same int8 grid; differences are rounding of ties and accumulation order (measured ~1e-3)
    assert relative_l2(s, ref_s.numpy()) < 2e-2
    assert relative_l2(m, ref_m.numpy()) < 2e-2


def test_asymmetric_graph_is_refused(calib, tmp_path):
    om = optimize(
        build_model("us", image_size=SIZE), "cpu", 8, calib=calib, passes=PTQ, calib_samples=8, progress=False
    )
    with pytest.raises(TargetError, match="symmetric int8"):
        trt.export_qdq_onnx(om.graph, tmp_path / "m.onnx")


def test_calibration_cache_round_trip(tmp_path):
    ranges = {"images": 1.0, "/student/features/conv_stem/Conv_output_0": 6.0, "x:with:colons": 0.0123}
    path = trt.write_calibration_cache(tmp_path / "calib.cache", ranges, version="8502")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8502-EntropyCalibration2"
    for line in lines[1:]:
        assert re.fullmatch(r".+: [0-9a-f]{8}", line)
    header, scales = trt.read_calibration_cache(path)
    assert header == lines[0]
    assert set(scales) == set(ranges)
    for name, amax in ranges.items():
        assert scales[name] == struct.unpack(">f", struct.pack(">f", amax / 127.0))[0]
    # the documented example: scale 1/127 is 0x3c010204 big-endian
    assert lines[1] == "images: 3c010204"
    assert trt.cache_version("8.6") == "8601" and trt.cache_version("8.5.2") == "8502"


def test_calibration_ranges_cover_every_tensor(trt_graph, calib, tmp_path):
    fp32 = export_onnx(trt_graph, tmp_path / "fp32.onnx").path
    ranges = trt.calibration_ranges(fp32, calib[:4], num_bins=256)
    proto = onnx.load(str(fp32))
    conv_outputs = [n.output[0] for n in proto.graph.node if n.op_type == "Conv"]
    assert "images" in ranges and all(t in ranges for t in conv_outputs)
    assert all(np.isfinite(v) and v >= 0 for v in ranges.values())
    student = trt.tensors_of_roles(proto, ["student"])
    assert "images" in student and not any(name.startswith("/teacher/") for name in student)
    assert any(name.startswith("/student/") for name in student)


def test_trtexec_commands():
    explicit = trt.trtexec_command("model.onnx", "model.engine", "int8", image_size=256)
    assert explicit == [
        "trtexec",
        "--onnx=model.onnx",
        "--saveEngine=model.engine",
        "--int8",
        "--memPoolSize=workspace:1024",
        "--shapes=images:1x3x256x256",
    ]
    implicit = trt.trtexec_command(precision="int8", calib_cache="calib.cache", image_size=128)
    assert "--int8" in implicit and "--calib=calib.cache" in implicit and "--shapes=images:1x3x128x128" in implicit
    fp16 = trt.trtexec_command(precision="fp16")
    assert "--fp16" in fp16 and "--int8" not in fp16
    dla = trt.trtexec_command(precision="int8", dla_core=1, workspace_mib=512)
    assert {"--useDLACore=1", "--allowGPUFallback", "--fp16", "--memPoolSize=workspace:512"} <= set(dla)
    assert "--fp16" not in trt.trtexec_command(precision="fp32")
    with pytest.raises(TargetError):
        trt.trtexec_command(precision="int4")
    with pytest.raises(TargetError):
        trt.trtexec_command(precision="fp16", calib_cache="calib.cache")


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: the real build test runs instead")
def test_build_engine_without_tensorrt_names_the_command(qdq_path, tmp_path):
    with pytest.raises(TargetError) as err:
        trt.build_engine(qdq_path, tmp_path / "model.engine", "int8", image_size=SIZE)
    msg = str(err.value)
    assert "TensorRT is not installed" in msg
    assert "trtexec --onnx=model.onnx --saveEngine=model.engine --int8" in msg


def test_build_engine_with_tensorrt(qdq_path, tmp_path):
    pytest.importorskip("tensorrt")
    engine = trt.build_engine(qdq_path, tmp_path / "model.engine", "int8", image_size=SIZE)
    assert engine.stat().st_size > 0


def test_torch_tensorrt_backend_error(trt_graph):
    if importlib.util.find_spec("torch_tensorrt") is not None:
        pytest.skip("torch_tensorrt is installed")
    with pytest.raises(TargetError, match="torch_tensorrt"):
        trt.lower_torch_tensorrt(trt_graph, "fp16")


def test_jetson_pipeline_artifact(calib, tmp_path):
    """The shipped xavier_nx-int8 pipeline (lower included), saved: QDQ ONNX + build_engine.sh, loadable."""
    torch.manual_seed(0)
    om = optimize(
        build_model("stfpm", image_size=SIZE),
        "xavier_nx",
        8,
        calib=calib,
        calib_samples=8,
        pass_options={"calibrate": {"method": "max"}, "lower": {"dla_core": 0}},
        workdir=tmp_path / "w",
        progress=False,
    )
    lower = om.passes_report.records[-1]
    assert lower.name == "lower" and "stand-in" in lower.notes["runner"]
    assert lower.drift["score"] < 0.25
    out = om.save(tmp_path / "artifact")
    script = (out / "build_engine.sh").read_text()
    assert "--int8" in script and "--useDLACore=0" in script and "--allowGPUFallback" in script
    assert (out / "build_engine.sh").stat().st_mode & 0o111
    pred = Predictor(out, threads=1)
    assert pred.meta["target"] == "xavier_nx" and pred.meta["tensorrt"]["quantization"].startswith("explicit")
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    np.testing.assert_allclose(pred.run(x.numpy())[0], om.predict(x)[0], rtol=1e-5)


def test_implicit_quantization_writes_calib_cache(calib, tmp_path):
    om = optimize(
        build_model("stfpm", image_size=SIZE),
        "orin",
        8,
        calib=calib,
        calib_samples=8,
        pass_options={
            "calibrate": {"method": "max"},
            "lower": {"trt_quantization": "implicit", "cache_bins": 128},
        },
        workdir=tmp_path / "w",
        progress=False,
    )
    out = om.save(tmp_path / "artifact")
    meta_files = Predictor(out, threads=1).meta["files"]
    assert {"model.onnx", "calib.cache", "build_engine.sh", "report.json"} <= set(meta_files)
    header, scales = trt.read_calibration_cache(out / "calib.cache")
    assert header == "TRT-8601-EntropyCalibration2"  # orin: TensorRT 8.6
    assert "images" in scales and not any(k.startswith("/teacher/") for k in scales)
    assert "--calib=calib.cache" in (out / "build_engine.sh").read_text()
    proto = onnx.load(str(out / "model.onnx"))
    assert not any(n.op_type == "QuantizeLinear" for n in proto.graph.node)  # FP32 ONNX + cache


# ------------------------------------------------------------------------ torch-tensorrt bundle (issue 19)


def _run_script(folder, *args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(folder / "build_torch_trt.py"), *args], capture_output=True, text=True, env=env,
        timeout=300,
    )


def test_cli_export_torch_tensorrt_fp16_bundle_runs_up_to_the_import(tmp_path):
    import json

    from anomopt.checkpoint import save_checkpoint
    from anomopt.cli.main import main

    torch.manual_seed(0)
    model = build_model("stfpm", image_size=SIZE)
    ckpt = save_checkpoint(tmp_path / "m.ckpt", model, ["toy"], normalization=NORM)
    out = tmp_path / "art"
    argv = ["export", str(ckpt), "--target", "xavier_nx", "--bits", "16", "--variant", "torch_tensorrt",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pipeline"] == "xavier_nx-fp16-torch_tensorrt"
    assert {"model.onnx", "build_engine.sh", "model.pt2", "torch_trt.json", "build_torch_trt.py"} <= set(meta["files"])
    # the ExportedProgram computes what the ONNX artifact computes
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    ep_score, ep_map = torch.export.load(str(out / "model.pt2")).module()(x)
    ort_score, ort_map = Predictor(out).run(x.numpy())
    np.testing.assert_allclose(ep_score.detach().numpy(), ort_score, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ep_map.detach().numpy()[:, 0], ort_map, rtol=1e-4, atol=1e-5)
    dry = _run_script(out, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout.strip().splitlines()[-1])
    assert plan["precision"] == "fp16" and plan["input_shape"] == [1, 3, SIZE, SIZE]
    assert plan["enabled_precisions"] == ["torch.float16", "torch.float32"]
    with torch.no_grad():
        expected = torch.export.load(str(out / "model.pt2")).module()(
            torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        )[0]
    assert plan["cpu_score"] == pytest.approx([float(s) for s in expected], rel=1e-5)
    if importlib.util.find_spec("torch_tensorrt") is None:
        real = _run_script(out)
        assert real.returncode == 2 and "torch_tensorrt does not import here" in real.stderr


def test_torch_tensorrt_int8_needs_the_modelopt_quantizer(trt_graph, tmp_path):
    from anomopt.targets.torch_trt import write_torch_trt_bundle

    with pytest.raises(TargetError, match="needs the ModelOpt quantizer"):
        write_torch_trt_bundle(trt_graph, tmp_path, "int8")
    with pytest.raises(TargetError, match="Jetson target"):
        optimize(build_model("stfpm", image_size=SIZE), "cpu", 32, passes=[("lower", {"backend": "torch_tensorrt"})],
                 progress=False)


def test_torch_tensorrt_int8_bundle_restores_the_modelopt_model(calib, tmp_path):
    pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt is not installed")
    import json

    from anomopt.targets.torch_trt import restore_modelopt_model

    torch.manual_seed(0)
    om = optimize(build_model("rd", image_size=SIZE), "xavier_nx", 8, calib=calib, variant="torch_tensorrt",
                  pass_options={"modelopt_quantize": {"method": "max"}}, calib_samples=8, workdir=tmp_path,
                  progress=False)
    folder = Path(om.graph.state.artifact["dir"])
    assert {"modelopt_state.pth", "model.pt2", "build_torch_trt.py"} <= set(om.graph.state.artifact["files"])
    restored = restore_modelopt_model(folder)
    x = calib[:2]
    with torch.no_grad():
        want, got = om.graph.run(x)[0], restored(x)[0]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)  # same quantizers, same amax
    dry = _run_script(folder, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout.strip().splitlines()[-1])
    assert plan["precision"] == "int8" and "torch.int8" in plan["enabled_precisions"]
