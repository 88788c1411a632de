"""Write the deployable artifact folder of an optimized model.

Layout (written atomically: a reader sees the old folder or the complete new one)::

    model.onnx        the model to deploy on the target (INT8 QDQ, or FP32 for FP16/FP32 builds)
    meta.json         what the runtime needs: input/output contract, per-category normalization, hashes
    report.json       the optimization report (per-pass drift, calibration, quant scheme, sizes)
    calib.cache       TensorRT implicit INT8 only
    build_engine.sh   TensorRT targets: the trtexec command to run on the device

If the pipeline ended with ``lower``, its files are reused; otherwise the graph is lowered here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from anomopt import __version__
from anomopt.io import atomic_dir
from anomopt.outputs import dir_mode, make_work_dir, prepare_output_dir
from anomopt.runtime.predictor import (
    ARTIFACT_FORMAT,
    ARTIFACT_FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    sha256_file,
)
from anomopt.targets.lower import lower_graph, precision_name
from anomopt.targets.onnx_export import INPUT_NAME, MAP_NAME, SCORE_NAME


def _jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, paths, dataclasses' dicts and the like."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _relative_to_artifact(value: Any, lowered_dir: Path) -> Any:
    """``value`` with every path into the lowering folder (a work folder, often deleted after saving)
    rewritten relative to the artifact folder, which holds copies of those files (``"."`` = the folder)."""
    prefix = str(lowered_dir)
    if isinstance(value, dict):
        return {k: _relative_to_artifact(v, lowered_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_to_artifact(v, lowered_dir) for v in value]
    if isinstance(value, str) and prefix in value:
        return "." if value == prefix else value.replace(prefix + "/", "").replace(prefix, ".")
    return value


def _lowered_record(optimized_model: Any) -> dict[str, Any] | None:
    record = optimized_model.graph.state.artifact
    if not isinstance(record, dict):
        return None
    if record.get("target") != optimized_model.target.name or record.get("precision") != precision_name(
        optimized_model.bits
    ):
        return None
    if not Path(record.get("model", "")).is_file():
        return None
    return record


def _record(value: Any) -> Any:
    """A graph-state record (``to_dict()``) or None, as plain data."""
    return None if value is None else _jsonable(value.to_dict())


def save_artifact(optimized_model: Any, out_dir: Path, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Write ``optimized_model``'s deployable folder to ``out_dir``; returns the folder.

    ``out_dir`` is replaced whole only when it is missing, empty or an earlier artifact (else it needs
    ``overwrite``), never when it holds one of ``inputs`` or the working folder, and under a lock
    (:func:`anomopt.outputs.prepare_output_dir`).
    """
    with prepare_output_dir(out_dir, "artifact", overwrite=overwrite, inputs=inputs, flag="output"):
        return _save(optimized_model, Path(out_dir))


def _save(optimized_model: Any, out_dir: Path) -> Path:
    graph = optimized_model.graph
    target = optimized_model.target
    bits = int(optimized_model.bits)
    record = _lowered_record(optimized_model)
    lowered_here = record is None
    scratch = None
    if record is None:
        scratch = make_work_dir("anomopt-save-")
        calib = None
        extra_notes = {}
        if bits == 8 and target.runtime == "onnxruntime":
            from anomopt.calibration_data import noise_images

            cfg = graph.model.config
            calib = noise_images(32, cfg.image_size, cfg.backbone, seed=0)
            extra_notes["ort_calibration_images"] = (
                "random-normal noise (32): the model was not lowered by the pipeline, so no calibration "
                "images were kept; conv inputs still use the calibrated torch ranges. Add the 'lower' pass "
                "to lower with the calibration images."
            )
        record = lower_graph(graph, target, bits, scratch, calib)
        record["notes"].update(extra_notes)
    try:
        src = Path(record["dir"])
        cfg = graph.model.config
        size = int(cfg.image_size)
        with atomic_dir(out_dir) as tmp:
            for name in record["files"]:
                shutil.copyfile(src / name, tmp / name)
                if name.endswith(".sh"):
                    (tmp / name).chmod(dir_mode())  # executable, as the umask allows (0755)
            report = dict(optimized_model.report)
            report["artifact"] = {k: v for k, v in record.items() if k not in ("dir", "model")}
            report["artifact"]["lowered_at_save"] = lowered_here
            report = _relative_to_artifact(_jsonable(report), src)
            (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
            files = {}
            for path in sorted(tmp.iterdir()):
                if path.is_file() and path.name != META_FILE:
                    files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            meta = {
                "format": ARTIFACT_FORMAT,
                "format_version": ARTIFACT_FORMAT_VERSION,
                "anomopt_version": __version__,
                "model": cfg.model,
                "backbone": cfg.backbone,
                "model_config": _jsonable(cfg.to_dict()),
                "target": target.name,
                "runtime": target.runtime,
                "precision": precision_name(bits),
                "image_size": size,
                "input": {
                    "name": INPUT_NAME,
                    "shape": ["N", 3, size, size],
                    "dtype": "float32",
                    "range": [0.0, 1.0],
                    "layout": "NCHW RGB",
                },
                "outputs": {
                    "score": {"name": SCORE_NAME, "shape": ["N"], "dtype": "float32"},
                    "map": {"name": MAP_NAME, "shape": ["N", 1, size, size], "dtype": "float32"},
                },
                "categories": list(optimized_model.categories),
                "normalization": _jsonable(optimized_model.normalization),
                # which model the statistics and thresholds were fitted on, on which images, by which policy
                "normalization_source": _jsonable(optimized_model.normalization_source),
                "calibration": _record(graph.state.calibration),
                "quant": _record(graph.state.quant) if bits == 8 else None,
                "kept_fp": list(graph.state.kept_fp),
                "pipeline": optimized_model.pipeline.name,
                "files": files,
            }
            if target.runtime == "tensorrt":
                meta["tensorrt"] = {
                    "version": target.trt_version,
                    "sm": target.sm,
                    "quantization": record.get("quantization"),
                    "trtexec": record.get("trtexec"),
                }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return Path(out_dir)


__all__ = ["MODEL_FILE", "save_artifact"]
