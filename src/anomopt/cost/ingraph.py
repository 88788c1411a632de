"""Per-conv latency measured in context: ONNX Runtime's own profiler on a model's FP32 graph and on the same
graph with every conv quantized (QDQ U8S8, per-channel weights, as our lowering writes it).

A conv timed alone on its own buffers is not the same conv inside the graph (caches, fused activations, no
layout changes between neighbours of one precision): the depthwise convs of EfficientNet-Lite0 at
64x64-128x128 timed 0.35-0.42x in INT8 alone and 0.9-1.1x inside the graph. This module times each conv
where it runs. Kernel times come from ``SessionOptions.enable_profiling``; fused nodes are mapped back to
their conv (NCHWc convs are named after their output tensor, QLinearConv after the conv plus
``_token_<n>``). Layout changes and Q/DQ nodes are not attributed to a conv.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from anomopt.cost.measure import conv_shapes_of_onnx
from anomopt.cost.model import ConvShape

_TOKEN = re.compile(r"_token_\d+$")
_ACTIVATIONS = ("Relu", "Clip", "BatchNormalization", "HardSigmoid", "LeakyRelu")


def quantize_all_convs(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str], image_size: int,
                       seed: int = 0) -> None:
    """Every conv of ``fp32_path`` (and the glue between them) to QDQ U8S8 per-channel, float consumers
    kept float, ranges from two random images (timing does not depend on the ranges)."""
    import contextlib
    import io
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from anomopt.targets.ort_lowering import ImageReader, _useful_glue, keep_float_consumers

    proto = onnx.load(str(fp32_path))
    convs = {n.name for n in proto.graph.node if n.op_type == "Conv"}
    glue = _useful_glue(proto, convs, ("teacher", "student", "other"))
    nodes = [n.name for n in proto.graph.node if n.name in convs or n.name in glue]
    images = np.random.default_rng(seed).random((2, 3, image_size, image_size), dtype=np.float32)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(fp32_path), str(out_path), ImageReader(images, 2), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=sorted({n.op_type for n in proto.graph.node if n.name in set(nodes)}),
                per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                nodes_to_exclude=[n.name for n in proto.graph.node if n.name not in set(nodes)],
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    finally:
        logging.getLogger().setLevel(level)
    qproto = onnx.load(str(out_path))
    keep_float_consumers(qproto, nodes)
    onnx.save(qproto, str(out_path))


def _conv_of(proto: onnx.ModelProto) -> Callable[[str], str | None]:
    convs = {n.name for n in proto.graph.node if n.op_type == "Conv"}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    by_tensor: dict[str, str] = {}
    for n in proto.graph.node:
        if n.op_type != "Conv":
            continue
        tensor = n.output[0]
        by_tensor[tensor] = n.name
        while len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in _ACTIVATIONS:
            tensor = consumers[tensor][0].output[0]
            by_tensor[tensor] = n.name

    def lookup(node: str) -> str | None:
        if node.endswith("_nchwc") and node[: -len("_nchwc")] in by_tensor:
            return by_tensor[node[: -len("_nchwc")]]
        base = _TOKEN.sub("", node)
        return base if base in convs else by_tensor.get(base)

    return lookup


def conv_kernel_us(model_path: str | os.PathLike[str], reference: onnx.ModelProto, threads: int = 2,
                   runs: int = 30, seed: int = 0, integer_only: bool = False) -> dict[str, float]:
    """Mean kernel time (us) per conv node of ``reference`` (the FP32 graph) when ``model_path`` runs,
    from ONNX Runtime's profiler over ``runs`` batch-1 runs after warm-up. ``integer_only``: only convs that
    ran as ``QLinearConv`` (an INT8 conv that only float nodes read runs as a float conv: not its INT8 cost)."""
    lookup = _conv_of(reference)
    with tempfile.TemporaryDirectory(prefix="anomopt-ingraph-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        dims = [int(d) if isinstance(d, int) else 1 for d in inp.shape]
        x = np.random.default_rng(seed).random(dims, dtype=np.float32)
        for _ in range(5):
            sess.run(None, {inp.name: x})
        events_path = sess.end_profiling()  # drop the warm-up events
        os.remove(events_path)
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 3):
            sess.run(None, {inp.name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        conv = lookup(e["name"][: -len("_kernel_time")])
        if integer_only and e.get("args", {}).get("op_name") != "QLinearConv":
            continue
        if conv is not None:
            totals[conv] = totals.get(conv, 0.0) + float(e["dur"])
    return {k: v / (runs + 3) for k, v in totals.items()}


def profile_in_graph(fp32_path: str | os.PathLike[str], image_size: int, threads: int = 2, runs: int = 30,
                     rounds: int = 2) -> dict[ConvShape, dict[str, float]]:
    """``{shape: {"fp32": us, "int8": us}}`` of every conv shape of the FP32 ONNX at ``fp32_path``, timed in
    context (this module's doc); several convs of one shape are averaged; the best of ``rounds``
    alternating rounds is kept per conv. INT8 times count only convs ONNX Runtime ran as ``QLinearConv``; a
    shape with none is left out (the caller probes it)."""
    with tempfile.TemporaryDirectory(prefix="anomopt-ingraph-") as tmp:
        # BatchNorm folded into the convs first (ORT's basic level), as fold_batchnorm does before our lowering:
        # a BatchNormalization between a conv and its output quantization would keep it off QLinearConv
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(tmp) / "fp32.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(fp32_path), so, providers=["CPUExecutionProvider"])
        fp32_path = Path(tmp) / "fp32.onnx"
        reference = onnx.load(str(fp32_path))
        shapes = conv_shapes_of_onnx(reference)
        int8_path = Path(tmp) / "int8.onnx"
        quantize_all_convs(fp32_path, int8_path, image_size)
        best: dict[str, dict[str, float]] = {"fp32": {}, "int8": {}}
        for _ in range(rounds):
            for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
                timed = conv_kernel_us(path, reference, threads, runs, integer_only=precision == "int8")
                for conv, us in timed.items():
                    best[precision][conv] = min(best[precision].get(conv, np.inf), us)
    out: dict[ConvShape, dict[str, list[float]]] = {}
    for conv, shape in shapes.items():
        if conv in best["fp32"] and conv in best["int8"]:
            entry = out.setdefault(shape, {"fp32": [], "int8": []})
            entry["fp32"].append(best["fp32"][conv])
            entry["int8"].append(best["int8"][conv])
    return {s: {p: max(float(np.mean(v[p])), 0.1) for p in v} for s, v in out.items()}
