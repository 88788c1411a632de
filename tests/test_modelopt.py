"""NVIDIA ModelOpt as the Jetson INT8 quantizer: pipeline resolution, placement, calibration, QDQ export, CLI."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from anomopt.api import optimize
from anomopt.errors import ConfigError, TargetError
from anomopt.models import build_model
from anomopt.normalization import fit_normalization
from anomopt.passes import load_pipeline, pipeline_path
from anomopt.targets import tensorrt as trt
from anomopt.targets.modelopt_quant import modelopt_quantizers, quantizer_variant

SIZE = 64
# finished-training thresholds (optimize/export refuse a checkpoint without them)
NORM = fit_normalization(["toy"] * 20, np.linspace(0.1, 0.9, 20))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_modelopt_pipelines_resolve_without_modelopt():
    for target in ("xavier_nx", "orin"):
        pipe = load_pipeline(pipeline_path(target, 8, "modelopt"))
        names = [p.name for p in pipe.passes]
        assert names == ["fold_batchnorm", "modelopt_quantize", "lower"]
        assert pipe.target == target and pipe.bits == 8


def test_quantizer_variant_mapping_and_conflicts():
    assert quantizer_variant("anomopt", None) is None
    assert quantizer_variant("anomopt", "qat") == "qat"
    assert quantizer_variant("modelopt", None) == "modelopt"
    with pytest.raises(ConfigError, match="both pick the pipeline"):
        quantizer_variant("modelopt", "qat")
    with pytest.raises(ConfigError, match="--pipeline"):
        quantizer_variant("modelopt", None, "mine.toml")
    with pytest.raises(ConfigError, match="no shipped pipeline 'cpu-int8-modelopt'"):
        pipeline_path("cpu", 8, quantizer_variant("modelopt", None))


# ------------------------------------------------------------------------------ needs nvidia-modelopt

needs_modelopt = pytest.mark.skipif(
    importlib.util.find_spec("modelopt") is None,
    reason="nvidia-modelopt is not installed (pip install 'anomopt[modelopt]')",
)



@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _optimize(model_name: str, calib: torch.Tensor, workdir, **opts):
    torch.manual_seed(0)
    return optimize(
        build_model(model_name, image_size=SIZE),
        "xavier_nx",
        8,
        calib=calib,
        variant="modelopt",
        pass_options={"modelopt_quantize": opts},
        calib_samples=8,
        workdir=workdir,
        progress=False,
    )


@pytest.fixture(scope="module")
def rd_max(calib, tmp_path_factory):
    return _optimize("rd", calib, tmp_path_factory.mktemp("rd"), method="max")


@needs_modelopt
def test_modelopt_artifact_is_symmetric_int8_qdq_on_student_convs_only(rd_max):
    record = rd_max.graph.state.artifact
    assert "ModelOpt" in record["quantization"]
    proto = onnx.load(record["model"])
    onnx.checker.check_model(proto, full_check=True)
    info = trt.qdq_summary(proto)
    student_convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith("/student/")]
    assert info["zero_point_types"] == ["int8"] and info["asymmetric"] == []
    assert info["quantize_linear"] == len(student_convs) > 0  # one activation Q per student conv input
    assert info["weight_dequantize_linear"] == info["per_channel_weights"] == len(student_convs)
    consumers = {i: n for n in proto.graph.node for i in n.input}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear":
            assert consumers[n.output[0]].name.startswith("/student/")
    assert rd_max.graph.state.quant.backend == "modelopt"
    # the teacher keeps no enabled ModelOpt quantizer
    assert all(name.startswith("student.") for name in modelopt_quantizers(rd_max.graph.model))


@needs_modelopt
def test_modelopt_artifact_in_onnxruntime_matches_the_torch_fake_quant(rd_max, calib):
    scores_torch, maps_torch = rd_max.graph.run(calib[:4])
    scores_ort, maps_ort = rd_max.predict(calib[:4])  # the lowered QDQ ONNX in ONNX Runtime
    np.testing.assert_allclose(scores_ort, scores_torch.numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(maps_ort, maps_torch.numpy()[:, 0], rtol=1e-3, atol=1e-4)


@needs_modelopt
def test_max_calibration_amax_is_the_observed_maximum(calib):
    """MaxCalibrator: each input quantizer's amax is the largest |x| its conv saw over the calibration images."""
    from anomopt.graph import capture
    from anomopt.passes.base import PassContext
    from anomopt.targets import get_target
    from anomopt.targets.modelopt_quant import ModeloptQuantize

    torch.manual_seed(0)
    model = build_model("rd", image_size=SIZE).eval()
    images = calib[:6]
    seen: dict[str, float] = {}
    hooks = []
    for name, m in model.named_modules():
        if name.startswith("student.") and isinstance(m, torch.nn.Conv2d):

            def hook(_m, args, _n=name):
                seen[_n] = max(seen.get(_n, 0.0), float(args[0].abs().max()))

            hooks.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    graph = capture(model, images[:1])
    ctx = PassContext(target=get_target("xavier_nx"), bits=8, calib_images=images)
    graph = ModeloptQuantize(method="max", batch_size=4).run(graph, ctx)
    quantizers = {
        n.rsplit(".", 1)[0]: q for n, q in modelopt_quantizers(graph.model).items() if n.endswith("input_quantizer")
    }
    assert set(quantizers) == set(seen) == set(graph.state.quantized_layers)
    for name, q in quantizers.items():
        assert float(q.amax) == pytest.approx(seen[name], rel=1e-5), name


