"""The CPU cost model (data, lookup, fallback, measurement) and the latency-aware precision pass."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from anomopt.cost import ConvShape, CostModel, load_cost_model
from anomopt.cost.measure import conv_models, conv_shapes_of_onnx, measure_cost_model
from anomopt.cost.plan import plan_precision
from anomopt.errors import ConfigError
from anomopt.graph import capture
from anomopt.passes import Calibrate, InsertFakeQuant, PassContext, PassManager
from anomopt.passes.latency_precision import LatencyAwarePrecision
from conftest import ToyKD

PW = ConvShape(16, 32, 1, 1, 1, 8, 8)
DW = ConvShape(32, 32, 3, 1, 32, 8, 8)


def _table(convs: dict[ConvShape, tuple[float, float]], q: float = 0.0, dq: float = 0.0) -> CostModel:
    return CostModel({s: {"fp32": f, "int8": i} for s, (f, i) in convs.items()}, q, dq, {"cpu": "synthetic"})


def test_shipped_cost_model_records_where_it_was_measured():
    model = load_cost_model()
    assert {"cpu", "threads", "onnxruntime", "date", "fallback"} <= set(model.meta)
    assert len(model.convs) > 20
    stem = ConvShape(3, 32, 3, 2, 1, 256, 256)  # EfficientNet-Lite0's stem at 256 px
    assert model.conv_us(stem, "fp32").rule == "exact"
    assert model.quantize_ns_per_elem > 0 and model.dequantize_ns_per_elem > 0


def test_lookup_exact_nearest_and_mac_rate():
    model = _table({PW: (100.0, 40.0), DW: (10.0, 20.0)})
    assert model.conv_us(PW, "int8").us == 40.0 and model.conv_us(PW, "int8").rule == "exact"
    bigger = ConvShape(16, 32, 1, 1, 1, 16, 16)  # same kind, 4x the MACs
    got = model.conv_us(bigger, "fp32")
    assert got.us == pytest.approx(400.0) and got.rule.startswith("nearest 16-32-1-1-1-8x8")
    dw_big = ConvShape(64, 64, 3, 1, 64, 8, 8)  # a depthwise shape scales from the depthwise entry
    assert model.conv_us(dw_big, "int8").us == pytest.approx(40.0)
    odd = ConvShape(8, 8, 7, 1, 1, 8, 8)  # no 7x7 measured: MACs / median rate
    rates = sorted(s.macs / model.convs[s]["fp32"] for s in model.convs)
    assert model.conv_us(odd, "fp32").us == pytest.approx(odd.macs / rates[len(rates) // 2])
    assert model.conv_us(odd, "fp32").rule.startswith("mac-rate")
    with pytest.raises(ConfigError, match="precision"):
        model.conv_us(PW, "fp16")


def test_round_trip_and_bad_files(tmp_path):
    model = _table({PW: (100.0, 40.0)}, q=0.5, dq=0.25)
    path = tmp_path / "cm.json"
    model.save(path)
    back = load_cost_model(path)
    assert back.convs == model.convs and back.quantize_us(1000) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="no such file"):
        load_cost_model(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"format": 1, "convs": {"1-2": {"fp32": 1, "int8": 1}}}))
    with pytest.raises(ConfigError, match="bad.json"):
        load_cost_model(tmp_path / "bad.json")
    (tmp_path / "neg.json").write_text(json.dumps({**model.to_dict(), "convs": {PW.key(): {"fp32": 0, "int8": 1}}}))
    with pytest.raises(ConfigError, match="positive"):
        load_cost_model(tmp_path / "neg.json")


def test_int8_probe_runs_as_one_integer_conv_and_matches_fp32(tmp_path):
    fp32, int8 = conv_models(DW)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(int8, so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 1 and "Conv" not in ops
    assert conv_shapes_of_onnx(onnx.load_from_string(fp32)) == {"conv": DW}


def test_measure_tiny_shapes():
    model = measure_cost_model([PW, DW], threads=1, budget_s=0.01, rounds=1)
    assert set(model.convs) == {PW, DW}
    assert all(v["fp32"] > 0 and v["int8"] > 0 for v in model.convs.values())
    assert model.meta["threads"] == 1 and model.meta["onnxruntime"] == ort.__version__


def _chain() -> tuple[onnx.ModelProto, dict[str, ConvShape]]:
    """x -> pw (16->32) -> dw (32) -> pw2 (32->16) -> out (16->16) -> y, all student nodes, 8x8."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    specs = [("/student/pw", 16, 32, 1, 1), ("/student/dw", 32, 32, 3, 32), ("/student/pw2", 32, 16, 1, 1),
             ("/student/out", 16, 16, 1, 1)]
    prev = "x"
    for name, cin, cout, k, g in specs:
        w = numpy_helper.from_array(rng.standard_normal((cout, cin // g, k, k)).astype(np.float32), f"{name}.w")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [prev, w.name], [f"{name}.out"], name=name, group=g,
                                      pads=[k // 2] * 4))
        prev = f"{name}.out"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 16, 8, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    shapes = conv_shapes_of_onnx(proto)
    return proto, shapes


def _cost(dw_int8: float, q: float = 0.0, dq: float = 0.0) -> CostModel:
    pw2, out = ConvShape(32, 16, 1, 1, 1, 8, 8), ConvShape(16, 16, 1, 1, 1, 8, 8)
    return _table({PW: (100.0, 40.0), DW: (10.0, dw_int8), pw2: (100.0, 40.0), out: (50.0, 5.0)}, q, dq)


def test_plan_keeps_depthwise_fp32_where_int8_loses():
    proto, shapes = _chain()
    # free conversions; INT8 depthwise 90 us slower: worth more than the pointwise before it gains (60 us),
    # which runs as a float conv once only the float depthwise reads it
    plan = plan_precision(proto, shapes, list(shapes), _cost(dw_int8=100.0))
    assert plan.int8 == {"/student/pw2", "/student/out"}
    by_node = {r["node"]: r for r in plan.layers}
    assert by_node["/student/dw"]["choice"] == "fp32" and by_node["/student/pw"]["choice"] == "fp32"
    assert by_node["/student/pw2"]["kernel"] == "integer"
    # the last conv feeds the float output: it runs as a float conv on its quantized input (at FP32 cost)
    assert by_node["/student/out"]["kernel"] == "float" and "float conv" in by_node["/student/out"]["reason"]
    assert plan.estimate_us == pytest.approx(100 + 10 + 40 + 50)
    assert plan.all_int8_us == pytest.approx(40 + 100 + 40 + 50)
    # a smaller depthwise loss does not pay for the pointwise's: everything stays INT8
    assert plan_precision(proto, shapes, list(shapes), _cost(dw_int8=30.0)).int8 == set(shapes)


def test_plan_counts_the_conversions_a_choice_adds():
    proto, shapes = _chain()
    # as above, but each conversion costs 10 ns per element: dw FP32 would add a DQ + Q of 2048 elements
    plan = plan_precision(proto, shapes, list(shapes), _cost(dw_int8=100.0, q=10.0, dq=10.0))
    assert plan.int8 == set(shapes)
    # conversions dearer than any INT8 gain: everything stays FP32
    assert plan_precision(proto, shapes, list(shapes), _cost(dw_int8=30.0, q=100.0, dq=100.0)).int8 == set()


def test_latency_aware_pass_on_a_synthetic_table(tmp_path):
    images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = ToyKD(seed=3).eval()
    graph = capture(model, images[:1])
    ctx = PassContext(calib_images=images[:16], held_images=images[16:])
    graph, _ = PassManager([InsertFakeQuant(scope="all"), Calibrate(method="max")]).run(graph, ctx)
    stem, second = ConvShape(3, 8, 3, 2, 1, 32, 32), ConvShape(8, 16, 3, 2, 1, 16, 16)
    stems = {"teacher.block1.0", "student.block1.0"}
    lasts = {"teacher.block2.0", "student.block2.0"}
    # block2 is the last conv of each role: only the float distance reads it, so it runs as a float conv
    # whatever the table says; block1 is an integer conv when block2's input is quantized
    path = tmp_path / "fast.json"
    _table({stem: (50.0, 10.0), second: (100.0, 10.0)}).save(path)
    ctx.notes.clear()
    out = LatencyAwarePrecision(cost_model=str(path), max_map_drift=10.0, max_score_drift=10.0).run(graph, ctx)
    assert out.state.kept_fp == []
    kernels = {r["layer"]: r["kernel"] for r in ctx.notes["layers"]}
    assert kernels == {**dict.fromkeys(stems, "integer"), **dict.fromkeys(lasts, "float")}
    # INT8 loses on the stem: nothing is left that would run as an integer conv, so all stay FP32
    path = tmp_path / "slow.json"
    _table({stem: (10.0, 50.0), second: (100.0, 10.0)}).save(path)
    graph2 = capture(ToyKD(seed=3).eval(), images[:1])
    graph2, _ = PassManager([InsertFakeQuant(scope="all"), Calibrate(method="max")]).run(graph2, ctx)
    ctx.notes.clear()
    out = LatencyAwarePrecision(cost_model=str(path), max_map_drift=10.0, max_score_drift=10.0).run(graph2, ctx)
    assert set(out.state.kept_fp) == stems | lasts
    assert all(not out.module(n).input_quantizer.enabled for n in stems | lasts)
    notes = ctx.notes
    assert {r["layer"]: r["choice"] for r in notes["layers"]} == dict.fromkeys(stems | lasts, "fp32")
    assert notes["fp32_for_accuracy"] == []
    with pytest.raises(ConfigError, match="no option 'cost_models'"):
        LatencyAwarePrecision(cost_models="x")


def test_latency_aware_pass_plans_last_convs_as_integer_without_float_consumers(tmp_path):
    """With ``float_consumers = false`` (as the lowering will be told) the head reads quantized outputs, so the
    last conv of each role is planned, and reported, as the integer conv ONNX Runtime will run."""
    images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    graph = capture(ToyKD(seed=3).eval(), images[:1])
    ctx = PassContext(calib_images=images[:16], held_images=images[16:])
    graph, _ = PassManager([InsertFakeQuant(scope="all"), Calibrate(method="max")]).run(graph, ctx)
    stem, second = ConvShape(3, 8, 3, 2, 1, 32, 32), ConvShape(8, 16, 3, 2, 1, 16, 16)
    path = tmp_path / "fast.json"
    _table({stem: (50.0, 10.0), second: (100.0, 10.0)}).save(path)
    ctx.notes.clear()
    LatencyAwarePrecision(cost_model=str(path), float_consumers=False, accuracy=False).run(graph, ctx)
    assert {r["kernel"] for r in ctx.notes["layers"]} == {"integer"}
    assert ctx.notes["estimate_us"]["chosen"] < 2 * (100.0 + 10.0)  # every conv at its INT8 time + conversions


def test_shipped_fast_pipeline_runs_every_conv_as_an_integer_conv(tmp_path):
    """``cpu-int8-fast`` on a real (untrained) STFPM: ONNX Runtime's optimized graph has no float conv left,
    the last conv of each tower included, and the plan's notes say the same."""
    from anomopt.api import optimize
    from anomopt.models import build_model

    torch.manual_seed(0)
    calib = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    om = optimize(build_model("stfpm", image_size=64), "cpu", 8, calib=calib, calib_samples=8, variant="fast",
                  workdir=tmp_path, progress=False)
    kernels = om.graph.state.artifact["notes"]["integer_kernels"]
    assert kernels["float_convs"] == 0 and kernels["integer_convs"] > 0
    notes = next(r.notes for r in om.passes_report.records if r.name == "latency_aware_precision")
    planned = {r["kernel"] for r in notes["layers"] if r["choice"] == "int8"}
    assert planned == {"integer"}


def test_latency_aware_pass_restores_layers_for_accuracy(tmp_path):
    """Under a drift tolerance no INT8 layer meets, the layers the cost model kept in INT8 go back to FP32 too,
    with the same restore as auto_mixed_precision, and the notes hold only this pass's own keys."""
    images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "fast.json"
    stem, second = ConvShape(3, 8, 3, 2, 1, 32, 32), ConvShape(8, 16, 3, 2, 1, 16, 16)
    _table({stem: (50.0, 10.0), second: (100.0, 10.0)}).save(path)

    def run(**options):
        graph = capture(ToyKD(seed=3).eval(), images[:1])
        ctx = PassContext(calib_images=images[:16], held_images=images[16:])
        graph, _ = PassManager([InsertFakeQuant(scope="all"), Calibrate(method="max")]).run(graph, ctx)
        ctx.notes.clear()
        return LatencyAwarePrecision(cost_model=str(path), **options).run(graph, ctx), ctx.notes

    fast, notes = run(accuracy=False)
    assert "fp32_for_accuracy" not in notes and fast.state.kept_fp == sorted(notes["fp32_for_latency"])
    out, notes = run(max_map_drift=1e-12, max_fp_fraction=1.0)
    restored = notes["fp32_for_accuracy"]
    assert restored and not set(restored) & set(notes["fp32_for_latency"])
    assert out.state.kept_fp == sorted(set(restored) | set(notes["fp32_for_latency"]))
    assert all(not out.module(n).input_quantizer.enabled for n in out.state.kept_fp)
    assert notes["drift_vs_fp"]["map"] == 0.0  # every INT8 layer restored: the unquantized outputs exactly
    assert "kept_fp" not in notes  # auto_mixed_precision's own note is not mixed into this pass's


def test_cpu_int8_fast_pipeline_is_shipped():
    import anomopt.api  # noqa: F401  (registers the 'lower' pass)
    from anomopt.passes import load_pipeline
    from anomopt.targets import pipeline_path

    pipeline = load_pipeline(pipeline_path("cpu", 8, "fast"))
    names = [p.name for p in pipeline.passes]
    assert names == ["fold_batchnorm", "insert_fake_quant", "calibrate", "latency_aware_precision", "lower"]
    assert pipeline.passes[1].options.scope == "all"


def test_in_graph_profile_times_every_conv_of_a_tiny_model(tmp_path):
    from anomopt.cost.ingraph import profile_in_graph
    from anomopt.targets.onnx_export import export_onnx

    exp = export_onnx(ToyKD(seed=1).eval(), tmp_path / "toy.onnx")
    shapes = set(conv_shapes_of_onnx(onnx.load(str(exp.path))).values())
    got = profile_in_graph(exp.path, 32, threads=1, runs=2, rounds=1)
    assert shapes == {ConvShape(3, 8, 3, 2, 1, 32, 32), ConvShape(8, 16, 3, 2, 1, 16, 16)}
    # only convs ORT ran as QLinearConv have an in-graph INT8 time; the rest is left to the one-conv probes
    assert set(got) <= shapes and all(v["fp32"] > 0 and v["int8"] > 0 for v in got.values())
    model = measure_cost_model(shapes, threads=1, budget_s=0.01, rounds=1, in_graph=got)
    assert set(model.convs) == shapes and model.meta["in_graph_shapes"] == len(got)
    assert all(model.convs[s] == got[s] for s in got)


def test_in_graph_kernel_names_map_back_to_their_conv():
    from anomopt.cost.ingraph import _conv_of

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="/student/b/conv/Conv"),
             helper.make_node("Clip", ["c"], ["/student/b/act/Clip_output_0"], name="/student/b/act/Clip")]
    y = helper.make_tensor_value_info("/student/b/act/Clip_output_0", TensorProto.FLOAT, [1, 4, 8, 8])
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]))
    lookup = _conv_of(proto)
    assert lookup("/student/b/act/Clip_output_0_nchwc") == "/student/b/conv/Conv"  # FP32 NCHWc conv
    assert lookup("/student/b/conv/Conv_token_17") == "/student/b/conv/Conv"  # QLinearConv
    assert lookup("/student/b/conv/Conv") == "/student/b/conv/Conv"  # FusedConv
    assert lookup("/head/Resize") is None


