"""The ``lower`` pass: turn the optimized torch graph into the deployable artifact for its target.

- ``cpu``: FP32 ONNX (bits 32), or ONNX Runtime static INT8 QDQ from it (bits 8, see ort_lowering).
- ``xavier_nx`` / ``orin`` (TensorRT): INT8 = the QDQ ONNX from the fake-quant graph (explicit
  quantization; ``trt_quantization="implicit"`` gives the FP32 ONNX plus ``calib.cache`` instead),
  FP16/FP32 = the FP32 ONNX; ``build_engine.sh`` holds the ``trtexec`` command to run on the device.

The pass sets ``graph.runner`` to an ONNX Runtime runner over the produced ONNX, so the pass manager
measures the drift of the real artifact. TensorRT artifacts run in ONNX Runtime on the CPU as a functional
stand-in (the QDQ ONNX computes the int8 math TensorRT runs; FP16 is not emulated) and the notes say so.

Options: ``threads`` (runner), ``float_consumers`` (True), ``use_torch_ranges`` (True),
``trt_quantization`` (explicit|implicit), ``cache_bins`` (histogram bins of the implicit cache, 512),
``dla_core``, ``workspace_mib`` (1024), ``fp16_fallback``, ``backend`` (``onnx`` | ``torch_tensorrt``: also
write the ``torch_trt/`` bundle that torch-tensorrt compiles on the device, see :mod:`anomopt.targets.torch_trt`).
"""

from __future__ import annotations

import dataclasses
import shutil
import weakref
from pathlib import Path
from typing import Any

import torch

from anomopt.errors import PipelineError, TargetError
from anomopt.graph import ModelGraph
from anomopt.outputs import make_work_dir, signals_deferred
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.fake_quant import SCOPES
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass
from anomopt.runtime.predictor import OnnxRunner
from anomopt.targets.onnx_export import export_onnx
from anomopt.targets.spec import TargetSpec

PRECISION_NAMES = {8: "int8", 16: "fp16", 32: "fp32"}
MODEL_FILE = "model.onnx"


def precision_name(bits: int) -> str:
    """``8`` -> ``"int8"`` and so on."""
    if bits not in PRECISION_NAMES:
        raise TargetError(f"bits must be 8, 16 or 32, not {bits}")
    return PRECISION_NAMES[bits]


