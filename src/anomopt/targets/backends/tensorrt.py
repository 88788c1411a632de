"""The TensorRT backend (Jetson Xavier NX / Orin): ONNX files, calibration cache, engine-build command.

Three ways to an engine, all from files this module writes (checked here, built on the device):

- **INT8, explicit quantization** (default): the fake-quant graph exported with symmetric int8 quantizers,
  in NVIDIA's placement: QuantizeLinear/DequantizeLinear on every quantized conv's input (per tensor) and
  int8 per-channel (axis 0) weights behind a DequantizeLinear. TensorRT fuses them into int8 convs and
  runs everything else (teacher, head) in the precision the flags allow (FP32 by default).
- **INT8, implicit quantization**: the FP32 ONNX plus a calibration cache (``calib.cache``) in TensorRT's
  text format, with ranges computed by ONNX Runtime's entropy calibrator over the calibration images.
- **FP16**: the FP32 ONNX built with ``--fp16``.

:func:`trtexec_command` gives the exact build command (written as ``build_engine.sh`` into the artifact);
:func:`build_engine` runs the TensorRT Python API where ``import tensorrt`` works and otherwise raises a
:class:`TargetError` with that command. ``lower(backend="torch_tensorrt")`` also writes the bundle that
``torch_tensorrt`` compiles on the device (ExportedProgram, ModelOpt state for INT8, ``build_torch_trt.py``);
:func:`lower_torch_tensorrt` compiles it where ``torch_tensorrt`` imports.
"""

from __future__ import annotations

import os
import shlex
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from anomopt.errors import TargetError
from anomopt.passes.options import option
from anomopt.precision import PRECISION_NAMES
from anomopt.quant.attach import SCOPES, fake_quantizers
from anomopt.targets.backends import register_backend
from anomopt.targets.backends.base import MODEL_FILE, Backend, Lowered, LoweringJob
from anomopt.targets.onnx_export import INPUT_NAME, OnnxExport, export_onnx, role_of_onnx_name

#: TensorRT release -> the version number its calibration caches carry (NV_TENSORRT_VERSION style)
CACHE_VERSIONS = {"8.5": "8502", "8.6": "8601", "10.0": "10000", "10.3": "10300"}
DEFAULT_CALIBRATOR = "EntropyCalibration2"
PRECISIONS = PRECISION_NAMES


def cache_version(trt_version: str | None) -> str:
    """The cache header version for a TensorRT release string (``"8.5"`` -> ``"8502"``)."""
    if trt_version is None:
        return CACHE_VERSIONS["8.5"]
    if trt_version.isdigit():
        return trt_version
    if trt_version in CACHE_VERSIONS:
        return CACHE_VERSIONS[trt_version]
    parts = [int(p) for p in trt_version.split(".")[:3] if p.isdigit()]
    while len(parts) < 3:
        parts.append(0)
    return str(parts[0] * 1000 + parts[1] * 100 + parts[2])


# --------------------------------------------------------------------------------------------- QDQ ONNX


def check_symmetric_int8(model: Any) -> None:
    """Raise unless every enabled quantizer is calibrated, symmetric and 8-bit (what TensorRT runs)."""
    active = [q for q in fake_quantizers(model) if q.enabled]
    if not active:
        raise TargetError("no fake quantizers: run insert_fake_quant and calibrate before the TensorRT INT8 export")
    for q in active:
        if not bool(q.calibrated):
            raise TargetError("a fake quantizer is not calibrated: run the calibrate pass first")
        if not q.scheme.symmetric or q.scheme.bits != 8:
            raise TargetError(
                "TensorRT explicit quantization needs symmetric int8 quantizers; this graph has "
                f"{'asymmetric' if not q.scheme.symmetric else ''} {q.scheme.bits}-bit ones "
                "(a CPU pipeline?). "
                "Use the xavier_nx / orin pipelines, or insert_fake_quant with symmetric_activations=true"
            )


def export_qdq_onnx(graph: Any, path: str | os.PathLike[str], opset: int = 17) -> OnnxExport:
    """Export the fake-quant graph as a TensorRT explicit-quantization (QDQ) ONNX."""
    model = graph.model if hasattr(graph, "model") else graph
    check_symmetric_int8(model)
    exported = export_onnx(graph, path, opset=opset, fake_quant=True)
    info = qdq_summary(onnx.load(str(exported.path)))
    if info["quantize_linear"] == 0 or info["weight_dequantize_linear"] == 0:
        raise TargetError(f"{exported.path}: the export holds no Q/DQ pairs ({info})")
    if info["asymmetric"]:
        raise TargetError(
            f"{exported.path}: non-zero zero points in {info['asymmetric'][:3]}: TensorRT needs symmetric int8"
        )
    exported.notes.update(info)
    return exported


