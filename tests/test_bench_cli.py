"""``anomopt bench``: the FP32 baseline of an INT8 artifact (its Q/DQ folded away), the speed-up column, the
load warning, what ran in integer kernels, and the reasons printed when INT8 comes out slower."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from anomopt.api import optimize
from anomopt.bench import machine_load, quantization_profile, slow_int8_reasons, strip_qdq
from anomopt.cli.bench_cmd import format_result, summarize
from anomopt.cli.main import main
from anomopt.models import build_model
from anomopt.passes.drift import relative_l2
from conftest import ToyKD


@pytest.fixture(scope="module")
def toy_artifact(tmp_path_factory):
    images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    om = optimize(ToyKD().eval(), "cpu", 8, calib=images, progress=False)
    return om.save(tmp_path_factory.mktemp("bench") / "int8"), images


@pytest.fixture(scope="module")
def stfpm_int8(tmp_path_factory):
    """A real (untrained) STFPM at 64 px lowered to ORT INT8, student-only scope."""
    torch.manual_seed(0)
    calib = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    om = optimize(build_model("stfpm", image_size=64), "cpu", 8, calib=calib, calib_samples=8,
                  workdir=tmp_path_factory.mktemp("stfpm"), progress=False)
    return om.graph.state.artifact["model"]


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def test_strip_qdq_gives_the_same_function_in_float_kernels(toy_artifact, tmp_path):
    folder, images = toy_artifact
    fp32 = strip_qdq(folder / "model.onnx", tmp_path / "fp32.onnx")
    proto = onnx.load(str(fp32))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    onnx.checker.check_model(proto)
    # constant weights and biases, as in an FP32 export (ONNX Runtime's fast conv layouts need them)
    inits = {t.name for t in proto.graph.initializer}
    assert all(set(n.input[1:]) <= inits for n in proto.graph.node if n.op_type == "Conv")
    x = images[:4].numpy()
    (s8, m8), (s32, m32) = _run(folder / "model.onnx", x), _run(fp32, x)
    # the Q/DQ pairs became Clips to their ranges: only the rounding differs
    assert relative_l2(s32, s8) < 1e-2 and relative_l2(m32, m8) < 1e-2
    # a model without Q/DQ is copied as it is
    assert strip_qdq(fp32, tmp_path / "again.onnx").read_bytes() == fp32.read_bytes()


def test_machine_load_warns_when_fewer_idle_cores_than_threads(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    monkeypatch.setattr("os.getloadavg", lambda: (3.2, 1.0, 1.0))
    busy = machine_load(2)
    assert busy["busy"] and "3.20 on 4 logical cores" in busy["warning"] and "unreliable" in busy["warning"]
    monkeypatch.setattr("os.getloadavg", lambda: (0.4, 1.0, 1.0))
    assert machine_load(2) == {"load1": 0.4, "logical_cores": 4, "threads": 2, "busy": False, "warning": None}


def test_real_stfpm_profile_shows_the_fp32_teacher_and_depthwise_convs(stfpm_int8):
    profile = quantization_profile(stfpm_int8)
    assert profile["by_role"]["student"]["integer"] > 0 and profile["by_role"]["teacher"]["integer"] == 0
    # STFPM: same-shape teacher and student, so about half the multiply-adds stay FP32
    assert 0.3 < profile["integer_mac_share"] < 0.7
    assert profile["depthwise_quantized"] > 0  # EfficientNet-Lite's depthwise convs
    reasons = slow_int8_reasons(profile, {"busy": False})
    assert any("the FP32 teacher" in r and "cap the speed-up at" in r for r in reasons)
    assert any("depthwise" in r for r in reasons)
    # the report's sentence on why student-only INT8 is only so much faster
    from anomopt.demo import speed_note

    note = speed_note(10.0, 9.0, stfpm_int8, 64)
    teacher = round(100 * profile["mac_share"]["teacher"])
    assert note.startswith("INT8 is 1.11x as fast as FP32") and f"the FP32 teacher does {teacher}%" in note


def test_summary_has_speedup_baseline_and_slow_int8_notes():
    profile = {"integer_convs": 10, "float_convs": 12, "integer_mac_share": 0.5,
               "by_role": {"student": {"integer": 10, "float": 1}, "teacher": {"integer": 0, "float": 11}},
               "mac_share": {"teacher": 0.5, "student": 0.5, "head": 0.0}, "quantized_convs": 10,
               "depthwise_quantized": 0}
    rows = [
        {"name": "FP32 ORT", "precision": "fp32", "p50_ms": 10.0, "baseline": True},
        {"name": "INT8 ORT", "precision": "int8", "p50_ms": 20.0, "profile": profile},
    ]
    load = {"load1": 5.0, "busy": True, "warning": "warning: busy, may be unreliable"}
    cpu = {"model": "cpu", "logical_cores": 2}
    result = summarize(rows, load, 128, 2, 8, cpu)
    assert [r["speedup"] for r in result["rows"]] == [1.0, 0.5]
    text = format_result(result)
    assert "FP32 ORT (baseline)" in text and "0.50x" in text and "warning: busy" in text
    assert "student 10/11, teacher 0/11" in text or "teacher 0/11, student 10/11" in text
    assert "INT8 ORT is slower than FP32 (0.50x)" in text and "1 convs in the quantized roles" in text
    assert "128x128 px" in text


def test_cli_bench_artifact_has_baseline_row_and_kernels(toy_artifact, capsys):
    folder, _ = toy_artifact
    assert main(["bench", str(folder), "--iters", "3", "--warmup", "1", "--batch", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in result["rows"]]
    assert len(names) == 2 and "Q/DQ folded away" in names[0] and result["rows"][0]["baseline"]
    assert result["rows"][0]["speedup"] == 1.0 and np.isfinite(result["rows"][1]["speedup"])
    assert set(result["rows"][1]["profile"]["by_role"]) == {"teacher", "student"}
    assert result["machine"]["image_size"] == 32 and result["machine"]["threads"] == 2
    assert "load1" in result["load"]


def test_cli_bench_refuses_bad_numbers_and_paths(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing"), "--iters", "0"]) == 2
    assert "--iters" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing")]) == 2
    assert "neither an artifact folder nor a checkpoint" in capsys.readouterr().err


def test_cli_bench_checkpoint_lowers_once_and_times_its_fp32_twin(tmp_path, monkeypatch, capsys):
    """A checkpoint is lowered once: the FP32 row times the FP32 ONNX the INT8 lowering quantized."""
    import onnx as onnx_

    import anomopt.api
    import anomopt.bench
    import anomopt.targets.lower as lower_mod
    from anomopt.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.ckpt", build_model("stfpm", image_size=64, pretrained=False), ["toy"])
    lowered, timed = [], []
    real_lower = lower_mod.lower_graph

    def counting_lower(graph, target, bits, *args, **kwargs):
        lowered.append((target.name, bits))
        return real_lower(graph, target, bits, *args, **kwargs)

    def fake_timing(spec, timeout=1800.0):  # the timing worker is not under test here
        ops = {n.op_type for n in onnx_.load(spec["path"]).graph.node} if spec["backend"] == "ort" else set()
        timed.append((Path(spec["path"]), ops))
        return {"p50_ms": 2.0 if "QuantizeLinear" in ops else 3.0, "p90_ms": 3.0, "p99_ms": 3.0}

    monkeypatch.setattr(lower_mod, "lower_graph", counting_lower)
    monkeypatch.setattr(anomopt.api, "lower_graph", counting_lower)  # optimize() lowering when a pipeline did not
    monkeypatch.setattr(anomopt.bench, "run_isolated", fake_timing)
    assert main(["bench", str(ckpt), "--iters", "2", "--warmup", "0", "--batch", "2", "--json"]) == 0
    assert lowered == [("cpu", 8)]
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["name"] for r in rows] == ["FP32 torch eager", "FP32 ONNX Runtime",
                                         "INT8 ONNX Runtime (noise calibration)"]
    (fp32, fp32_ops), (int8, int8_ops) = timed[1:]
    assert fp32.parent == int8.parent  # one lowering folder
    assert "QuantizeLinear" not in fp32_ops and "QuantizeLinear" in int8_ops and "Conv" in fp32_ops
    assert rows[1]["baseline"] and rows[2]["speedup"] == 1.5 and rows[2]["profile"]["quantized_convs"] > 0


def test_isolated_worker_honours_spin_and_time_cap(toy_artifact, monkeypatch):
    """The worker process builds its ORT session with the spin setting it was given (it used to drop
    ``spin`` and ``max_seconds``, so every ORT row of the latency benchmark busy-waited)."""
    import anomopt.bench as bench

    seen = {}
    real = bench.measure_ort

    def spy(path, **kwargs):
        seen.update(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(bench, "measure_ort", spy)
    model = str(Path(toy_artifact[0]) / "model.onnx")
    record = bench._worker({"backend": "ort", "path": model, "image_size": 32, "threads": 1, "warmup": 1,
                            "iters": 3, "batch": 2, "batch_iters": 1, "spin": False, "max_seconds": 5.0})
    assert record["spin"] is False and seen["max_seconds"] == 5.0
