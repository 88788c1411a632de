"""Horizontal fusion probe: is one grouped conv (groups x 2) faster on ONNX Runtime than the teacher's and the
student's twin convs run side by side?

For every conv shape of STFPM (teacher and student share the architecture and the input image), two models
are timed in interleaved rounds, in FP32 and in INT8 QDQ (U8S8 per-channel, fused to QLinearConv):

- twin: two inputs, two independent convs of the shape (what the unfused graph runs);
- fused: one input of 2 x Cin channels, one conv with twice the groups and 2 x Cout outputs.

Summed over the model's convs (each shape once per teacher/student pair) this gives the whole-graph gain
fusion could bring, before the Split / Concat it would need at the taps.

    PYTHONPATH=src .venv/bin/python benchmarks/horizontal_fusion.py [--image-size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import results_writer as rw  # noqa: E402
from anomopt.bench import cpu_info  # noqa: E402
from anomopt.cost.measure import _median_us, _model, _same_pads, session  # noqa: E402
from anomopt.cost.model import ConvShape  # noqa: E402


def _conv_nodes(tag: str, x: str, shape: ConvShape, groups: int, cout: int, cin: int, int8: bool, rng) -> tuple:
    w = (rng.standard_normal((cout, cin // groups, shape.k, shape.k)) * 0.1).astype(np.float32)
    ph, pw = _same_pads(shape.h, shape.k, shape.stride), _same_pads(shape.w, shape.k, shape.stride)
    attrs = {"kernel_shape": [shape.k] * 2, "strides": [shape.stride] * 2, "group": groups,
             "pads": [ph[0], pw[0], ph[1], pw[1]]}
    if not int8:
        return [helper.make_node("Conv", [x, f"{tag}w"], [f"{tag}y"], **attrs)], [numpy_helper.from_array(w, f"{tag}w")]
    ws = (np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.clip(np.round(w / ws[:, None, None, None]), -127, 127).astype(np.int8), f"{tag}wq"),
        numpy_helper.from_array(ws, f"{tag}ws"),
        numpy_helper.from_array(np.zeros(cout, np.int8), f"{tag}wz"),
        numpy_helper.from_array(np.array(0.02, np.float32), f"{tag}s"),
        numpy_helper.from_array(np.array(128, np.uint8), f"{tag}z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", [x, f"{tag}s", f"{tag}z"], [f"{tag}xd"]),
        helper.make_node("DequantizeLinear", [f"{tag}wq", f"{tag}ws", f"{tag}wz"], [f"{tag}wd"], axis=0),
        helper.make_node("Conv", [f"{tag}xd", f"{tag}wd"], [f"{tag}yf"], **attrs),
        helper.make_node("QuantizeLinear", [f"{tag}yf", f"{tag}s", f"{tag}z"], [f"{tag}y"]),
    ]
    return nodes, inits


def models(shape: ConvShape, int8: bool) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    dtype = TensorProto.UINT8 if int8 else TensorProto.FLOAT
    ho, wo = shape.out_hw
    vi = helper.make_tensor_value_info
    nodes, inits, ins, outs = [], [], [], []
    for tag in ("a", "b"):
        n, i = _conv_nodes(tag, f"{tag}x", shape, shape.groups, shape.cout, shape.cin, int8, rng)
        nodes += n
        inits += i
        ins.append(vi(f"{tag}x", dtype, [1, shape.cin, shape.h, shape.w]))
        outs.append(vi(f"{tag}y", dtype, [1, shape.cout, ho, wo]))
    twin = _model(nodes, ins, outs, inits)
    n, i = _conv_nodes("f", "fx", shape, 2 * shape.groups, 2 * shape.cout, 2 * shape.cin, int8, rng)
    fused = _model(n, [vi("fx", dtype, [1, 2 * shape.cin, shape.h, shape.w])],
                   [vi("fy", dtype, [1, 2 * shape.cout, ho, wo])], i)
    return twin, fused


def _feed(sess) -> dict:
    out = {}
    for inp in sess.get_inputs():
        dims = [int(d) for d in inp.shape]
        out[inp.name] = (np.random.default_rng(0).integers(0, 256, dims, dtype=np.uint8) if inp.type == "tensor(uint8)"
                         else np.random.default_rng(0).standard_normal(dims).astype(np.float32))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.1)
    rw.add_args(parser)
    args = parser.parse_args(argv)
    run = rw.RunInfo.start(__file__, args.threads, argv)
    out: list[str] = []
    from anomopt.cli.profile_cmd import model_conv_shapes
    from anomopt.models import build_model

    shapes = Counter(model_conv_shapes(build_model("stfpm", image_size=args.image_size), args.image_size))
    info = cpu_info()
    totals = {("fp32", "twin"): 0.0, ("fp32", "fused"): 0.0, ("int8", "twin"): 0.0, ("int8", "fused"): 0.0}
    rows = []
    for shape, count in sorted(shapes.items()):
        pairs = count // 2  # each shape once in the teacher and once in the student
        if pairs == 0:
            continue
        row = {"shape": shape.key()}
        for prec in ("fp32", "int8"):
            sess = {k: session(m, args.threads) for k, m in zip(("twin", "fused"), models(shape, prec == "int8"),
                                                                 strict=True)}
            feeds = {k: _feed(s) for k, s in sess.items()}
            best = {k: min(_median_us(lambda s=s, f=feeds[k]: s.run(None, f), args.budget)
                           for _ in range(args.rounds)) for k, s in sess.items()}
            for k, v in best.items():
                totals[(prec, k)] += pairs * v
                row[f"{prec} {k}"] = v
        rows.append(row)
    out.append(f"- horizontal fusion probe: STFPM {args.image_size} px conv shapes, {args.threads} threads, "
          f"{info['model']}, load {info['loadavg']} -> {cpu_info()['loadavg']}")
    out.append("| shape | fp32 twin us | fp32 fused us | int8 twin us | int8 fused us |")
    out.append("|---|---:|---:|---:|---:|")
    for r in rows:
        out.append(f"| {r['shape']} | {r['fp32 twin']:.0f} | {r['fp32 fused']:.0f} | {r['int8 twin']:.0f} | "
              f"{r['int8 fused']:.0f} |")
    for prec in ("fp32", "int8"):
        t, f = totals[(prec, "twin")], totals[(prec, "fused")]
        out.append(f"{prec}: twin convs {t / 1000:.2f} ms, fused {f / 1000:.2f} ms, fused/twin {f / t:.2f}")
    rw.publish(args, "horizontal-fusion", "Horizontal fusion probe: teacher + student as grouped convs",
               "benchmarks/horizontal_fusion.py", "\n".join(out), run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