def qdq_summary(proto: onnx.ModelProto) -> dict[str, Any]:
    """Counts of Q/DQ nodes, their zero-point types, per-channel weight DQs and any non-zero zero points."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    consts = dict(inits)
    for n in proto.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    zp_types: set[str] = set()
    asymmetric: list[str] = []
    per_channel = 0
    weight_dq = 0
    for n in q + dq:
        if len(n.input) > 2 and n.input[2] in consts:
            zp = consts[n.input[2]]
            zp_types.add(str(zp.dtype))
            if np.any(zp != 0):
                asymmetric.append(n.name)
    for n in dq:
        src = n.input[0]
        if src in inits or (
            src in producers and producers[src].op_type == "QuantizeLinear" and producers[src].input[0] in inits
        ):
            weight_dq += 1
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            scale = consts.get(n.input[1])
            if scale is not None and scale.size > 1 and axis == 0:
                per_channel += 1
    return {
        "quantize_linear": len(q),
        "dequantize_linear": len(dq),
        "weight_dequantize_linear": weight_dq,
        "per_channel_weights": per_channel,
        "zero_point_types": sorted(zp_types),
        "asymmetric": asymmetric,
    }


# ------------------------------------------------------------------------------------ calibration cache


def write_calibration_cache(
    path: str | os.PathLike[str],
    ranges: dict[str, float],
    version: str = "8502",
    algorithm: str = DEFAULT_CALIBRATOR,
) -> Path:
    """Write a TensorRT calibration cache: a ``TRT-<version>-<algorithm>`` header, then one
    ``tensor: <scale>`` line per tensor, the scale (``amax / 127``) as a big-endian float32 in 8 hex
    digits."""
    lines = [f"TRT-{cache_version(version)}-{algorithm}"]
    for name, amax in ranges.items():
        amax = float(abs(amax))
        if not np.isfinite(amax):
            raise TargetError(f"calibration range of {name!r} is not finite")
        scale = max(amax, 1e-12) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="ascii")
    return out


def read_calibration_cache(path: str | os.PathLike[str]) -> tuple[str, dict[str, float]]:
    """Parse a TensorRT calibration cache: ``(header, {tensor: scale})``."""
    text = Path(path).read_text(encoding="ascii").splitlines()
    if not text or not text[0].startswith("TRT-"):
        raise TargetError(f"{path}: not a TensorRT calibration cache (no 'TRT-' header)")
    scales: dict[str, float] = {}
    for i, line in enumerate(text[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or len(value) != 8:
            raise TargetError(f"{path}: line {i} is not 'tensor: <8 hex digits>': {line!r}")
        scales[name.strip()] = struct.unpack(">f", bytes.fromhex(value))[0]
    return text[0], scales


def tensors_of_roles(proto: onnx.ModelProto, roles: Iterable[str]) -> set[str]:
    """Tensors produced or consumed by nodes of ``roles`` (by scope name), plus the network input."""
    wanted = set(roles)
    keep = {INPUT_NAME}
    for n in proto.graph.node:
        if role_of_onnx_name(n.name) in wanted:
            keep.update(t for t in list(n.input) + list(n.output) if t)
    return keep


def calibration_ranges(
    fp32_onnx: str | os.PathLike[str],
    images: Any,
    roles: Iterable[str] | None = None,
    batch_size: int = 8,
    num_bins: int = 512,
) -> dict[str, float]:
    """``amax`` of the float tensors of the FP32 ONNX over ``images`` with ONNX Runtime's entropy (KL)
    calibration: every tensor (``create_calibrator``), or only those produced or consumed by nodes of
    ``roles`` (plus the network input; same histogram math, fewer tensors tapped)."""
    from onnxruntime.quantization import CalibrationMethod

    from anomopt.targets.backends.onnxruntime import calibrate_tensors, collect_ranges

    if roles is None:
        data = calibrate_tensors(
            fp32_onnx,
            images,
            CalibrationMethod.Entropy,
            op_types=None,
            batch_size=batch_size,
            num_bins=num_bins,
        ).data
    else:
        proto = onnx.load(str(fp32_onnx))
        inits = {t.name for t in proto.graph.initializer}
        tensors = sorted(t for t in tensors_of_roles(proto, roles) if t not in inits)
        data = collect_ranges(
            fp32_onnx,
            images,
            tensors,
            CalibrationMethod.Entropy,
            symmetric=False,
            num_bins=num_bins,
            batch_size=batch_size,
            floats_only=True,
        )
    out: dict[str, float] = {}
    for name, td in data.items():
        lo, hi = td.range_value
        out[name] = float(max(abs(float(np.asarray(lo))), abs(float(np.asarray(hi)))))
    return out


# ------------------------------------------------------------------------------------------- trtexec


def trtexec_command(
    onnx_file: str = "model.onnx",
    engine_file: str = "model.engine",
    precision: str = "int8",
    *,
    image_size: int = 256,
    batch: int = 1,
    calib_cache: str | None = None,
    dla_core: int | None = None,
    workspace_mib: int = 1024,
    fp16_fallback: bool = False,
    trtexec: str = "trtexec",
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``trtexec`` command that builds the engine.

    ``precision`` int8 adds ``--int8`` (explicit Q/DQ, or implicit with ``calib_cache`` -> ``--calib=``);
    fp16 adds ``--fp16``. ``dla_core`` adds ``--useDLACore=N --allowGPUFallback`` (and ``--fp16`` next to
    ``--int8``: the DLA runs no FP32 layer). ``fp16_fallback`` lets non-int8 layers run in FP16.
    """
    if precision not in PRECISIONS:
        raise TargetError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    cmd = [trtexec, f"--onnx={onnx_file}", f"--saveEngine={engine_file}"]
    if precision == "int8":
        cmd.append("--int8")
        if calib_cache:
            cmd.append(f"--calib={calib_cache}")
        if fp16_fallback or dla_core is not None:
            cmd.append("--fp16")
    elif precision == "fp16":
        cmd.append("--fp16")
    if calib_cache and precision != "int8":
        raise TargetError("a calibration cache only applies to int8 builds")
    if dla_core is not None:
        if int(dla_core) < 0:
            raise TargetError(f"dla_core must be 0 or 1 on Jetson, not {dla_core}")
        cmd += [f"--useDLACore={int(dla_core)}", "--allowGPUFallback"]
    cmd.append(f"--memPoolSize=workspace:{int(workspace_mib)}")
    cmd.append(f"--shapes={INPUT_NAME}:{int(batch)}x3x{int(image_size)}x{int(image_size)}")
    cmd += list(extra)
    return cmd


