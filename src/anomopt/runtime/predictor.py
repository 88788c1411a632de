"""Deployment runtime: load an anomopt artifact folder and score images with ONNX Runtime only.

This module imports neither torch nor any anomopt module that does (``anomopt``, ``anomopt.errors``,
``anomopt.normalization`` are numpy-only), so it runs on an edge box with ``onnxruntime``, ``numpy``
and ``pillow`` installed. A :class:`Predictor` keeps no per-call state: one instance can serve many
threads at once (ONNX Runtime sessions are thread-safe for ``run``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from anomopt.errors import CheckpointError, DataError
from anomopt.normalization import DEFAULT_IMAGE_Z, DEFAULT_PIXEL_Z, category_entry, validate_normalization
from anomopt.precision import PRECISION_NAMES

ARTIFACT_FORMAT = "anomopt-artifact"
ARTIFACT_FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
PRECISIONS = PRECISION_NAMES
MAX_IMAGE_SIZE = 8192
_REQUIRED = (
    "format",
    "format_version",
    "model",
    "target",
    "precision",
    "image_size",
    "input",
    "outputs",
    "categories",
    "normalization",
    "files",
)


@dataclass(frozen=True)
class Prediction:
    """The verdict on one image."""

    score: float  # raw image score (max of the anomaly map)
    normalized_score: float  # z-score against the category's normal validation scores
    is_anomalous: bool  # normalized_score > the category's image threshold
    map: np.ndarray  # (H, W) float32 raw anomaly map
    mask: np.ndarray  # (H, W) bool: pixels whose z-score exceeds the category's pixel threshold


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def make_session(
    path: str | os.PathLike[str],
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    optimization: str = "all",
    spinning: bool = True,
) -> ort.InferenceSession:
    """An ONNX Runtime session; ``threads`` sets ``intra_op_num_threads`` (None: ORT's default);
    ``spinning=False`` stops idle worker threads from busy-waiting (kinder to a shared CPU)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=chosen)


class OnnxRunner:
    """Scores ``(N, 3, H, W)`` float images in [0, 1] with an exported anomopt ONNX model.

    ``run`` accepts numpy arrays or anything with ``.numpy()`` (a CPU torch tensor) and returns numpy
    ``(scores[N], maps[N, H, W])``, the contract of ``ModelGraph.runner``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batch_size: int = 8,
        description: str = "onnxruntime",
    ) -> None:
        self.path = Path(path)
        self.session = make_session(self.path, providers, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = max(1, int(batch_size))
        self.description = description

    def run(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(scores, maps)`` for a batch."""
        if hasattr(images, "detach"):
            images = images.detach().cpu().numpy()
        arr = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        scores, maps = [], []
        for i in range(0, len(arr), self.batch_size):
            s, m = self.session.run(None, {self.input_name: arr[i : i + self.batch_size]})
            scores.append(np.asarray(s, dtype=np.float32).reshape(-1))
            maps.append(np.asarray(m, dtype=np.float32)[:, 0])
        if not scores:
            return np.zeros(0, np.float32), np.zeros((0,) + tuple(arr.shape[2:]), np.float32)
        return np.concatenate(scores), np.concatenate(maps)

    def __getstate__(self) -> dict[str, Any]:  # sessions do not pickle: rebuild on load
        return {"path": str(self.path), "batch_size": self.batch_size, "description": self.description}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], batch_size=state["batch_size"], description=state["description"])

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxRunner:
        return self  # immutable and thread-safe: share it


