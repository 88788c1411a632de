"""Measure a :class:`~anomopt.cost.model.CostModel` on this CPU with ONNX Runtime.

Per conv shape, two one-node models, timed in alternation:

- FP32: ``x (float) -> Conv -> y (float)``;
- INT8: ``x (uint8) -> DequantizeLinear -> Conv(DequantizeLinear(int8 per-channel weights),
  DequantizeLinear(int32 bias)) -> QuantizeLinear -> y (uint8)``, which ONNX Runtime fuses into one
  ``QLinearConv`` (U8S8), as it does for the convs of our QDQ lowering. Inputs and outputs stay uint8,
  so the time is the integer conv's, not the conversions'.

Q/DQ per element: ``QuantizeLinear`` float -> uint8 and ``DequantizeLinear`` uint8 -> float on a
(1, 32, 64, 64) tensor. Every time is the median of repeated ``session.run`` calls minus the run overhead
of a one-``Identity`` model (so a layer's cost is what it adds inside a larger graph). Thread pools do
not spin (``allow_spinning=0``), as in ``benchmarks/latency.py``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from anomopt.cost.model import ConvShape, CostModel

OPSET = 17


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _model(nodes: list, inputs: list, outputs: list, inits: list) -> bytes:
    graph = helper.make_graph(nodes, "probe", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    return proto.SerializeToString()


def conv_models(shape: ConvShape, seed: int = 0) -> tuple[bytes, bytes]:
    """The FP32 and the INT8 QDQ one-conv models of ``shape`` (serialized ONNX)."""
    rng = np.random.default_rng(seed)
    cin_g = shape.cin // shape.groups
    weight = rng.standard_normal((shape.cout, cin_g, shape.k, shape.k)).astype(np.float32) * 0.1
    bias = rng.standard_normal(shape.cout).astype(np.float32) * 0.1
    ph, pw = _same_pads(shape.h, shape.k, shape.stride), _same_pads(shape.w, shape.k, shape.stride)
    attrs = {"kernel_shape": [shape.k, shape.k], "strides": [shape.stride] * 2, "group": shape.groups,
             "pads": [ph[0], pw[0], ph[1], pw[1]]}
    ho, wo = shape.out_hw
    x_f = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shape.cin, shape.h, shape.w])
    y_f = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, shape.cout, ho, wo])
    fp32 = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)],
        [x_f], [y_f], [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    w_scale = (np.abs(weight).reshape(shape.cout, -1).max(1) / 127.0).astype(np.float32)
    w_q = np.clip(np.round(weight / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    x_scale = np.float32(4.0 / 255)
    b_scale = (x_scale * w_scale).astype(np.float32)
    b_q = np.round(bias / b_scale).astype(np.int32)
    inits = [
        numpy_helper.from_array(np.array(x_scale, dtype=np.float32), "xs"),
        numpy_helper.from_array(np.array(128, dtype=np.uint8), "xz"),
        numpy_helper.from_array(w_q, "wq"),
        numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(np.zeros(shape.cout, dtype=np.int8), "wz"),
        numpy_helper.from_array(b_q, "bq"),
        numpy_helper.from_array(b_scale, "bs"),
        numpy_helper.from_array(np.zeros(shape.cout, dtype=np.int32), "bz"),
        numpy_helper.from_array(np.array(8.0 / 255, dtype=np.float32), "ys"),
        numpy_helper.from_array(np.array(128, dtype=np.uint8), "yz"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w", axis=0),
        helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], name="dq_b", axis=0),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["yf"], name="conv", **attrs),
        helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"], name="q_y"),
    ]
    int8 = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, shape.cin, shape.h, shape.w])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, shape.cout, ho, wo])],
        inits,
    )
    return fp32, int8


def layout_models(dims: Sequence[int]) -> tuple[bytes, bytes]:
    """A float ``ReorderInput -> ReorderOutput`` pair (ONNX Runtime's NCHWc blocked layout, which its FP32
    convs run in) and a uint8 NCHW -> NHWC ``Transpose`` (its QLinearConv's layout) on ``dims``."""
    f = helper.make_tensor_value_info
    nchwc = "com.microsoft.nchwc"
    pair = onnx.load_from_string(_model(
        [helper.make_node("ReorderInput", ["x"], ["t"], domain=nchwc),
         helper.make_node("ReorderOutput", ["t"], ["y"], domain=nchwc, channels=int(dims[1]))],
        [f("x", TensorProto.FLOAT, list(dims))], [f("y", TensorProto.FLOAT, list(dims))], []))
    pair.opset_import.append(helper.make_opsetid(nchwc, 1))
    nhwc = [dims[0], dims[2], dims[3], dims[1]]
    tr = _model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])],
                [f("x", TensorProto.UINT8, list(dims))], [f("y", TensorProto.UINT8, nhwc)], [])
    return pair.SerializeToString(), tr


