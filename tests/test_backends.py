"""The target table drives lowering: a new runtime is one backend class plus one table row; every row
field is read; one precision type; saving writes what optimize() lowered and nothing more."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from anomopt.api import optimize
from anomopt.errors import ConfigError, TargetError
from anomopt.precision import PRECISION_NAMES, Precision
from anomopt.runtime import Predictor
from anomopt.runtime.predictor import PRECISIONS as RUNTIME_PRECISIONS
from anomopt.targets import TARGETS, TargetSpec, get_target, pipeline_path
from anomopt.targets.backends import (
    MODEL_FILE,
    Backend,
    Lowered,
    LoweringJob,
    builtin_runtimes,
    get_backend,
    register_backend,
    unregister_backend,
)
from anomopt.targets.onnx_export import export_onnx
from conftest import ToyKD

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
#: the op types of the toy model's FP32 export (measured); the check must pass with exactly these
TOY_OPS = ("Add", "Clip", "Concat", "Conv", "Div", "Expand", "Flatten", "Pow", "ReduceL2", "ReduceMax", "ReduceSum",
           "Relu", "Resize", "Shape", "Slice", "Sub")


class ToyBackend(Backend):
    """A third runtime: the FP32 ONNX plus a file of its own and a meta.json entry of its own."""

    runtime = "toyrt"
    description = "toy runtime for the test"
    options = {"greeting": "hello"}

    def lower(self, job: LoweringJob) -> Lowered:
        export_onnx(job.graph, job.model_path, opset=job.opset)
        (job.out / "toy.txt").write_text(job.options["greeting"])
        (job.work / "scratch.bin").write_bytes(b"x")  # the work folder is removed after lowering
        return Lowered(
            files=[MODEL_FILE, "toy.txt"],
            runner="onnxruntime CPU as a stand-in for the toy runtime",
            notes={"toy": True},
            record={"toy_greeting": job.options["greeting"]},
            meta={"toyrt": {"greeting": job.options["greeting"], "precision": job.precision.value}},
        )


@pytest.fixture
def toy_target(monkeypatch):
    """The toy backend registered and one row naming it; both gone after the test."""
    register_backend(ToyBackend)
    row = TargetSpec(
        name="toybox",
        description="a toy target",
        runtime="toyrt",
        precisions=(Precision.FP32,),
        symmetric_activations=False,
        supported_ops=TOY_OPS,
        pipelines={Precision.FP32: "cpu-fp32"},
    )
    monkeypatch.setitem(TARGETS, "toybox", row)
    yield row
    unregister_backend("toyrt")


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def test_a_new_runtime_is_one_backend_and_one_row(toy_target, tmp_path):
    om = optimize(ToyKD(SIZE), "toybox", 32, calib=_images(8), passes=["fold_batchnorm", ("lower", {"greeting": "hi"})],
                  progress=False)
    art = om.save(tmp_path / "art")
    meta = json.loads((art / "meta.json").read_text())
    assert meta["target"] == "toybox" and meta["runtime"] == "toyrt" and meta["precision"] == "fp32"
    assert meta["toyrt"] == {"greeting": "hi", "precision": "fp32"}
    assert "tensorrt" not in meta
    assert sorted(meta["files"]) == ["model.onnx", "report.json", "toy.txt"]
    assert (art / "toy.txt").read_text() == "hi"
    report = json.loads((art / "report.json").read_text())
    assert report["artifact"]["toy_greeting"] == "hi" and report["artifact"]["notes"] == {"toy": True}
    assert report["artifact"]["runner"] == "onnxruntime CPU as a stand-in for the toy runtime"
    # the artifact is what the pipeline lowered: the torch-free runtime scores as the optimized model does
    pixels = (_images(2).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    got = Predictor(art, threads=1).run(pixels)[0]
    ref, _ = om.predict(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_a_row_pipelines_name_its_shipped_pipeline(toy_target):
    assert pipeline_path("toybox", 32).name == "cpu-fp32.toml"
    assert pipeline_path(get_target("cpu"), 8, "qat").name == "cpu-int8-qat.toml"
    assert pipeline_path("orin", "fp16").name == "orin-fp16.toml"
    with pytest.raises(TargetError, match="target 'toybox' does not run INT8; it runs FP32"):
        pipeline_path("toybox", 8)
    with pytest.raises(ConfigError, match="no shipped pipeline 'cpu-fp32-nope'"):
        pipeline_path("toybox", 32, "nope")


def test_supported_ops_are_checked_against_the_lowered_model(toy_target, monkeypatch):
    monkeypatch.setitem(TARGETS, "toybox", replace(toy_target, supported_ops=tuple(o for o in TOY_OPS if o != "Conv")))
    with pytest.raises(TargetError, match=r"model.onnx: target 'toybox' \(toyrt\) does not list the ONNX op\(s\) Conv "
                                          r"in its supported_ops"):
        optimize(ToyKD(SIZE), "toybox", 32, calib=_images(8), passes=["lower"], progress=False)


def test_an_option_the_backend_does_not_read_is_refused(toy_target):
    with pytest.raises(ConfigError, match="option 'trt_quantization' does not apply to target 'toybox'.*greeting"):
        optimize(ToyKD(SIZE), "toybox", 32, calib=_images(8), passes=[("lower", {"trt_quantization": "implicit"})],
                 progress=False)
    with pytest.raises(ConfigError, match="option 'dla_core' does not apply to target 'cpu'"):
        optimize(ToyKD(SIZE), "cpu", 32, calib=_images(8), passes=[("lower", {"dla_core": 0})], progress=False)


def test_dla_core_is_checked_against_the_row(tmp_path):
    with pytest.raises(TargetError, match="dla_core 2: target 'orin' has DLA cores 0-1"):
        optimize(ToyKD(SIZE), "orin", 16, calib=_images(8), passes=[("lower", {"dla_core": 2})], progress=False)
    om = optimize(ToyKD(SIZE), "orin", 16, calib=_images(8), passes=[("lower", {"dla_core": 1})], progress=False)
    meta = json.loads((om.save(tmp_path / "a") / "meta.json").read_text())
    assert "--useDLACore=1" in meta["tensorrt"]["trtexec"] and meta["tensorrt"]["version"] == "8.6"


def test_save_writes_only_what_optimize_lowered(tmp_path):
    om = optimize(ToyKD(SIZE), "cpu", 32, calib=_images(8), passes=["fold_batchnorm"], progress=False)
    with pytest.raises(TargetError, match="nothing to save: the 'custom' pipeline did not lower the model.*'lower'"):
        om.save(tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_backends_are_found_by_runtime_name():
    assert builtin_runtimes() == ["onnxruntime", "tensorrt"]
    assert {get_backend(t.runtime).runtime for t in TARGETS.values()} == {"onnxruntime", "tensorrt"}
    with pytest.raises(TargetError, match="no backend for runtime 'nope'; known runtimes: onnxruntime, tensorrt"):
        get_backend("nope")


def test_one_precision_type():
    assert PRECISION_NAMES == RUNTIME_PRECISIONS == ("int8", "fp16", "fp32")
    assert [Precision.parse(v) for v in (8, "16", "fp32", "INT8")] == [
        Precision.INT8, Precision.FP16, Precision.FP32, Precision.INT8]
    assert Precision.from_bits(16).bits == 16 and str(Precision.INT8) == "int8"
    with pytest.raises(ConfigError, match="bits must be 8, 16 or 32, not 4"):
        Precision.from_bits(4)
    with pytest.raises(TargetError, match="target 'cpu' does not run FP16; it runs FP32, INT8"):
        get_target("cpu").check_bits(16)


def test_shipped_targets_lower_within_their_supported_ops(tmp_path):
    """The real rows' op lists hold what the exporter writes for a model (FP32 and INT8 QDQ)."""
    for target, bits in (("cpu", 8), ("orin", 8)):
        om = optimize(ToyKD(SIZE), target, bits, calib=_images(8), calib_samples=8, progress=False)
        lowered = onnx.load(om.graph.state.artifact["model"])
        assert not get_target(target).unsupported_ops({n.op_type for n in lowered.graph.node})


