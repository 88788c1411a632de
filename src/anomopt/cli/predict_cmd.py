"""``anomopt predict ARTIFACT_DIR IMAGES...``: scores and decisions as CSV, plus overlay PNGs.

Runs through the thin runtime (onnxruntime only).
"""

from __future__ import annotations

import argparse
import csv
import glob
from pathlib import Path

from anomopt.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="score images with an exported artifact: CSV of scores/decisions and overlay PNGs",
        description="IMAGES may be files, folders (searched recursively) or glob patterns.",
    )
    p.add_argument("artifact", help="artifact folder (model.onnx + meta.json)")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--category", default=None, help="product category for per-category thresholds")
    p.add_argument("--out", default="predictions", help="output folder (CSV and overlays)")
    p.add_argument("--no-overlays", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=run)


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (recursive) and globs to a sorted, de-duplicated list of image files."""
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found += [f for f in sorted(p.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file():
            found.append(p)
        else:
            hits = [Path(h) for h in sorted(glob.glob(item, recursive=True))]
            if not hits:
                raise DataError(f"{item}: no such file, folder or matching glob")
            found += [h for h in hits if h.is_file() and h.suffix.lower() in IMAGE_SUFFIXES]
    unique = list(dict.fromkeys(found))
    if not unique:
        raise DataError(f"no images found in {', '.join(items)}")
    return unique


def _overlay_png(image, amap, mask) -> bytes:
    from anomopt.runtime.overlay import overlay_png

    return overlay_png(image, amap, mask)


def run(args: argparse.Namespace) -> int:
    from anomopt.io import atomic_path, write_bytes_atomic
    from anomopt.runtime import Predictor, load_image

    predictor = Predictor(args.artifact)
    paths = expand_inputs(args.images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    size = int(predictor.meta["image_size"])
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        import numpy as np

        batch = np.stack([load_image(p, size) for p in chunk])
        for path, image, pred in zip(chunk, batch, predictor.predict(batch, category=args.category)):
            rows.append({"path": str(path), "category": args.category or "", "score": f"{pred.score:.6g}",
                         "normalized_score": f"{pred.normalized_score:.4f}",
                         "decision": "anomalous" if pred.is_anomalous else "normal"})
            if not args.no_overlays:
                name = f"{len(rows) - 1:05d}_{path.stem}.png"
                write_bytes_atomic(out / "overlays" / name, _overlay_png(image, pred.map, pred.mask))
    with atomic_path(out / "predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    n_bad = sum(r["decision"] == "anomalous" for r in rows)
    print(f"{len(rows)} images, {n_bad} anomalous -> {out / 'predictions.csv'}")
    return 0
