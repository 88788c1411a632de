"""Run any scorer (torch model, fake-quant graph, ONNX Runtime session) over a data set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

Scorer = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]


@dataclass
class Predictions:
    """Scores, maps and ground truth of one pass over a data set."""

    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N, H, W) float32
    labels: np.ndarray  # (N,)
    masks: np.ndarray  # (N, H, W) uint8
    categories: list[str]
    paths: list[str]
    has_mask: np.ndarray | None = None  # (N,) bool: False for anomalous images labelled per image only


def torch_scorer(model: torch.nn.Module) -> Scorer:
    """Wrap a model whose forward returns ``(score, map)`` as a numpy scorer (eval mode, no grad)."""

    def score(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        with torch.no_grad():
            s, m = model(images)
        return s.float().cpu().numpy(), m.float().cpu().numpy()[:, 0]

    return score


def onnx_scorer(path: str, threads: int = 1) -> Scorer:
    """An ONNX Runtime session on an exported ``model.onnx`` (input ``images``; outputs score, map) as a
    numpy scorer."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def score(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        s, m = session.run(None, {name: images.numpy().astype(np.float32)})
        return s, m[:, 0]

    return score


def predict_dataset(
    scorer: Scorer, dataset: Dataset, batch_size: int = 8, progress: bool = False, desc: str = "predict"
) -> Predictions:
    """Score every item of ``dataset`` (dicts with image, mask, label, category, path)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    scores, maps, labels, masks, cats, paths, has_mask = [], [], [], [], [], [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        s, m = scorer(batch["image"])
        scores.append(s)
        maps.append(m.astype(np.float32))
        labels.append(np.asarray(batch["label"]))
        masks.append((batch["mask"][:, 0].numpy() > 0.5).astype(np.uint8))
        cats.extend(batch["category"])
        paths.extend(batch["path"])
        has_mask.append(np.asarray(batch.get("has_mask", np.ones(len(s), bool)), dtype=bool).reshape(-1))
    return Predictions(
        scores=np.concatenate(scores),
        maps=np.concatenate(maps),
        labels=np.concatenate(labels),
        masks=np.concatenate(masks),
        categories=list(cats),
        paths=list(paths),
        has_mask=np.concatenate(has_mask),
    )


def stack_images(dataset: Dataset, limit: int | None = None) -> torch.Tensor:
    """All (or the first ``limit``) images of a data set as one float tensor (N, 3, H, W)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    return torch.stack([dataset[i]["image"] for i in range(n)])