def build_script(command: Sequence[str]) -> str:
    """A ``build_engine.sh`` running ``command`` from the artifact folder (``TRTEXEC`` overrides the
    binary)."""
    args = " ".join(shlex.quote(a) for a in command[1:])
    return (
        "#!/usr/bin/env bash\n"
        "# Build the TensorRT engine on the target device (Jetson): run from anywhere.\n"
        "# JetPack installs trtexec in /usr/src/tensorrt/bin; set TRTEXEC=/path/to/trtexec to override.\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"\n'
        f'"$TRTEXEC" {args} "$@"\n'
    )


def write_build_script(folder: str | os.PathLike[str], command: Sequence[str]) -> Path:
    """Write ``build_engine.sh`` (executable) into ``folder``."""
    path = Path(folder) / "build_engine.sh"
    path.write_text(build_script(command), encoding="utf-8")
    path.chmod(0o755)
    return path


def _tensorrt_missing(command: Sequence[str]) -> TargetError:
    return TargetError(
        "TensorRT is not installed here (import tensorrt failed); build the engine on the Jetson "
        "(JetPack ships TensorRT) from the artifact folder with:\n  " + " ".join(shlex.quote(a) for a in command)
    )


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    precision: str = "int8",
    *,
    image_size: int = 256,
    batch: int = 1,
    calib_cache: str | os.PathLike[str] | None = None,
    dla_core: int | None = None,
    workspace_mib: int = 1024,
    fp16_fallback: bool = False,
) -> Path:
    """Build a serialized engine with the TensorRT Python API (needs ``tensorrt`` and a GPU/DLA)."""
    command = trtexec_command(
        Path(onnx_path).name,
        Path(engine_path).name,
        precision,
        image_size=image_size,
        batch=batch,
        calib_cache=Path(calib_cache).name if calib_cache else None,
        dla_core=dla_core,
        workspace_mib=workspace_mib,
        fp16_fallback=fp16_fallback,
    )
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise _tensorrt_missing(command) from None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TargetError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if fp16_fallback or dla_core is not None:
            config.set_flag(trt.BuilderFlag.FP16)
        if calib_cache is not None:
            config.int8_calibrator = _cache_calibrator(trt, Path(calib_cache))
    elif precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    shape = (int(batch), 3, int(image_size), int(image_size))
    profile.set_shape(INPUT_NAME, shape, shape, shape)
    config.add_optimization_profile(profile)
    if calib_cache is not None and precision == "int8":
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TargetError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    out = Path(engine_path)
    out.write_bytes(bytes(serialized))
    return out


