"""torch-tensorrt bundle: what a Jetson user compiles with ``torch_tensorrt`` on the device.

``lower(backend="torch_tensorrt")`` writes, next to the ONNX artifact (same folder):

- ``model.pt2``: the ``torch.export`` ExportedProgram of the optimized FP32 graph (BN folded, quantizers
  off), input ``[1, 3, S, S]`` float32 in [0, 1], outputs ``(score[N], anomaly_map[N, 1, S, S])``;
- INT8 only (needs the ModelOpt quantizer, the only INT8 input torch-tensorrt takes):
  ``modelopt_state.pth`` (``mto.save``: ModelOpt's quantizer config + the folded weights and amax) and
  the model config, from which ``anomopt`` rebuilds the quantized module on the device
  (:func:`restore_modelopt_model`): its ``torch.export`` needs torch-tensorrt's quantize op, so it is
  exported there;
- ``torch_trt.json``: precision, input shape, versions;
- ``build_torch_trt.py``: the exact build script: loads the above, calls ``torch_tensorrt.dynamo.compile``
  with the precision's ``enabled_precisions``, checks the compiled module against the source on one
  input and saves ``model_trt.ep`` with ``torch_tensorrt.save``. ``--dry-run`` does everything up to the
  ``torch_tensorrt`` import (loads, runs on the CPU, prints the settings): tested here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomopt.errors import TargetError
from anomopt.precision import PRECISION_NAMES

META = "torch_trt.json"
SCRIPT = "build_torch_trt.py"
ENGINE_FILE = "model_trt.ep"


@contextlib.contextmanager
def all_quantizers_off(model: nn.Module) -> Iterator[None]:
    """anomopt's and ModelOpt's quantizers switched off for the block (the FP32 graph), restored after."""
    from anomopt.quant.attach import quantizers_disabled
    from anomopt.targets.modelopt_quant import modelopt_quantizers

    mo = list(modelopt_quantizers(model).values())
    try:
        for q in mo:
            q.disable()
        with quantizers_disabled(model):
            yield
    finally:
        for q in mo:
            q.enable()


def write_torch_trt_bundle(
    graph: Any, out_dir: str | os.PathLike[str], precision: str, image_size: int | None = None, batch: int = 1
) -> list[str]:
    """Write the bundle into ``out_dir``; returns the file names written."""
    from anomopt.targets.modelopt_quant import modelopt_quantizers

    if precision not in PRECISION_NAMES:
        raise TargetError(f"precision must be one of {', '.join(PRECISION_NAMES)}, not {precision!r}")
    model = graph.model if hasattr(graph, "model") else graph
    size = int(image_size or model.config.image_size)
    modelopt = bool(modelopt_quantizers(model))
    if precision == "int8" and not modelopt:
        raise TargetError(
            "backend='torch_tensorrt' at INT8 needs the ModelOpt quantizer (torch-tensorrt compiles ModelOpt "
            "quantizers only): use the '<target>-int8-modelopt' pipeline, or the QDQ ONNX + build_engine.sh"
        )
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.rand(int(batch), 3, size, size, generator=torch.Generator().manual_seed(0))
    model.eval()
    with all_quantizers_off(model), torch.no_grad():
        try:
            program = torch.export.export(model, (example,))
        except Exception as err:  # torch.export raises many types
            raise TargetError(f"torch.export of the model failed: {type(err).__name__}: {str(err)[:300]}") from err
        torch.export.save(program, str(folder / "model.pt2"))
    files = ["model.pt2"]
    meta: dict[str, Any] = {
        "format": "anomopt-torch-trt-bundle",
        "precision": precision,
        "input": {"name": "images", "shape": [int(batch), 3, size, size], "dtype": "float32", "range": [0, 1]},
        "outputs": ["score", "anomaly_map"],
        "exported_with": {"torch": torch.__version__},
        "engine": ENGINE_FILE,
    }
    if precision == "int8":
        import modelopt
        import modelopt.torch.opt as mto

        mto.save(model, str(folder / "modelopt_state.pth"))
        files.append("modelopt_state.pth")
        meta["exported_with"]["modelopt"] = str(getattr(modelopt, "__version__", "?"))
        meta["model_config"] = model.config.to_dict()
        meta["fold_batchnorm"] = True
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (folder / SCRIPT).write_text(BUILD_SCRIPT, encoding="utf-8")
    (folder / SCRIPT).chmod(0o755)
    files += [META, SCRIPT]
    return files


def restore_modelopt_model(folder: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the ModelOpt-quantized model of an INT8 bundle: the architecture from ``torch_trt.json``,
    BatchNorm folded as the pipeline did, then ``mto.restore`` (quantizers, folded weights, amax)."""
    import modelopt.torch.opt as mto

    from anomopt.graph import capture
    from anomopt.models import model_from_config
    from anomopt.passes.base import PassContext
    from anomopt.passes.fold_bn import FoldBatchNorm

    folder = Path(folder)
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    if "model_config" not in meta:
        raise TargetError(f"{folder / META}: no model_config: not an INT8 (ModelOpt) bundle")
    model = model_from_config(meta["model_config"], pretrained=False).eval()
    size = int(meta["input"]["shape"][-1])
    graph = capture(model, torch.zeros(1, 3, size, size))
    if meta.get("fold_batchnorm", True):
        graph = FoldBatchNorm().run(graph, PassContext())
    return mto.restore(graph.model, str(folder / "modelopt_state.pth")).eval()


