"""Latency, throughput, memory and size measurements for FP32 torch, FP32 ONNX Runtime and INT8 ONNX Runtime.

Each backend is measured in a fresh subprocess (:func:`run_isolated`), so its peak RSS is its own and one
backend's thread pools or caches do not colour the next. Thread counts are set explicitly
(``torch.set_num_threads`` / ``intra_op_num_threads``) and reported with the numbers. Latency is batch 1
after warm-up (p50/p90/p99 over many runs); throughput is images per second at batch 8. Ratios are
meant to be computed between rows of one invocation (same machine, same load).

This module imports torch only inside the functions that need it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROLES = ("teacher", "student", "head")


def time_calls(
    fn: Callable[[], Any],
    warmup: int = 10,
    iters: int = 50,
    max_seconds: float | None = None,
    min_iters: int = 10,
) -> np.ndarray:
    """Wall times of ``fn()`` in milliseconds after ``warmup`` untimed calls.

    ``iters`` timed calls, or fewer (never under ``min_iters``) once ``max_seconds`` have passed; warm-up
    stops early (after 2 calls) once a quarter of ``max_seconds`` is spent.
    """
    start = time.perf_counter()
    for i in range(max(0, warmup)):
        fn()
        if max_seconds is not None and i >= 1 and time.perf_counter() - start > max_seconds / 4:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters:
        if max_seconds is not None and len(times) >= min_iters and time.perf_counter() - start > max_seconds:
            break
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return np.asarray(times)


def latency_stats(times_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50 / p90 / p99 / mean / min of a list of latencies (ms)."""
    t = np.asarray(times_ms, dtype=np.float64)
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "runs": int(t.size),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB, without psutil.

    Linux: ``VmHWM`` from ``/proc/self/status`` (``getrusage``'s ``ru_maxrss`` would carry over the parent's
    RSS at fork time into a freshly exec'd worker). Elsewhere: ``getrusage``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def cpu_info() -> dict[str, Any]:
    """CPU model name (``lscpu``), logical cores and load average, for the results header."""
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"model": name, "logical_cores": os.cpu_count(), "loadavg": [round(x, 2) for x in load]}


# ------------------------------------------------------------------------------------- model figures


def _role(name: str) -> str:
    from anomopt.targets.onnx_export import role_of_onnx_name

    role = role_of_onnx_name(name)
    return role if role in ROLES else "head"