def conversion_models(dims: Sequence[int]) -> tuple[bytes, bytes, bytes]:
    """``QuantizeLinear``, ``DequantizeLinear`` and ``Identity`` models on a tensor of ``dims``."""
    scale = numpy_helper.from_array(np.array(0.05, dtype=np.float32), "s")
    zero = numpy_helper.from_array(np.array(128, dtype=np.uint8), "z")
    f = helper.make_tensor_value_info
    q = _model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])],
               [f("x", TensorProto.FLOAT, list(dims))], [f("y", TensorProto.UINT8, list(dims))], [scale, zero])
    dq = _model([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])],
                [f("x", TensorProto.UINT8, list(dims))], [f("y", TensorProto.FLOAT, list(dims))], [scale, zero])
    ident = _model([helper.make_node("Identity", ["x"], ["y"])],
                   [f("x", TensorProto.FLOAT, [1, 1])], [f("y", TensorProto.FLOAT, [1, 1])], [])
    return q, dq, ident


def session(model: bytes, threads: int, optimized: str | None = None) -> ort.InferenceSession:
    """A CPU session at ``threads`` intra-op threads, full graph optimization, no spinning; ``optimized``:
    where to save ONNX Runtime's optimized graph."""
    so = ort.SessionOptions()
    if optimized:
        so.optimized_model_filepath = optimized
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _feed(sess: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in inp.shape]
    if inp.type == "tensor(uint8)":
        return {inp.name: rng.integers(0, 256, size=dims, dtype=np.uint8)}
    return {inp.name: rng.standard_normal(dims).astype(np.float32)}


def _runner(sess: ort.InferenceSession) -> Callable[[], Any]:
    feed = _feed(sess)
    return lambda: sess.run(None, feed)


def _median_us(fn: Callable[[], Any], budget_s: float, min_iters: int = 5, max_iters: int = 400) -> float:
    for _ in range(3):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def _layout_elems(optimized: str, shape: ConvShape) -> int:
    """Elements the layout ops of a one-conv optimized graph move (reorders / transposes at its edges,
    which cancel between neighbouring convs of the same precision inside a real graph)."""
    moved = 0
    for node in onnx.load(optimized).graph.node:
        if node.op_type in ("ReorderInput", "ReorderOutput", "Transpose"):
            moved += shape.in_elems if node.input[0] == "x" else shape.out_elems
    return moved