def _cache_calibrator(trt: Any, cache: Path) -> Any:
    """An IInt8EntropyCalibrator2 that only replays ``cache`` (no calibration batches on the device)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return cache.read_bytes()

        def write_calibration_cache(self, data: bytes) -> None:
            return None

    return CacheCalibrator()


# --------------------------------------------------------------------------------------- torch-tensorrt


def lower_torch_tensorrt(
    graph: Any,
    precision: str = "fp16",
    image_size: int | None = None,
    batch: int = 1,
    out_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the torch-tensorrt bundle (:mod:`anomopt.targets.torch_trt`) into ``out_dir`` and compile it
    with ``torch_tensorrt`` where it imports and a CUDA device is visible; returns the saved
    ``model_trt.ep``. Elsewhere raises a :class:`TargetError` naming the script to run on the device.

    ``lower(backend="torch_tensorrt")`` writes the same bundle into the artifact without compiling.
    INT8 needs the ModelOpt quantizer (``modelopt_quantize``): torch-tensorrt compiles only its quantizers.
    """
    import runpy
    import tempfile

    from anomopt.targets.torch_trt import ENGINE_FILE, SCRIPT, write_torch_trt_bundle

    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="anomopt-torch-trt-"))
    write_torch_trt_bundle(graph, folder, precision, image_size, batch)
    try:
        import torch_tensorrt  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        raise TargetError(
            "backend='torch_tensorrt' needs the torch_tensorrt package (not installed here); the bundle is in "
            f"{folder}: copy it to the device and run python3 {SCRIPT} there (or use the ONNX + trtexec path)"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise TargetError(f"torch_tensorrt needs a CUDA device; none is visible (bundle: {folder})")
    main = runpy.run_path(str(folder / SCRIPT))["main"]
    if main([]) != 0:
        raise TargetError(f"torch_tensorrt compile of {folder} failed (see the messages above)")
    return folder / ENGINE_FILE


# ------------------------------------------------------------------------------------------- backend


@register_backend
class TensorRTBackend(Backend):
    """TensorRT on Jetson: the ONNX TensorRT builds from, a calibration cache for implicit INT8, and
    ``build_engine.sh`` (the ``trtexec`` command run on the device).

    Options: ``trt_quantization`` (explicit|implicit), ``cache_bins`` (histogram bins of the implicit
    cache), ``dla_core`` (one of the target's ``dla_cores``), ``workspace_mib``, ``fp16_fallback``, and the
    common ``backend = "torch_tensorrt"`` (also write the torch-tensorrt bundle)."""

    runtime = "tensorrt"
    description = "TensorRT (Jetson): QDQ ONNX (explicit INT8) or FP32 ONNX (+ calib.cache), build_engine.sh"

    @dataclass
    class Options:
        trt_quantization: str = option("explicit", "TensorRT INT8: explicit (Q/DQ) | implicit (calibration cache)")
        cache_bins: int = option(512, "histogram bins of the TensorRT implicit calibration cache")
        dla_core: int | None = option(None, "trtexec --useDLACore (Jetson DLA core)")
        workspace_mib: int = option(1024, "trtexec workspace in MiB")
        fp16_fallback: bool = option(False, "trtexec --fp16 beside --int8 (FP16 for layers left float)")

    def lower(self, job: LoweringJob) -> Lowered:
        opts = job.options
        mode = str(opts["trt_quantization"])
        if mode not in ("explicit", "implicit"):
            raise TargetError(f"trt_quantization must be 'explicit' or 'implicit', not {mode!r}")
        if job.quantizer == "modelopt" and mode != "explicit":
            raise TargetError(
                "a ModelOpt-quantized graph lowers to TensorRT explicit quantization only "
                "(xavier_nx / orin, trt_quantization='explicit')"
            )
        dla = self._dla_core(job)
        job.say(f"lower: TensorRT {job.precision.label} ONNX ({mode if job.quantized else 'no'} quantization)")
        lowered = self._write_onnx(job, mode)
        calib_file = "calib.cache" if "calib.cache" in lowered.files else None
        command = trtexec_command(
            MODEL_FILE,
            "model.engine",
            job.precision.value,
            image_size=job.image_size,
            calib_cache=calib_file,
            dla_core=dla,
            workspace_mib=int(opts["workspace_mib"]),
            fp16_fallback=bool(opts["fp16_fallback"]),
        )
        write_build_script(job.out, command)
        lowered.files.append("build_engine.sh")
        if opts["backend"] == "torch_tensorrt":
            from anomopt.targets.torch_trt import lower_bundle_command, write_torch_trt_bundle

            lowered.files += write_torch_trt_bundle(job.graph, job.out, job.precision.value, job.image_size)
            lowered.record["torch_tensorrt"] = lower_bundle_command(".")
        lowered.record.update(trtexec=command, trt_version=job.target.trt_version)
        lowered.meta["tensorrt"] = {
            "version": job.target.trt_version,
            "sm": job.target.sm,
            "quantization": lowered.record.get("quantization"),
            "trtexec": command,
        }
        return lowered

    @staticmethod
    def _dla_core(job: LoweringJob) -> int | None:
        """The ``dla_core`` option, checked against the target's DLA cores."""
        dla = job.options["dla_core"]
        if dla is None:
            return None
        cores = int(job.target.dla_cores)
        if not 0 <= int(dla) < cores:
            have = f"DLA cores 0-{cores - 1}" if cores else "no DLA core"
            raise TargetError(f"dla_core {dla}: target {job.target.name!r} has {have}")
        return int(dla)

    @staticmethod
    def _write_onnx(job: LoweringJob, mode: str) -> Lowered:
        """``model.onnx`` (QDQ for explicit INT8, else FP32) and, for implicit INT8, ``calib.cache``."""
        files = [MODEL_FILE]
        record: dict[str, Any] = {}
        notes: dict[str, Any] = {}
        if job.quantized and job.quantizer == "modelopt":
            from anomopt.targets.modelopt_quant import export_modelopt_qdq

            notes["export"] = export_modelopt_qdq(job.graph, job.model_path, opset=job.opset).notes
            record["quantization"] = "explicit (Q/DQ in the ONNX, NVIDIA ModelOpt placement and calibration)"
        elif job.quantized and mode == "explicit":
            notes["export"] = export_qdq_onnx(job.graph, job.model_path, opset=job.opset).notes
            record["quantization"] = "explicit (Q/DQ in the ONNX)"
        else:
            notes["export"] = export_onnx(job.graph, job.model_path, opset=job.opset).notes
            if job.quantized:
                notes["calibration_cache"] = _write_implicit_cache(job)
                files.append("calib.cache")
                record["quantization"] = "implicit (calibration cache)"
        emulated = (
            "QDQ ONNX (int8 math as TensorRT's explicit quantization)"
            if job.quantized and mode == "explicit"
            else f"FP32 ONNX (TensorRT {job.precision.label} is not emulated on the CPU)"
        )
        runner = f"onnxruntime CPU running the {emulated} as a functional stand-in for the TensorRT engine"
        return Lowered(files=files, runner=runner, notes=notes, record=record)


def _write_implicit_cache(job: LoweringJob) -> dict[str, Any]:
    """``calib.cache`` beside the FP32 ``model.onnx``: entropy ranges of the quantized roles' tensors."""
    if job.calib_images is None:
        raise TargetError("TensorRT implicit INT8 needs calibration images for the cache")
    quant = job.graph.state.quant
    roles = SCOPES.get(quant.scope if quant is not None else "student", ("student",))
    ranges = calibration_ranges(job.model_path, job.calib_images, roles=roles, num_bins=int(job.options["cache_bins"]))
    version = cache_version(job.target.trt_version)
    write_calibration_cache(job.out / "calib.cache", ranges, version=version)
    return {"tensors": len(ranges), "roles": list(roles), "method": "ONNX Runtime Entropy", "version": version}