def test_the_lower_pass_documents_the_builtin_backends_options():
    """``lower``'s declared options are the common ones plus each built-in backend's, with its defaults."""
    import dataclasses

    from anomopt.targets.lower import Lower

    declared = {f.name: f.default for f in dataclasses.fields(Lower.Options)}
    backends = [get_backend(r) for r in builtin_runtimes()]
    from_backends = {k: v for b in backends for k, v in b.options.items()}
    assert set(declared) == set(from_backends) | set(Backend.COMMON_OPTIONS)
    for key, default in {**from_backends, **Backend.COMMON_OPTIONS}.items():
        assert declared[key] == default, key


def test_a_backend_default_is_the_lower_pass_default(monkeypatch):
    """``Lower.Options`` is made from the backends' declarations: a default changed in a backend is the
    ``lower`` pass's default, still typed; two backends declaring one option differently are refused."""
    import dataclasses

    from anomopt.passes.options import option
    from anomopt.targets.backends.tensorrt import TensorRTBackend
    from anomopt.targets.lower import Lower, lower_options

    class BiggerWorkspace(TensorRTBackend):
        @dataclasses.dataclass
        class Options(TensorRTBackend.Options):
            workspace_mib: int = option(2048, "trtexec workspace in MiB")

    class Clashing(TensorRTBackend):
        runtime = "clashrt"

        @dataclasses.dataclass
        class Options:
            cache_bins: str = option("many", "not the TensorRT meaning")

    assert BiggerWorkspace.options["workspace_mib"] == 2048
    try:
        register_backend(BiggerWorkspace)
        lower_options.cache_clear()
        assert Lower().options.workspace_mib == 2048
        assert Lower.option_docs()["workspace_mib"] == ("an integer", 2048, "trtexec workspace in MiB")
        with pytest.raises(ConfigError, match="option 'workspace_mib' must be an integer"):
            Lower(workspace_mib="big")
        register_backend(Clashing)
        monkeypatch.setattr("anomopt.targets.lower.builtin_runtimes", lambda: ["clashrt", "tensorrt"])
        lower_options.cache_clear()
        with pytest.raises(TargetError, match="'cache_bins' is declared by clashrt and tensorrt"):
            Lower()
    finally:
        unregister_backend("clashrt")
        register_backend(TensorRTBackend)
        monkeypatch.undo()
        lower_options.cache_clear()
    assert Lower().options.workspace_mib == 1024