def test_profile_refuses_an_existing_out_file_before_measuring(tmp_path, capsys):
    from anomopt.cli.main import main as cli

    out = tmp_path / "mine.json"
    out.write_text("{}")
    assert cli(["profile", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert out.read_text() == "{}"
    assert cli(["profile", "--out", str(tmp_path)]) == 2  # a folder is not a file
    assert "is a folder" in capsys.readouterr().err


def test_fast_pipeline_refuses_float_consumers_that_disagree_with_lower(tmp_path):
    """The plan prices the kernels `lower` will produce: a pipeline setting `float_consumers` differently in
    the two passes fails before anything runs, naming both."""
    import anomopt.api  # noqa: F401  (registers the 'lower' pass)
    from anomopt.errors import PipelineError
    from anomopt.passes import load_pipeline
    from anomopt.targets import pipeline_path

    text = pipeline_path("cpu", 8, "fast").read_text()
    assert text.count("float_consumers = false") == 2
    from anomopt.api import optimize
    from anomopt.passes.manager import PassManager

    shipped = load_pipeline(pipeline_path("cpu", 8, "fast")).passes
    for p in shipped:  # the shipped file agrees with itself
        p.check_pipeline(shipped)
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("float_consumers = false", "float_consumers = true", 1))
    with pytest.raises(PipelineError, match="float_consumers.*lower float_consumers"):
        PassManager(load_pipeline(bad).passes).check({"captured"})
    with pytest.raises(PipelineError, match="set both the same"):  # optimize() refuses it before any pass runs
        optimize(ToyKD().eval(), "cpu", 8, calib=torch.rand(8, 3, 32, 32), passes=bad, workdir=tmp_path / "w",
                 progress=False)