def onnx_conv_macs(path: str | os.PathLike[str]) -> dict[str, int]:
    """Multiply-accumulates of every Conv at batch 1: ``out_elems * (Cin / groups) * kh * kw``, per role
    and ``total`` (other ops are not counted: they are a small fraction in these models)."""
    proto = onnx.load(str(path))
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1
    proto = onnx.shape_inference.infer_shapes(proto)
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in list(proto.graph.value_info) + list(proto.graph.output)
    }
    inits = {t.name: list(t.dims) for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    macs = {r: 0 for r in ROLES}
    for n in proto.graph.node:
        if n.op_type != "Conv":
            continue
        w = n.input[1]
        while w not in inits and w in producers and producers[w].op_type in ("DequantizeLinear", "QuantizeLinear"):
            w = producers[w].input[0]
        wshape = inits.get(w)
        out = shapes.get(n.output[0])
        if not wshape or not out or 0 in out:
            continue
        macs[_role(n.name)] += int(np.prod(out[1:])) * int(np.prod(wshape[1:]))
    macs["total"] = sum(macs[r] for r in ROLES)
    return macs


def onnx_weight_bytes(path: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes of stored weights (initializers) per role, and the file size (``file``)."""
    from anomopt.targets.onnx_export import initializer_bytes_by_role

    sizes = initializer_bytes_by_role(onnx.load(str(path)))
    sizes["head"] += sizes.pop("other", 0)
    sizes["file"] = Path(path).stat().st_size
    return sizes


def onnx_parameters(path: str | os.PathLike[str]) -> dict[str, int]:
    """Parameters per role of the layers that reach the outputs: elements of the float initializers of an
    FP32 ONNX graph (shape constants excluded), and ``total``."""
    proto = onnx.load(str(path))
    consumers: dict[str, list[str]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    counts = {r: 0 for r in ROLES}
    for t in proto.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT or len(t.dims) == 0:
            continue
        users = consumers.get(t.name, [])
        counts[_role(users[0]) if users else "head"] += int(np.prod(t.dims))
    counts["total"] = sum(counts[r] for r in ROLES)
    return counts


def torch_parameters(model: Any) -> dict[str, int]:
    """Parameters per role of the inference path (US's training-only backbone excluded), and ``total``."""
    counts = {r: sum(p.numel() for p in getattr(model, r).parameters()) for r in ROLES if hasattr(model, r)}
    if hasattr(model, "teacher") and hasattr(model.teacher, "project"):
        counts["teacher"] -= sum(p.numel() for p in model.teacher.project.parameters())  # US: training only
    counts["total"] = sum(counts.values())
    return counts


# ------------------------------------------------------------------------------------ measurements


def measure_ort(
    path: str | os.PathLike[str],
    image_size: int,
    threads: int = 2,
    warmup: int = 10,
    iters: int = 50,
    batch: int = 8,
    batch_iters: int = 10,
    spin: bool = True,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Batch-1 latency and batch-``batch`` throughput of an ONNX model on the CPU execution provider."""
    from anomopt.runtime.predictor import make_session

    session = make_session(path, threads=threads, spinning=spin)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    x1 = rng.random((1, 3, image_size, image_size), dtype=np.float32)
    xb = rng.random((batch, 3, image_size, image_size), dtype=np.float32)
    lat = time_calls(lambda: session.run(None, {name: x1}), warmup, iters, max_seconds)
    tb = time_calls(lambda: session.run(None, {name: xb}), max(1, warmup // 4), batch_iters, max_seconds, 2)
    return _timing_record("onnxruntime", threads, spin, lat, tb, batch)


def _timing_record(
    backend: str, threads: int, spin: bool, lat: Sequence[float], batch_times: Sequence[float], batch: int
) -> dict[str, Any]:
    """One measurement: batch-1 latency statistics, batch throughput and peak RSS."""
    return {
        "backend": backend,
        "threads": threads,
        "spin": spin,
        **latency_stats(lat),
        "times_ms": [round(float(t), 4) for t in lat],
        "throughput_ips": float(batch * 1000.0 / np.median(batch_times)),
        "batch": batch,
        "peak_rss_mb": peak_rss_mb(),
    }


def measure_torch(
    model: Any,
    image_size: int,
    threads: int = 2,
    warmup: int = 10,
    iters: int = 50,
    batch: int = 8,
    batch_iters: int = 10,
    spin: bool = True,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """The same for a torch model in eager mode (``torch.inference_mode``, eval, ``set_num_threads``).
    ``spin`` is informational here: OpenMP's wait policy is fixed by ``OMP_WAIT_POLICY`` at import."""
    import torch

    torch.set_num_threads(threads)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    x1 = torch.rand(1, 3, image_size, image_size, generator=gen)
    xb = torch.rand(batch, 3, image_size, image_size, generator=gen)
    with torch.inference_mode():
        lat = time_calls(lambda: model(x1), warmup, iters, max_seconds)
        tb = time_calls(lambda: model(xb), max(1, warmup // 4), batch_iters, max_seconds, 2)
    return _timing_record("torch-eager", threads, spin, lat, tb, batch)


def measure_tensorrt(
    engine_path: str | os.PathLike[str],
    image_size: int,
    warmup: int = 10,
    iters: int = 50,
    max_seconds: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Batch-1 latency of a serialized TensorRT engine (on a Jetson or GPU box where ``tensorrt`` and
    CUDA torch import; buffers are CUDA torch tensors). Raises :class:`TargetError` elsewhere.

    Not exercised by anomopt's CI (no GPU there); ``trtexec`` prints the same measurement on the device.
    """
    from anomopt.errors import TargetError

    try:
        import tensorrt as trt  # type: ignore[import-not-found]
        import torch
    except ImportError:
        raise TargetError("measuring a TensorRT engine needs the tensorrt package (on the device)") from None
    if not torch.cuda.is_available():
        raise TargetError("measuring a TensorRT engine needs a CUDA device")
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    context = engine.create_execution_context()
    shapes = {
        "images": (1, 3, image_size, image_size),
        "score": (1,),
        "anomaly_map": (1, 1, image_size, image_size),
    }
    buffers = {k: torch.rand(v, device="cuda") for k, v in shapes.items()}
    bindings = [buffers[engine.get_binding_name(i)].data_ptr() for i in range(engine.num_bindings)]

    def run() -> None:
        context.execute_v2(bindings)
        torch.cuda.synchronize()

    lat = time_calls(run, warmup, iters, max_seconds)
    return {"backend": "tensorrt", **latency_stats(lat), "times_ms": [round(float(t), 4) for t in lat]}


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["backend"]
    keys = ("image_size", "threads", "warmup", "iters", "batch", "batch_iters", "spin", "max_seconds")
    common = {k: spec[k] for k in keys if k in spec}
    if kind == "ort":
        return measure_ort(spec["path"], **common)
    if kind == "trt":
        return measure_tensorrt(spec["path"], **common)
    if kind == "torch":
        from anomopt.checkpoint import load_checkpoint

        model, _ = load_checkpoint(spec["path"])
        return measure_torch(model, **common)
    raise ValueError(f"unknown backend {kind!r}")


def run_isolated(spec: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """Measure one backend in a fresh Python process (``python -m anomopt.bench --worker JSON``).

    ``spec``: ``backend`` ("ort": ``path`` to an ONNX file; "torch": ``path`` to an anomopt checkpoint;
    "trt": ``path`` to a TensorRT engine, on the device),
    ``image_size``, ``threads``, ``warmup``, ``iters``, ``batch``, ``batch_iters``, ``max_seconds`` (cap per
    timing loop), ``spin`` (False: no busy-waiting thread pools, ``OMP_WAIT_POLICY=PASSIVE`` and ORT
    ``allow_spinning=0``: fairer on a shared, oversubscribed CPU).
    """
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    threads = str(spec.get("threads", 2))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if not spec.get("spin", True):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    proc = subprocess.run(
        [sys.executable, "-m", "anomopt.bench", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({spec['backend']}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge_rounds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Combine repeated measurements of one backend: latency percentiles over all runs, the median
    throughput, the largest peak RSS."""
    times = [t for r in results for t in r["times_ms"]]
    out = {k: v for k, v in results[0].items() if k != "times_ms"}
    out.update(latency_stats(times))
    out["throughput_ips"] = float(np.median([r["throughput_ips"] for r in results]))
    out["peak_rss_mb"] = float(max(r["peak_rss_mb"] for r in results))
    out["rounds"] = len(results)
    return out


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table; ``columns`` are ``(header, key, format)`` with format like ``"{:.1f}"``."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    lines = [head, sep]
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else (fmt.format(value) if fmt else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- reading the numbers


def strip_qdq(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write the FP32 twin of a Q/DQ ONNX model: constant ``DequantizeLinear`` inputs (weights, biases)
    are folded into float initializers, also where the scale is computed from other constants (bias scale =
    input scale x weight scale): ONNX Runtime's fast conv layouts need constant weights and biases, as in an
    FP32 export. Every activation ``QuantizeLinear -> DequantizeLinear`` pair becomes a float ``Clip`` to
    the range it represents (ONNX Runtime's quantizer drops a ReLU that the uint8 range already clips, so a plain
    bypass would change the math). Same graph, float kernels: the FP32 baseline of an INT8 artifact.
    A model without Q/DQ is copied unchanged."""
    from onnx import helper, numpy_helper

    proto = onnx.load(str(src))
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}

    ops = {"Mul": np.multiply, "Div": np.divide, "Add": np.add, "Sub": np.subtract}

    def const(name: str, depth: int = 0) -> np.ndarray | None:
        """The value of a tensor computable from initializers alone (e.g. a bias scale = input scale x
        weight scale), else None."""
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producers.get(name)
        if node is None or depth > 4 or node.op_type not in (*ops, "Identity", "Reshape"):
            return None
        args = [const(i, depth + 1) for i in node.input]
        if any(a is None for a in args):
            return None
        if node.op_type == "Identity":
            return args[0]
        if node.op_type == "Reshape":
            return args[0].reshape(args[1].astype(np.int64))
        return ops[node.op_type](args[0], args[1]).astype(args[0].dtype)

    folded: dict[str, np.ndarray] = {}
    replace: dict[int, Any] = {}  # id(DQ node) -> Clip node
    drop: set[int] = set()
    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        scale = const(n.input[1])
        zp_raw = const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is None or (len(n.input) > 2 and n.input[2] and zp_raw is None):
            continue
        scale = scale.astype(np.float32)
        zp = zp_raw.astype(np.float32) if zp_raw is not None else np.zeros_like(scale, dtype=np.float32)
        q_in = numpy_helper.to_array(inits[n.input[0]]) if n.input[0] in inits else None
        if q_in is not None:
            q = q_in.astype(np.float32)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * q.ndim
                shape[axis % q.ndim] = scale.size
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            folded[n.output[0]] = (q - zp) * scale.astype(np.float32)
            drop.add(id(n))
        elif n.input[0] in producers and producers[n.input[0]].op_type == "QuantizeLinear" and scale.size == 1:
            info = np.iinfo(zp_raw.dtype if zp_raw is not None else np.uint8)
            lo = np.asarray((info.min - zp) * scale, dtype=np.float32).reshape(())
            hi = np.asarray((info.max - zp) * scale, dtype=np.float32).reshape(())
            x = producers[n.input[0]].input[0]
            folded[n.output[0] + "_clip_lo"], folded[n.output[0] + "_clip_hi"] = lo, hi
            replace[id(n)] = helper.make_node(
                "Clip", [x, n.output[0] + "_clip_lo", n.output[0] + "_clip_hi"], [n.output[0]],
                name=(n.name or n.output[0]) + "_fp32",
            )
    if not drop and not replace:
        Path(dst).write_bytes(Path(src).read_bytes())
        return Path(dst)
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
    outputs = {o.name for o in g.output}
    while True:  # drop nodes nothing reads any more (the Qs, the constant scale arithmetic)
        used = {i for n in nodes for i in n.input} | outputs
        kept_nodes = [n for n in nodes if any(o in used for o in n.output)]
        if len(kept_nodes) == len(nodes):
            break
        nodes = kept_nodes
    used = {i for n in nodes for i in n.input}
    del g.node[:]
    g.node.extend(nodes)
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    g.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in folded.items() if k in used)
    onnx.save(proto, str(dst))
    return Path(dst)


def quantization_profile(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What of an ONNX model runs in integer kernels: ONNX Runtime's fused kernels per role
    (:func:`anomopt.targets.backends.onnxruntime.integer_kernel_counts`), the share of conv MACs in the roles that
    got integer convs, and how many of the quantized convs are depthwise."""
    from anomopt.targets.backends.onnxruntime import integer_kernel_counts

    counts = integer_kernel_counts(path)
    by_role = {r: v for r, v in counts["by_role"].items()}
    macs = onnx_conv_macs(path)
    int_roles = [r for r, v in by_role.items() if v.get("integer", 0) > 0 and r in ROLES]
    total = max(1, macs["total"])
    proto = onnx.load(str(path))
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    quant_convs = [
        n for n in proto.graph.node if n.op_type == "Conv" and producers.get(n.input[1]) == "DequantizeLinear"
    ]
    depthwise = sum(1 for n in quant_convs if next((a.i for a in n.attribute if a.name == "group"), 1) > 1)
    return {
        "integer_convs": counts["integer_convs"],
        "float_convs": counts["float_convs"],
        "by_role": by_role,
        "integer_mac_share": sum(macs[r] for r in int_roles) / total,
        "mac_share": {r: macs[r] / total for r in ROLES},
        "quantized_convs": len(quant_convs),
        "depthwise_quantized": depthwise,
        "quantize_linear": counts["quantize_linear"],
    }


def kernels_text(profile: dict[str, Any] | None) -> str:
    """``student 21/21 int, teacher 0/24 int`` from :func:`quantization_profile` (empty for ``None``)."""
    if not profile:
        return ""
    parts = []
    for role in ROLES:
        v = profile["by_role"].get(role)
        if v:
            parts.append(f"{role} {v['integer']}/{v['integer'] + v['float']}")
    return ", ".join(parts)


def machine_load(threads: int) -> dict[str, Any]:
    """The 1-minute load average against the free cores: ``busy`` when fewer than ``threads`` cores are
    idle (load1 > logical cores - threads + 0.5), with the warning to print."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        return {"load1": None, "busy": False, "warning": None}
    cores = os.cpu_count() or 1
    busy = load1 > cores - threads + 0.5
    warning = (
        f"warning: the 1-min load average is {load1:.2f} on {cores} logical cores, so fewer than the {threads} "
        "benchmark threads have a core to themselves: other work competes, and these numbers (the speed-ups "
        "too) may be unreliable; rerun on a quiet machine or with fewer --threads"
        if busy
        else None
    )
    return {"load1": round(load1, 2), "logical_cores": cores, "threads": threads, "busy": busy, "warning": warning}


def slow_int8_reasons(profile: dict[str, Any] | None, load: dict[str, Any]) -> list[str]:
    """Why an INT8 model may come out no faster than FP32, from what the lowered graph and the machine say."""
    reasons: list[str] = []
    if profile:
        share = profile["integer_mac_share"]
        if profile["integer_convs"] == 0:
            reasons.append(
                "no conv runs as an integer kernel: ONNX Runtime kept the quantized convs in float "
                "(it pays for the quantize/dequantize and gains nothing)"
            )
        elif share < 0.75:
            fp_roles = [
                f"the FP32 {r} ({100 * profile['mac_share'][r]:.0f}%)"
                for r in ROLES
                if profile["mac_share"].get(r, 0) > 0.05 and not profile["by_role"].get(r, {}).get("integer")
            ]
            reasons.append(
                f"only {100 * share:.0f}% of the conv multiply-adds run in integer kernels; the rest is "
                f"{', '.join(fp_roles) or 'float'} (the student-only scope keeps the teacher FP32), so even "
                f"free int8 convs would cap the speed-up at {1 / max(1e-9, 1 - share):.2f}x"
            )
        if profile["depthwise_quantized"]:
            reasons.append(
                f"{profile['depthwise_quantized']} of the {profile['quantized_convs']} quantized convs are "
                "depthwise: little arithmetic per byte, so int8 saves little there while the quantize / "
                "dequantize around them costs"
            )
        left = sum(v.get("float", 0) for v in profile["by_role"].values() if v.get("integer"))
        if left:
            reasons.append(f"{left} convs in the quantized roles still run as float kernels")
    if load.get("busy"):
        reasons.append("the machine is busy (see the load warning): timings are noisy")
    if not reasons:
        reasons.append("small images give int8 kernels little work per call; try a larger --image-size or batch")
    return reasons


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point: ``python -m anomopt.bench --worker '{"backend": ...}'`` prints one JSON line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--worker":
        print("usage: python -m anomopt.bench --worker JSON", file=sys.stderr)
        return 2
    print(json.dumps(_worker(json.loads(args[1]))))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