def read_meta(artifact_dir: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """Load and validate ``meta.json`` of an artifact folder; with ``verify``, check every file's SHA-256.

    Errors name the file and the faulty field.
    """
    root = Path(artifact_dir)
    meta_path = root / META_FILE
    if not root.is_dir():
        raise CheckpointError(f"{root}: artifact folder not found")
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing; an anomopt artifact folder holds {META_FILE} and {MODEL_FILE}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object")
    for key in _REQUIRED:
        if key not in meta:
            raise CheckpointError(f"{meta_path}: field '{key}' is missing")
    if meta["format"] != ARTIFACT_FORMAT:
        raise CheckpointError(f"{meta_path}: field 'format' is {meta['format']!r}, expected {ARTIFACT_FORMAT!r}")
    if meta["format_version"] != ARTIFACT_FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: field 'format_version' is {meta['format_version']!r}; this anomopt reads "
            f"version {ARTIFACT_FORMAT_VERSION}"
        )
    if meta["precision"] not in PRECISIONS:
        raise CheckpointError(f"{meta_path}: field 'precision' is {meta['precision']!r}, expected one of {PRECISIONS}")
    for key in ("model", "target"):
        if not isinstance(meta[key], str) or not meta[key]:
            raise CheckpointError(f"{meta_path}: field '{key}' must be a non-empty string, not {meta[key]!r}")
    size = meta["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_IMAGE_SIZE:
        raise CheckpointError(
            f"{meta_path}: field 'image_size' must be an integer from 1 to {MAX_IMAGE_SIZE}, not {size!r}"
        )
    inp = meta["input"]
    if not isinstance(inp, dict) or "name" not in inp or "shape" not in inp:
        raise CheckpointError(f"{meta_path}: field 'input' must hold 'name' and 'shape'")
    if not isinstance(inp["name"], str) or not isinstance(inp["shape"], list) or len(inp["shape"]) != 4:
        raise CheckpointError(f"{meta_path}: field 'input' needs a string 'name' and a 4-item 'shape' list")
    if not isinstance(meta["outputs"], dict):
        raise CheckpointError(f"{meta_path}: field 'outputs' must be an object")
    if list(inp["shape"])[1:] != [3, size, size]:
        raise CheckpointError(
            f"{meta_path}: field 'input.shape' {inp['shape']} does not match 'image_size' {size} "
            f"(expected [N, 3, {size}, {size}])"
        )
    if not isinstance(meta["normalization"], dict):
        raise CheckpointError(f"{meta_path}: field 'normalization' must be an object (category -> statistics)")
    for cat, entry in meta["normalization"].items():
        if not isinstance(entry, dict) or not {"score_mean", "score_std"} <= set(entry):
            raise CheckpointError(f"{meta_path}: field 'normalization.{cat}' needs score_mean and score_std")
    cats = meta["categories"]
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        raise CheckpointError(f"{meta_path}: field 'categories' must be a list of names")
    files = meta["files"]
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise CheckpointError(f"{meta_path}: field 'files' must list {MODEL_FILE} with its sha256")
    for name, info in files.items():
        if Path(name).name != name or name in ("", ".", "..") or name == META_FILE:
            raise CheckpointError(
                f"{meta_path}: field 'files' names {name!r}; only plain file names inside the artifact folder"
            )
        path = root / name
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise CheckpointError(f"{meta_path}: field 'files.{name}' needs 'sha256' and 'bytes'")
        size_field = info.get("bytes", 0)
        if not isinstance(size_field, int) or isinstance(size_field, bool):
            raise CheckpointError(f"{meta_path}: field 'files.{name}.bytes' must be an integer, not {size_field!r}")
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {META_FILE} ('files.{name}') but missing")
        if verify:
            if path.stat().st_size != info.get("bytes", path.stat().st_size):
                raise CheckpointError(
                    f"{path}: size {path.stat().st_size} bytes differs from 'files.{name}.bytes' in {META_FILE}"
                )
            digest = sha256_file(path)
            if digest != info["sha256"]:
                raise CheckpointError(
                    f"{path}: sha256 {digest[:12]}... does not match 'files.{name}.sha256' in {META_FILE} "
                    f"({str(info['sha256'])[:12]}...): the file was changed or corrupted"
                )
    return meta


def _layout(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(N, C, H, W)`` view of one image or a batch in HWC or CHW layout; bool: was it a batch."""
    if arr.ndim == 2:
        return arr[None, None], False
    if arr.ndim == 3:
        batched = False
        arr = arr[None]
    elif arr.ndim == 4:
        batched = True
    else:
        raise DataError(
            f"expected an image (H, W, 3) / (3, H, W) or a batch (N, ...), got an array of shape {arr.shape}"
        )
    if arr.shape[1] in (1, 3, 4) and arr.shape[-1] not in (3,):
        return arr, batched  # NCHW
    if arr.shape[-1] in (1, 3, 4):
        return np.moveaxis(arr, -1, 1), batched  # NHWC -> NCHW
    return arr, batched


class Predictor:
    """Scores images with an exported artifact folder (``model.onnx`` + ``meta.json``), without torch."""

    def __init__(
        self,
        artifact_dir: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        verify: bool = True,
    ) -> None:
        self.root = Path(artifact_dir)
        self.meta = read_meta(self.root, verify=verify)
        self.image_size = int(self.meta["image_size"])
        self.categories: list[str] = list(self.meta["categories"])
        self.normalization: dict[str, Any] = dict(self.meta["normalization"])
        validate_normalization(self.normalization, str(self.root / META_FILE))
        model_path = self.root / MODEL_FILE
        try:
            self._runner = OnnxRunner(model_path, providers=providers, threads=threads)
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{model_path}: ONNX Runtime cannot load it ({str(err)[:200]})") from None
        shape = self._runner.session.get_inputs()[0].shape
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] not in (
            [3, self.image_size, self.image_size],
        ):
            raise CheckpointError(
                f"{self.root / META_FILE}: field 'image_size' {self.image_size} does not match "
                f"{MODEL_FILE}'s input {shape}"
            )

    @property
    def precision(self) -> str:
        return str(self.meta["precision"])

    def _prepare(self, images: Any) -> tuple[np.ndarray, bool]:
        if isinstance(images, (list, tuple)):
            parts = [self._prepare(np.asarray(im))[0] for im in images]
            return (
                np.concatenate(parts) if parts else np.zeros((0, 3, self.image_size, self.image_size), np.float32)
            ), True
        arr = np.asarray(images)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.uint8):
            raise DataError(f"expected uint8 (0-255) or float (0-1) RGB images, got dtype {arr.dtype}")
        nchw, batched = _layout(arr)
        n, c, h, w = nchw.shape
        want = self.image_size
        if c != 3 or h != want or w != want:
            raise DataError(f"expected 3x{want}x{want} RGB, got {c}x{h}x{w}")
        if arr.dtype == np.uint8:
            out = nchw.astype(np.float32) / np.float32(255.0)
        else:
            out = nchw.astype(np.float32, copy=False)
            if out.size and not np.isfinite(out).all():
                raise DataError("images contain NaN or Inf values")
            if out.size and (float(out.min()) < -1e-3 or float(out.max()) > 1.0 + 1e-3):
                raise DataError(
                    "float images must be in [0, 1], got values in "
                    f"[{float(out.min()):.3g}, {float(out.max()):.3g}] "
                    "(divide uint8 pixels by 255, or pass the uint8 array)"
                )
        return np.ascontiguousarray(out), batched

    def run(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(scores[N], maps[N, H, W])`` for one image or a batch."""
        arr, _ = self._prepare(images)
        return self._runner.run(arr)

    def thresholds(self, category: str | None = None) -> dict[str, float]:
        """The statistics and thresholds :meth:`predict` decides with for ``category`` (same rules for
        ``None`` / ``"pooled"`` / unknown names), plus ``threshold_score``: the raw image-score threshold."""
        entry = category_entry(self.normalization, category)
        mean = float(entry.get("score_mean", 0.0))
        std = float(entry.get("score_std", 1.0)) or 1.0
        image_z = float(entry.get("image_threshold_z", DEFAULT_IMAGE_Z))
        return {
            "score_mean": mean,
            "score_std": std,
            "image_threshold_z": image_z,
            "threshold_score": mean + image_z * std,
            "map_mean": float(entry.get("map_mean", mean)),
            "map_std": float(entry.get("map_std", std)) or 1.0,
            "pixel_threshold_z": float(entry.get("pixel_threshold_z", DEFAULT_PIXEL_Z)),
        }

    def predict(self, images: Any, category: str | None = None) -> list[Prediction]:
        """One :class:`Prediction` per image, normalized with ``category``'s statistics and thresholds.

        ``category`` may be None only for a one-category artifact; ``"pooled"`` asks for the mean of the
        known categories' statistics; an unknown name raises :class:`DataError` listing the known ones."""
        th = self.thresholds(category)
        arr, _ = self._prepare(images)
        scores, maps = self._runner.run(arr)
        mean, std, image_z = th["score_mean"], th["score_std"], th["image_threshold_z"]
        map_mean, map_std, pixel_z = th["map_mean"], th["map_std"], th["pixel_threshold_z"]
        out = []
        for s, m in zip(scores, maps, strict=False):
            z = (float(s) - mean) / std
            out.append(
                Prediction(
                    score=float(s),
                    normalized_score=z,
                    is_anomalous=bool(z > image_z),
                    map=m.astype(np.float32, copy=False),
                    mask=(m - map_mean) / map_std > pixel_z,
                )
            )
        return out

    def __repr__(self) -> str:
        return (
            f"Predictor({str(self.root)!r}, model={self.meta['model']}, target={self.meta['target']}, "
            f"precision={self.precision}, image_size={self.image_size})"
        )


def load_image(path: str | os.PathLike[str], size: int | None = None) -> np.ndarray:
    """Read an image as float32 ``(H, W, 3)`` RGB in [0, 1], resized bilinearly to ``size`` x ``size``,
    with the reader training uses (:func:`anomopt.data.images.read_model_input`, numpy + Pillow only)."""
    from anomopt.data.images import read_model_input

    return read_model_input(path, size)