def lower_graph(
    graph: ModelGraph,
    target: TargetSpec,
    bits: int,
    out_dir: str | Path,
    calib_images: torch.Tensor | None = None,
    options: dict[str, Any] | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write the artifact files for ``target`` at ``bits`` into ``out_dir``; returns the artifact record
    (paths, precision, runtime, notes) that :func:`anomopt.targets.export.save_artifact` reuses.
    ``log``: an optional ``callable(str)`` told about each step (progress)."""
    opts = dict(options or {})
    say = log or (lambda _msg: None)
    target.check_bits(bits)
    if str(opts.get("backend", "onnx")) not in ("onnx", "torch_tensorrt"):
        raise TargetError(f"lower: backend must be 'onnx' or 'torch_tensorrt', not {opts.get('backend')!r}")
    if opts.get("backend") == "torch_tensorrt" and target.runtime != "tensorrt":
        raise TargetError(f"lower: backend 'torch_tensorrt' needs a Jetson target (xavier_nx, orin), not {target.name}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "_work"
    work.mkdir(exist_ok=True)
    precision = precision_name(bits)
    size = int(graph.model.config.image_size)
    opset = max(13, int(target.onnx_opset))
    record: dict[str, Any] = {
        "dir": str(out),
        "model": str(out / MODEL_FILE),
        "target": target.name,
        "runtime": target.runtime,
        "precision": precision,
        "image_size": size,
        "opset": opset,
        "files": [MODEL_FILE],
    }
    notes: dict[str, Any] = {}
    quantized = bits == 8
    if quantized and not graph.state.quantized_layers:
        raise TargetError("INT8 lowering needs the insert_fake_quant and calibrate passes before 'lower'")
    backend = graph.state.quant.backend if quantized and graph.state.quant else "anomopt"
    explicit = opts.get("trt_quantization", "explicit") == "explicit"
    if backend == "modelopt" and (target.runtime != "tensorrt" or not explicit):
        raise TargetError(
            "a ModelOpt-quantized graph lowers to TensorRT explicit quantization only "
            "(xavier_nx / orin, trt_quantization='explicit')"
        )
    if target.runtime == "onnxruntime":
        say(f"lower: exporting the FP32 ONNX graph (opset {opset})")
        fp32 = export_onnx(graph, work / "model_fp32.onnx", opset=opset)
        notes["export"] = fp32.notes
        if quantized:
            from anomopt.targets.ort_lowering import integer_kernel_counts, quantize_ort_int8

            if calib_images is None:
                raise TargetError("CPU INT8 lowering needs calibration images")
            say(f"lower: ONNX Runtime static INT8 (QDQ) from {len(calib_images)} calibration images")
            notes["quantization"] = quantize_ort_int8(
                fp32.path,
                out / MODEL_FILE,
                graph,
                fp32.conv_map,
                calib_images,
                use_torch_ranges=bool(opts.get("use_torch_ranges", True)),
                float_consumers=bool(opts.get("float_consumers", True)),
            )
            say("lower: counting the integer kernels in ONNX Runtime's optimized graph")
            kernels = integer_kernel_counts(out / MODEL_FILE)
            notes["integer_kernels"] = {
                k: kernels[k] for k in ("integer_convs", "float_convs", "by_role", "qlinear_other")
            }
        else:
            shutil.copyfile(fp32.path, out / MODEL_FILE)
        record["runner"] = "onnxruntime CPU (the artifact itself)"
    elif target.runtime == "tensorrt":
        from anomopt.targets import tensorrt as trt

        mode = str(opts.get("trt_quantization", "explicit"))
        if mode not in ("explicit", "implicit"):
            raise TargetError(f"trt_quantization must be 'explicit' or 'implicit', not {mode!r}")
        calib_file = None
        say(f"lower: TensorRT {precision.upper()} ONNX ({mode if quantized else 'no'} quantization)")
        if quantized and backend == "modelopt":
            from anomopt.targets.modelopt_quant import export_modelopt_qdq

            notes["export"] = export_modelopt_qdq(graph, out / MODEL_FILE, opset=opset).notes
            record["quantization"] = "explicit (Q/DQ in the ONNX, NVIDIA ModelOpt placement and calibration)"
        elif quantized and mode == "explicit":
            qdq = trt.export_qdq_onnx(graph, out / MODEL_FILE, opset=opset)
            notes["export"] = qdq.notes
            record["quantization"] = "explicit (Q/DQ in the ONNX)"
        else:
            fp32 = export_onnx(graph, out / MODEL_FILE, opset=opset)
            notes["export"] = fp32.notes
            if quantized:
                if calib_images is None:
                    raise TargetError("TensorRT implicit INT8 needs calibration images for the cache")
                roles = SCOPES.get(graph.state.quant.scope if graph.state.quant else "student", ("student",))
                ranges = trt.calibration_ranges(
                    out / MODEL_FILE, calib_images, roles=roles, num_bins=int(opts.get("cache_bins", 512))
                )
                trt.write_calibration_cache(out / "calib.cache", ranges, version=trt.cache_version(target.trt_version))
                calib_file = "calib.cache"
                record["files"].append(calib_file)
                record["quantization"] = "implicit (calibration cache)"
                notes["calibration_cache"] = {
                    "tensors": len(ranges),
                    "roles": list(roles),
                    "method": "ONNX Runtime Entropy",
                    "version": trt.cache_version(target.trt_version),
                }
        dla = opts.get("dla_core")
        command = trt.trtexec_command(
            MODEL_FILE,
            "model.engine",
            precision,
            image_size=size,
            calib_cache=calib_file,
            dla_core=None if dla is None else int(dla),
            workspace_mib=int(opts.get("workspace_mib", 1024)),
            fp16_fallback=bool(opts.get("fp16_fallback", False)),
        )
        trt.write_build_script(out, command)
        record["files"].append("build_engine.sh")
        if str(opts.get("backend", "onnx")) == "torch_tensorrt":
            from anomopt.targets.torch_trt import lower_bundle_command, write_torch_trt_bundle

            record["files"] += write_torch_trt_bundle(graph, out, precision, size)
            record["torch_tensorrt"] = lower_bundle_command(".")
        record["trtexec"] = command
        record["trt_version"] = target.trt_version
        record["runner"] = (
            "onnxruntime CPU running the "
            + (
                "QDQ ONNX (int8 math as TensorRT's explicit quantization)"
                if quantized and mode == "explicit"
                else "FP32 ONNX (TensorRT " + precision.upper() + " is not emulated on the CPU)"
            )
            + " as a functional stand-in for the TensorRT engine"
        )
    else:  # pragma: no cover - specs only name these runtimes
        raise TargetError(f"no lowering for runtime {target.runtime!r}")
    shutil.rmtree(work, ignore_errors=True)
    record["notes"] = notes
    return record


@register_pass
class Lower(Pass):
    """Lower to the target's deployable artifact and route ``graph.predict`` through it."""

    name = "lower"
    provides = frozenset({"lowered"})

    @dataclasses.dataclass
    class Options:
        backend: str = option("onnx", "onnx | torch_tensorrt (adds the torch-tensorrt bundle; Jetson targets)")
        trt_quantization: str = option("explicit", "TensorRT INT8: explicit (Q/DQ) | implicit (calibration cache)")
        use_torch_ranges: bool = option(True, "CPU INT8: conv inputs take the torch quantizers' ranges")
        float_consumers: bool = option(True, "CPU INT8: float consumers read the unquantized tensor, as in torch")
        cache_bins: int = option(512, "histogram bins of the TensorRT implicit calibration cache")
        dla_core: int | None = option(None, "trtexec --useDLACore (Jetson DLA core)")
        workspace_mib: int = option(1024, "trtexec workspace in MiB")
        fp16_fallback: bool = option(False, "trtexec --fp16 beside --int8 (FP16 for layers left float)")
        threads: int | None = option(None, "ONNX Runtime threads of the runner that scores the lowered model")

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        # requires {"calibrated"} at 8 bits only: the bits come with the context, so it is checked here
        if ctx.bits == 8 and "calibrated" not in graph.properties:
            raise PipelineError(
                "pass 'lower' at 8 bits requires ['calibrated'], which no earlier pass provides; "
                "add 'insert_fake_quant' and 'calibrate' before 'lower'"
            )
        if ctx.target is None:
            raise TargetError("pass 'lower' needs a target in the pass context")
        scratch = None
        try:
            with signals_deferred():  # no signal between creating the folder and recording it
                if ctx.workdir:
                    out = Path(ctx.workdir) / f"artifact-{ctx.target.name}-{precision_name(ctx.bits)}"
                else:  # a marked temp folder: removed with the runner, at exit, or by the next run if killed
                    out = scratch = make_work_dir(f"anomopt-{ctx.target.name}-{precision_name(ctx.bits)}-")
            options = dataclasses.asdict(self.options)
            record = lower_graph(graph, ctx.target, ctx.bits, out, ctx.calib_images, options, log=ctx.log)
            runner = OnnxRunner(record["model"], threads=self.options.threads, description=record["runner"])
        except BaseException:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        if scratch is not None:
            weakref.finalize(runner, shutil.rmtree, scratch, True)
        graph.state.artifact = record
        graph.runner = runner
        ctx.note(
            artifact=record["dir"],
            precision=record["precision"],
            runner=record["runner"],
            **({"trtexec": " ".join(record["trtexec"])} if "trtexec" in record else {}),
            **record["notes"],
        )
        return graph