def measure_cost_model(
    shapes: Iterable[ConvShape],
    threads: int = 2,
    budget_s: float = 0.15,
    rounds: int = 2,
    log: Callable[[str], None] | None = None,
    in_graph: dict[ConvShape, dict[str, float]] | None = None,
) -> CostModel:
    """Time every shape in FP32 and INT8 (``rounds`` alternating rounds of ``budget_s`` each, keeping the
    smaller median: the least disturbed by other load) and the per-element costs of Q, DQ and the layout
    changes; a conv's time excludes the run overhead and the layout ops at its own edges (see the module doc).
    ``in_graph``: per-shape times measured in context (:mod:`anomopt.cost.ingraph`), which replace the
    one-conv probes of those shapes (the probes still give the Q/DQ and layout costs)."""
    import tempfile
    from pathlib import Path

    from anomopt.bench import cpu_info

    say = log or (lambda _m: None)
    shapes = sorted(set(shapes))
    info = cpu_info()
    started = dt.datetime.now(dt.timezone.utc)
    dims = (1, 32, 64, 64)
    elems = int(np.prod(dims))

    def best(model: bytes) -> float:
        fn = _runner(session(model, threads))
        return min(_median_us(fn, budget_s) for _ in range(rounds))

    q, dq, ident = conversion_models(dims)
    pair, tr = layout_models(dims)
    overhead = best(ident)
    per_elem = {
        "quantize": (best(q) - overhead) * 1000.0 / elems,
        "dequantize": (best(dq) - overhead) * 1000.0 / elems,
        "reorder_f32": (best(pair) - overhead) * 1000.0 / (2 * elems),
        "transpose_u8": (best(tr) - overhead) * 1000.0 / elems,
    }
    per_elem = {k: max(v, 0.0) for k, v in per_elem.items()}
    layout_rate = {"fp32": per_elem["reorder_f32"], "int8": per_elem["transpose_u8"]}
    convs: dict[ConvShape, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="anomopt-profile-") as tmp:
        for i, shape in enumerate(shapes):
            if in_graph and shape in in_graph:
                convs[shape] = dict(in_graph[shape])
                continue
            models = dict(zip(("fp32", "int8"), conv_models(shape), strict=True))
            runners, layout_us = {}, {}
            for p, model in models.items():
                opt = str(Path(tmp) / f"{p}.onnx")
                runners[p] = _runner(session(model, threads, optimized=opt))
                layout_us[p] = _layout_elems(opt, shape) * layout_rate[p] / 1000.0
            raw = {p: float("inf") for p in runners}
            for _ in range(rounds):
                for p, fn in runners.items():
                    raw[p] = min(raw[p], _median_us(fn, budget_s))
            # never report a layer as (nearly) free after the subtractions
            convs[shape] = {p: max(raw[p] - overhead - layout_us[p], 0.2 * (raw[p] - overhead), 0.1) for p in raw}
            say(f"profile: {i + 1}/{len(shapes)} {shape.key()}: fp32 {convs[shape]['fp32']:.1f} us, "
                f"int8 {convs[shape]['int8']:.1f} us")
    meta = {
        "cpu": info["model"],
        "logical_cores": info["logical_cores"],
        "threads": threads,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "date": f"{started:%Y-%m-%d %H:%M} UTC",
        "loadavg_start": info["loadavg"],
        "loadavg_end": cpu_info()["loadavg"],
        "run_overhead_us": round(overhead, 2),
        "layout_ns_per_elem": {"reorder_f32": round(per_elem["reorder_f32"], 4),
                               "transpose_u8": round(per_elem["transpose_u8"], 4)},
        "int8": "QDQ U8S8, per-channel int8 weights (fused to QLinearConv), uint8 in and out",
        "in_graph_shapes": len([s for s in shapes if in_graph and s in in_graph]),
        "method": ("shapes of the given models: ONNX Runtime's profiler on their FP32 graph and on the graph with "
                   "every conv QDQ INT8, per-conv kernel time in context, best of rounds, averaged per shape; "
                   "other shapes: " if in_graph else "")
        + f"median of session.run over {budget_s}s, best of {rounds} alternating rounds, minus the run "
        "overhead and the layout ops (NCHWc reorders / NHWC transposes) at the conv's own edges",
        "fallback": "unmeasured shape: nearest measured shape of the same kernel/stride/depthwise kind in log-MACs, "
        "scaled by the MAC ratio; no such kind: MACs / median MAC rate of that precision",
        "boundary": "a precision change costs per element: QuantizeLinear or DequantizeLinear + a uint8 transpose "
        "+ a float NCHWc reorder",
    }
    return CostModel(
        convs,
        per_elem["quantize"] + per_elem["transpose_u8"] + per_elem["reorder_f32"],
        per_elem["dequantize"] + per_elem["transpose_u8"] + per_elem["reorder_f32"],
        meta,
    )


def conv_shapes_of_onnx(proto: onnx.ModelProto) -> dict[str, ConvShape]:
    """``{Conv node name: ConvShape}`` of a batch-1 ONNX model (2-D convs with initializer weights)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    dims: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    out: dict[str, ConvShape] = {}
    for node in proto.graph.node:
        if node.op_type != "Conv" or node.input[1] not in weights or node.input[0] not in dims:
            continue
        w = weights[node.input[1]]
        x = dims[node.input[0]]
        if len(w) != 4 or len(x) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        strides = list(attrs.get("strides", [1, 1]))
        out[node.name] = ConvShape(
            cin=int(x[1]), cout=int(w[0]), k=int(w[2]), stride=int(strides[0]),
            groups=int(attrs.get("group", 1)), h=int(x[2]), w=int(x[3]),
        )
    return out


#: the roofline probe: a large 1x1 conv (268 M MACs at batch 1), compute-bound on the INT8 and FP32 paths
ROOFLINE_SHAPE = ConvShape(256, 256, 1, 1, 1, 64, 64)


def mac_rate(precision: str = "int8", threads: int = 2, budget_s: float = 0.5, rounds: int = 2,
             shape: ConvShape = ROOFLINE_SHAPE) -> float:
    """Measured GMAC/s of ``shape`` (default :data:`ROOFLINE_SHAPE`) in ONNX Runtime at ``precision``:
    the best of ``rounds`` medians, run overhead not subtracted (a floor you can actually reach)."""
    fp32, int8 = conv_models(shape)
    fn = _runner(session(int8 if precision == "int8" else fp32, threads))
    us = min(_median_us(fn, budget_s) for _ in range(rounds))
    return shape.macs / us / 1000.0
