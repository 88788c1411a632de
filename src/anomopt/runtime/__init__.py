"""Torch-free deployment runtime: score images with an exported artifact folder through ONNX Runtime."""

from anomopt.runtime.predictor import (
    ARTIFACT_FORMAT,
    ARTIFACT_FORMAT_VERSION,
    OnnxRunner,
    Prediction,
    Predictor,
    load_image,
    make_session,
    read_meta,
    sha256_file,
)

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_FORMAT_VERSION",
    "OnnxRunner",
    "Prediction",
    "Predictor",
    "load_image",
    "make_session",
    "read_meta",
    "sha256_file",
]