@needs_modelopt
def test_entropy_calibration_clips_below_max(calib, tmp_path):
    om = _optimize("rd", calib, tmp_path, method="entropy", num_bins=256)
    assert om.graph.state.calibration.method == "entropy"
    amax = {n: float(q.amax) for n, q in modelopt_quantizers(om.graph.model).items() if n.endswith("input_quantizer")}
    ref = _optimize("rd", calib, tmp_path / "max", method="max")
    amax_max = {
        n: float(q.amax) for n, q in modelopt_quantizers(ref.graph.model).items() if n.endswith("input_quantizer")
    }
    assert amax.keys() == amax_max.keys()
    assert all(amax[n] <= amax_max[n] * (1 + 1e-4) for n in amax)
    assert any(amax[n] < amax_max[n] * 0.99 for n in amax)  # KL clips some ranges


@needs_modelopt
def test_modelopt_refuses_cpu_target_and_mse(calib):
    with pytest.raises(TargetError, match="not a TensorRT target"):
        optimize(build_model("rd", image_size=SIZE), "cpu", 8, calib=calib,
                 passes=["fold_batchnorm", "modelopt_quantize", "lower"], progress=False)
    with pytest.raises(ConfigError, match="mse"):
        optimize(build_model("rd", image_size=SIZE), "xavier_nx", 8, calib=calib,
                 passes=["fold_batchnorm", ("modelopt_quantize", {"method": "mse"}), "lower"], progress=False)


def _mvtec(root, n=10):
    folder = root / "toy" / "train" / "good"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


@needs_modelopt
def test_cli_export_quantizer_modelopt_writes_a_modelopt_artifact(tmp_path, capsys):
    from anomopt.checkpoint import save_checkpoint
    from anomopt.cli.main import main

    torch.manual_seed(0)
    model = build_model("rd", image_size=SIZE)
    ckpt = save_checkpoint(tmp_path / "model.ckpt", model, ["toy"], normalization=NORM)
    data = _mvtec(tmp_path / "data")
    out = tmp_path / "art"
    argv = ["export", str(ckpt), "--target", "xavier_nx", "--bits", "8", "--quantizer", "modelopt",
            "--calib-data", str(data), "--calib-method", "max", "--calib-samples", "8", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pipeline"] == "xavier_nx-int8-modelopt"
    assert meta["quant"]["backend"] == "modelopt" and meta["calibration"]["method"] == "max"
    assert (out / "build_engine.sh").is_file()
    assert trt.qdq_summary(onnx.load(str(out / "model.onnx")))["quantize_linear"] > 0
    # the flag and --variant both pick the pipeline: one line, exit 2
    assert main(argv[:-3] + ["--variant", "qat", "--out", str(tmp_path / "other")]) == 2
    assert "both pick the pipeline" in capsys.readouterr().err


@needs_modelopt
def test_benchmark_placement_helpers_on_a_modelopt_artifact(rd_max, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quantizers

    path = rd_max.graph.state.artifact["model"]
    placement = quantizers.qdq_placement(path)
    proto = onnx.load(path)
    student_convs = {n.name for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith("/student/")}
    assert set(placement["convs"]) == student_convs and placement["weight_dq"] == len(student_convs)
    assert all(s is not None and s > 0 for s in placement["convs"].values())
    same = quantizers.placement_diff(placement, placement)
    assert same["only_a"] == same["only_b"] == [] and same["scale_ratio_median"] == pytest.approx(1.0)
    halved = {**placement, "convs": {k: v / 2 for k, v in list(placement["convs"].items())[1:]}}
    diff = quantizers.placement_diff(placement, halved)
    assert diff["only_a"] == [next(iter(placement["convs"]))] and diff["scale_ratio_max"] == pytest.approx(0.5)


@needs_modelopt
def test_cli_optimize_quantizer_modelopt(tmp_path):
    from anomopt.checkpoint import save_checkpoint
    from anomopt.cli.main import main

    torch.manual_seed(0)
    model = build_model("rd", image_size=SIZE)
    ckpt = save_checkpoint(tmp_path / "model.ckpt", model, ["toy"], normalization=NORM)
    data = _mvtec(tmp_path / "data")
    out = tmp_path / "art"
    assert main(["optimize", str(ckpt), "--data", str(data), "--target", "orin", "--bits", "8", "--quantizer",
                 "modelopt", "--calib-samples", "8", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pipeline"] == "orin-int8-modelopt" and meta["target"] == "orin"
    assert meta["quant"]["backend"] == "modelopt" and meta["calibration"]["method"] == "max"  # the pipeline's