def lower_bundle_command(folder: str | os.PathLike[str]) -> str:
    """The command a Jetson user runs to compile the bundle."""
    return f"python3 {Path(folder) / SCRIPT}"


BUILD_SCRIPT = r'''#!/usr/bin/env python3
"""Compile this anomopt model with torch-tensorrt on the device (Jetson / a CUDA GPU); written by anomopt.

    python3 build_torch_trt.py                 # -> model_trt.ep beside this script
    python3 build_torch_trt.py --dry-run       # everything up to the torch_tensorrt import, on the CPU

Needs torch + torch-tensorrt matching the device's TensorRT (JetPack); INT8 bundles also need anomopt and
nvidia-modelopt (the ModelOpt-quantized module is rebuilt and exported on the device).
Load the result with: torch.export.load("model_trt.ep").module()(images.cuda())
"""

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PRECISIONS = {"fp32": {torch.float32}, "fp16": {torch.float32, torch.float16},
              "int8": {torch.float32, torch.float16, torch.int8}}


def load_source(meta, device):
    """The module to compile and how to export it: (module or ExportedProgram, needs_export)."""
    if meta["precision"] == "int8":
        from anomopt.targets.torch_trt import restore_modelopt_model

        return restore_modelopt_model(HERE).to(device), True
    return torch.export.load(str(HERE / "model.pt2")), False


def settings(meta, args):
    return {
        "enabled_precisions": sorted(str(p) for p in PRECISIONS[args.precision]),
        "input_shape": meta["input"]["shape"],
        "workspace_size": args.workspace_mib << 20,
        "output": str(Path(args.out).resolve()),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description="compile the anomopt bundle with torch-tensorrt")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=None, help="default: the bundle's")
    p.add_argument("--out", default=str(HERE / "model_trt.ep"))
    p.add_argument("--workspace-mib", type=int, default=1024)
    p.add_argument("--dry-run", action="store_true", help="load and run the source on the CPU, print the plan")
    args = p.parse_args(argv)
    meta = json.loads((HERE / "torch_trt.json").read_text())
    args.precision = args.precision or meta["precision"]
    if args.precision == "int8" and meta["precision"] != "int8":
        print("this bundle holds no ModelOpt quantizers: INT8 needs the '-int8-modelopt' pipeline", file=sys.stderr)
        return 2
    shape = tuple(meta["input"]["shape"])
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    if args.dry_run:
        source, needs_export = load_source(meta, "cpu")
        module = source if needs_export else source.module()
        with torch.no_grad():
            score, amap = module(x)
        print(json.dumps({"dry_run": True, "precision": args.precision, **settings(meta, args),
                          "cpu_score": [float(s) for s in score], "map_shape": list(amap.shape)}))
        return 0
    try:
        import torch_tensorrt
    except ImportError as err:
        print(f"torch_tensorrt does not import here ({err}): install the torch-tensorrt build matching this "
              "device's torch and TensorRT (JetPack), then run this script again", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch-tensorrt needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    source, needs_export = load_source(meta, "cuda")
    xc = x.cuda()
    if needs_export:
        from modelopt.torch.quantization.utils import export_torch_mode

        with export_torch_mode(), torch.no_grad():
            program = torch.export.export(source, (xc,))
    else:
        program = torch.export.export(source.module().cuda(), (xc,))
    compiled = torch_tensorrt.dynamo.compile(
        program,
        inputs=[torch_tensorrt.Input(shape, dtype=torch.float32)],
        enabled_precisions=PRECISIONS[args.precision],
        workspace_size=args.workspace_mib << 20,
    )
    with torch.no_grad():
        ref = program.module()(xc)[0].float()
        got = compiled(xc)[0].float()
    rel = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
    torch_tensorrt.save(compiled, args.out, inputs=[xc])
    print(json.dumps({"saved": args.out, "precision": args.precision, "score_rel_l2_vs_torch": rel,
                      "gpu": torch.cuda.get_device_name(0)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''
