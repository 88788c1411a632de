"""Write the deployable artifact folder of an optimized model.

Layout (written atomically: a reader sees the old folder or the complete new one)::

    model.onnx        the model to deploy on the target (INT8 QDQ, or FP32 for FP16/FP32 builds)
    meta.json         what the runtime needs: input/output contract, per-category normalization, hashes
    report.json       the optimization report (per-pass drift, calibration, quant scheme, sizes)
    calib.cache       TensorRT implicit INT8 only
    build_engine.sh   TensorRT targets: the trtexec command to run on the device

It writes what :func:`anomopt.api.optimize` produced (the files its ``lower`` step wrote, the report, the
thresholds) and nothing more: a model that was never lowered is an error, not lowered here. The backend
that lowered it adds its own ``meta.json`` entries (TensorRT: version, sm, quantization, trtexec command).
The format id and version and the file names live in :mod:`anomopt.runtime.predictor`, the torch-free
reader; the input/output tensor names come from :mod:`anomopt.targets.onnx_export`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from anomopt import __version__
from anomopt.errors import TargetError
from anomopt.io import atomic_dir
from anomopt.outputs import dir_mode, prepare_output_dir
from anomopt.precision import Precision
from anomopt.runtime.predictor import (
    ARTIFACT_FORMAT,
    ARTIFACT_FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    sha256_file,
)
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


def _lowered_record(optimized_model: Any) -> dict[str, Any]:
    """The artifact record ``optimize()`` left on the graph; a :class:`TargetError` when it is missing
    or is not for this target and precision."""
    record = optimized_model.graph.state.artifact
    target = optimized_model.target
    precision = Precision.from_bits(int(optimized_model.bits))
    if not isinstance(record, dict):
        raise TargetError(
            f"nothing to save: the {optimized_model.pipeline.name!r} pipeline did not lower the model; add the "
            "'lower' pass at its end (or pass val=... / data_root=..., which lowers it to re-fit thresholds)"
        )
    if record.get("target") != target.name or record.get("precision") != precision.value:
        raise TargetError(
            f"nothing to save: the model was lowered for {record.get('target')} {record.get('precision')}, "
            f"not {target.name} {precision.value}"
        )
    if not Path(record.get("model", "")).is_file():
        raise TargetError(f"nothing to save: the lowered model {record.get('model')} is gone (its folder was removed)")
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
    record = _lowered_record(optimized_model)  # before touching out_dir
    with (
        prepare_output_dir(out_dir, "artifact", overwrite=overwrite, inputs=inputs, flag="output"),
        atomic_dir(Path(out_dir)) as tmp,
    ):
        _copy_files(record, tmp)
        (tmp / "report.json").write_text(_dumps(_report(optimized_model, record)))
        meta = _meta(optimized_model, record, _file_hashes(tmp))
        (tmp / META_FILE).write_text(_dumps(meta))
    return Path(out_dir)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _copy_files(record: dict[str, Any], folder: Path) -> None:
    """The lowered files, into the artifact folder being written."""
    src = Path(record["dir"])
    for name in record["files"]:
        shutil.copyfile(src / name, folder / name)
        if name.endswith(".sh"):
            (folder / name).chmod(dir_mode())  # executable, as the umask allows (0755)


def _report(optimized_model: Any, record: dict[str, Any]) -> dict[str, Any]:
    """``report.json``: the optimization report, with the lowering record's paths made relative."""
    report = dict(optimized_model.report)
    report["artifact"] = {k: v for k, v in record.items() if k not in ("dir", "model", "meta")}
    return _relative_to_artifact(_jsonable(report), Path(record["dir"]))


def _file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """SHA-256 and size of every file written so far (``meta.json`` itself excluded)."""
    return {
        path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != META_FILE
    }


def _meta(optimized_model: Any, record: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """``meta.json``: what the runtime needs (contract, thresholds, hashes) and where the model came from."""
    graph = optimized_model.graph
    cfg = graph.model.config
    size = int(cfg.image_size)
    quantized = record["precision"] == Precision.INT8.value
    return {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "anomopt_version": __version__,
        "model": cfg.model,
        "backbone": cfg.backbone,
        "model_config": _jsonable(cfg.to_dict()),
        "target": record["target"],
        "runtime": record["runtime"],
        "precision": record["precision"],
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
        "quant": _record(graph.state.quant) if quantized else None,
        "kept_fp": list(graph.state.kept_fp),
        "pipeline": optimized_model.pipeline.name,
        "files": files,
        **_jsonable(record.get("meta") or {}),  # the backend's own entries (TensorRT: "tensorrt")
    }


__all__ = ["MODEL_FILE", "save_artifact"]
