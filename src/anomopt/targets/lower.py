"""The ``lower`` pass: turn the optimized torch graph into the deployable files of its target.

:func:`lower_graph` checks the precision against the target row, picks the row's backend
(:mod:`anomopt.targets.backends`: ``onnxruntime.py`` for ``cpu``, ``tensorrt.py`` for the Jetsons), lets it
write the files, checks the lowered ``model.onnx`` against the row's ``supported_ops``, and returns the
artifact record that :func:`anomopt.targets.artifact.save_artifact` writes out.

The pass sets ``graph.runner`` to an ONNX Runtime runner over the produced ONNX, so the pass manager
measures the drift of the real artifact. TensorRT artifacts run in ONNX Runtime on the CPU as a functional
stand-in (the QDQ ONNX computes the int8 math TensorRT runs; FP16 is not emulated) and the notes say so.

Options: ``threads`` (runner), ``backend`` (``onnx`` | ``torch_tensorrt``), and the options the target's
backend declares (ONNX Runtime: ``float_consumers``, ``use_torch_ranges``, ``keep_fp32_onnx``; TensorRT:
``trt_quantization``, ``cache_bins``, ``dla_core``, ``workspace_mib``, ``fp16_fallback``). ``Lower.Options``
is made from those declarations (types, defaults, docs: :func:`lower_options`), so the defaults live in the
backends only.
An option the backend does not read is a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import typing
import weakref
from pathlib import Path
from typing import Any

import onnx
import torch

from anomopt.errors import PipelineError, TargetError
from anomopt.graph import ModelGraph
from anomopt.outputs import make_work_dir, signals_deferred
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass
from anomopt.precision import Precision
from anomopt.runtime.predictor import OnnxRunner
from anomopt.targets.backends import LoweringJob, backend_option_names, builtin_runtimes, get_backend
from anomopt.targets.backends.base import CommonOptions, option_defaults
from anomopt.targets.spec import TargetSpec

BUNDLES = ("onnx", "torch_tensorrt")


def lower_graph(
    graph: ModelGraph,
    target: TargetSpec,
    bits: int | Precision,
    out_dir: str | Path,
    calib_images: torch.Tensor | None = None,
    options: dict[str, Any] | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write the artifact files for ``target`` at ``bits`` into ``out_dir``; returns the artifact record
    (folder, files, precision, runtime, runner description, notes) that
    :func:`anomopt.targets.artifact.save_artifact` writes out. ``log``: an optional ``callable(str)``
    told about each step (progress)."""
    precision = target.check_bits(bits)
    backend = get_backend(target.runtime)
    opts = backend.resolve_options(options, target.name)
    if str(opts["backend"]) not in BUNDLES:
        raise TargetError(f"lower: backend must be 'onnx' or 'torch_tensorrt', not {opts['backend']!r}")
    if precision is Precision.INT8 and not graph.state.quantized_layers:
        raise TargetError("INT8 lowering needs the insert_fake_quant and calibrate passes before 'lower'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = LoweringJob(graph, target, precision, out, out / "_work", calib_images, opts, log or (lambda _msg: None))
    job.work.mkdir(exist_ok=True)
    try:
        lowered = backend.lower(job)
    finally:
        shutil.rmtree(job.work, ignore_errors=True)
    check_supported_ops(job.model_path, target)
    return {
        "dir": str(out),
        "model": str(job.model_path),
        "target": target.name,
        "runtime": target.runtime,
        "precision": precision.value,
        "image_size": job.image_size,
        "opset": job.opset,
        "files": list(lowered.files),
        "runner": lowered.runner,
        **lowered.record,
        "meta": lowered.meta,
        "notes": lowered.notes,
    }


def check_supported_ops(model_path: str | Path, target: TargetSpec) -> None:
    """Raise a :class:`TargetError` naming the op types of ``model_path`` that ``target``'s runtime is not
    listed to run (its row's ``supported_ops``)."""
    ops = {n.op_type for n in onnx.load(str(model_path), load_external_data=False).graph.node}
    missing = target.unsupported_ops(ops)
    if missing:
        raise TargetError(
            f"{Path(model_path).name}: target {target.name!r} ({target.runtime}) does not list the ONNX op(s) "
            f"{', '.join(missing)} in its supported_ops; add them to its row in anomopt/targets/spec.py once "
            "the runtime is known to run them, or change the model"
        )


@functools.cache
def lower_options() -> type:
    """The ``lower`` pass's options dataclass: the common options and each built-in backend's, with the
    types, defaults and docs the backends declare (:mod:`anomopt.targets.backends`), so a default lives in
    one place. Made once, on first use (it imports the built-in backends)."""
    sources = [("common", CommonOptions)]
    for runtime in builtin_runtimes():
        declared = type(get_backend(runtime)).Options
        if declared is not None:
            sources.append((runtime, declared))
    specs: dict[str, tuple[str, Any, Any, str]] = {}  # name: (declared by, type, default, doc)
    for owner, cls in sources:
        hints, defaults = typing.get_type_hints(cls), option_defaults(cls)
        for f in dataclasses.fields(cls):
            if f.name not in specs:
                specs[f.name] = (owner, hints[f.name], defaults[f.name], str(f.metadata.get("doc", "")))
            elif specs[f.name][1:3] != (hints[f.name], defaults[f.name]):  # one option name, one meaning
                raise TargetError(
                    f"lower option {f.name!r} is declared by {specs[f.name][0]} and {owner} with different "
                    "types or defaults; rename one"
                )
    made = dataclasses.make_dataclass(
        "Options", [(name, hint, option(default, doc)) for name, (_, hint, default, doc) in specs.items()]
    )
    made.__module__, made.__qualname__ = __name__, "Lower.Options"
    made.__doc__ = "The options of the ``lower`` pass (made by :func:`lower_options`)."
    return made


class _FromBackends:
    """``Lower.Options``: :func:`lower_options`, made when first read (importing ``lower`` stays light)."""

    def __get__(self, obj: Any, owner: Any) -> type:
        return lower_options()


@register_pass
class Lower(Pass):
    """Lower to the target's deployable artifact and route ``graph.predict`` through it."""

    name = "lower"
    provides = frozenset({"lowered"})

    Options = _FromBackends()  # type: ignore[assignment]  # the common and built-in backends' options

    def configure(self, **options: Any) -> None:
        """The typed options (:func:`lower_options`: the common and built-in backends' ones), plus any option
        another registered backend declares (a new runtime's own options need no change here); the target's
        backend checks them when the pass runs."""
        declared = {f.name for f in dataclasses.fields(self.Options)} | set(self.TOLERANCE_KEYS)
        extra = {k: options.pop(k) for k in list(options) if k not in declared and k in backend_option_names()}
        super().configure(**options)
        self.backend_options: dict[str, Any] = {**getattr(self, "backend_options", {}), **extra}

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
                    out = Path(ctx.workdir) / f"artifact-{ctx.target.name}-{Precision.from_bits(ctx.bits)}"
                else:  # a marked temp folder: removed with the runner, at exit, or by the next run if killed
                    out = scratch = make_work_dir(f"anomopt-{ctx.target.name}-{Precision.from_bits(ctx.bits)}-")
            # only the options the pipeline gave: the target's backend fills its own defaults and refuses
            # an option it does not read (a TensorRT option on the cpu target, say)
            record = lower_graph(
                graph,
                ctx.target,
                ctx.bits,
                out,
                ctx.calib_images,
                {**self.given_options, **self.backend_options},
                log=ctx.log,
            )
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
