"""``anomopt predict ARTIFACT_DIR IMAGES...``: per image a decision, an overlay PNG and a binary mask PNG.

Writes into ``--out`` (replaced whole by each run, so files of two runs never mix):

- ``predictions.csv`` and ``predictions.json``: one row per input file with score, normalized score,
  threshold, decision, mask area and the overlay / mask file names; files that cannot be read are rows
  with decision ``skipped`` and the reason;
- ``overlays/NNNNN_<stem>.png``: the image under its anomaly map in the category's normalized units;
- ``masks/NNNNN_<stem>.png``: the binary anomaly mask (0 / 255) at the image's own size.

Runs through the thin runtime only (onnxruntime, numpy, pillow; overlays are drawn with pillow, no matplotlib).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import sys
from pathlib import Path
from typing import Any

from anomopt.cli.common import DefaultsHelpFormatter, require_positive, warn
from anomopt.errors import AnomoptError, ConfigError, DataError
from anomopt.outputs import PREDICTIONS_FORMAT

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
FIELDS = [
    "path",
    "category",
    "score",
    "normalized_score",
    "threshold",
    "threshold_score",
    "decision",
    "mask_pixels",
    "mask_area",
    "overlay",
    "mask",
    "reason",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="score images with an exported artifact: decisions (CSV, JSON), overlays and masks",
        description="IMAGES may be files, folders (searched recursively; hidden files skipped) or glob "
        "patterns. Writes predictions.csv / predictions.json (score, normalized score, threshold, decision, "
        "mask area, file names), overlays/ and masks/ into --out, which each run replaces whole. A file "
        "that cannot be read is listed as skipped with the reason; the exit status is 2 only when no image "
        "could be scored.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("artifact", help="artifact folder (model.onnx + meta.json)")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument(
        "--category",
        default=None,
        help="the artifact's category whose statistics and thresholds decide (may be left out for a "
        "one-category artifact; 'pooled' for the mean of all)",
    )
    p.add_argument("--out", default="predictions", help="output folder: new, empty or an earlier predict output")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --out that is not an earlier predict output"
    )
    p.add_argument("--no-overlays", action="store_true", help="write no overlay PNGs (tables and masks only)")
    p.add_argument("--batch-size", type=int, default=8, help="images per ONNX Runtime call")
    p.set_defaults(func=run)


def _hidden(path: Path, root: Path) -> bool:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = (path.name,)
    return any(part.startswith(".") for part in parts)


def _candidates(item: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files of one command-line item, and the broken links met on the way."""
    p = Path(item)
    if p.is_dir():
        entries, root = sorted(p.rglob("*")), p
    elif p.is_file():
        return [p], []
    elif p.is_symlink():
        return [], [(p, f"{p}: broken symbolic link (its target does not exist)")]
    else:
        hits = sorted(glob.glob(item, recursive=True))  # glob itself leaves out hidden names
        if not hits:
            raise DataError(f"{item}: no such file, folder or matching glob")
        entries, root = [Path(h) for h in hits], None
    files: list[Path] = []
    broken: list[tuple[Path, str]] = []
    for f in entries:
        if f.suffix.lower() not in IMAGE_SUFFIXES or (root is not None and _hidden(f, root)):
            continue
        if f.is_file():
            files.append(f)
        elif f.is_symlink() and not f.exists():
            broken.append((f, f"{f}: broken symbolic link (its target does not exist)"))
    return files, broken  # folders named *.png are neither


def expand_inputs(items: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files, folders (recursive, hidden files and folders skipped as training does) and globs to a sorted,
    de-duplicated list of image files, plus ``(path, reason)`` for broken links found in folders and globs."""
    found: list[Path] = []
    broken: list[tuple[Path, str]] = []
    for item in items:
        files, bad = _candidates(item)
        found += files
        broken += bad
    unique = list(dict.fromkeys(found))
    if not unique and not broken:
        raise DataError(f"no images found in {', '.join(items)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return unique, broken


def _read(path: Path, size: int) -> tuple[Any, tuple[int, int] | None, str | None]:
    """``(image, (width, height), None)`` or ``(None, None, reason)``: one bad file never stops the run."""
    from anomopt.runtime import load_image

    try:
        from PIL import Image

        with Image.open(path) as im:
            original = im.size
        return load_image(path, size), original, None
    except AnomoptError as err:
        return None, None, str(err)
    except Exception as err:  # PIL's DecompressionBombError and its decoders' own errors on hostile files
        detail = " ".join(str(err).split())[:160]
        return None, None, f"{path}: cannot decode image ({type(err).__name__}: {detail})"


def _mask_png(mask: Any, size: tuple[int, int]) -> bytes:
    import numpy as np
    from PIL import Image

    im = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)  # uint8 2-D: mode L
    if im.size != size:
        im = im.resize(size, Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _row(path: Path, category: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {k: "" for k in FIELDS}
    row.update(path=str(path), category=category, **values)
    return row


def run(args: argparse.Namespace) -> int:
    require_positive(args.batch_size, "--batch-size")
    from anomopt.outputs import prepare_output_dir

    paths, broken = expand_inputs(args.images)
    inputs = (args.artifact, *args.images, *map(str, paths))
    with prepare_output_dir(args.out, "predictions", overwrite=args.overwrite, inputs=inputs) as od:
        return _predict(args, paths, broken, od.path)


def _predict(args: argparse.Namespace, paths: list[Path], broken: list[tuple[Path, str]], out: Path) -> int:
    import numpy as np

    from anomopt import __version__
    from anomopt.io import atomic_dir
    from anomopt.normalization import resolve_category
    from anomopt.runtime import Predictor
    from anomopt.runtime.overlay import OverlayInfo, render_overlay

    predictor = Predictor(args.artifact)
    try:  # before any image is read: an unknown or missing --category is one line listing the known ones
        category = resolve_category(predictor.normalization, args.category)
    except AnomoptError as err:
        raise ConfigError(f"--category: {err}") from None
    th = predictor.thresholds(category)
    size = predictor.image_size
    rows: dict[Path, dict[str, Any]] = {p: _row(p, category, decision="skipped", reason=r) for p, r in broken}
    index_of = {p: i for i, p in enumerate(paths)}
    n_done = 0
    with atomic_dir(out) as stage:
        (stage / "masks").mkdir()
        if not args.no_overlays:
            (stage / "overlays").mkdir()
        for start in range(0, len(paths), args.batch_size):
            chunk = []
            for path in paths[start : start + args.batch_size]:
                image, original, reason = _read(path, size)
                if reason is not None:
                    rows[path] = _row(path, category, decision="skipped", reason=reason)
                else:
                    chunk.append((path, image, original))
            if not chunk:
                continue
            preds = predictor.predict(np.stack([c[1] for c in chunk]), category=category)
            for (path, image, original), pred in zip(chunk, preds):
                name = f"{index_of[path]:05d}_{path.stem}.png"
                (stage / "masks" / name).write_bytes(_mask_png(pred.mask, original))
                overlay = ""
                if not args.no_overlays:
                    zmap = (pred.map - th["map_mean"]) / th["map_std"]
                    info = OverlayInfo(
                        f"{path.parent.name}/{path.name}" if path.parent.name else path.name,
                        category,
                        pred.score,
                        pred.normalized_score,
                        th["image_threshold_z"],
                        th["pixel_threshold_z"],
                        pred.is_anomalous,
                    )
                    (stage / "overlays" / name).write_bytes(render_overlay(image, zmap, pred.mask, info))
                    overlay = f"overlays/{name}"
                rows[path] = _row(
                    path,
                    category,
                    score=float(pred.score),
                    normalized_score=float(pred.normalized_score),
                    threshold=th["image_threshold_z"],
                    threshold_score=th["threshold_score"],
                    decision="anomalous" if pred.is_anomalous else "normal",
                    mask_pixels=int(pred.mask.sum()),
                    mask_area=float(pred.mask.mean()),
                    overlay=overlay,
                    mask=f"masks/{name}",
                )
                n_done += 1
        ordered = [rows[p] for p in sorted(rows, key=lambda p: (index_of.get(p, len(paths)), str(p)))]
        _write_tables(stage, ordered, args, predictor, th, __version__, category)
    n_bad = sum(r["decision"] == "anomalous" for r in ordered)
    skipped = [r for r in ordered if r["decision"] == "skipped"]
    print(
        f"{len(ordered)} files: {n_done} scored ({n_bad} anomalous), {len(skipped)} skipped -> "
        f"{out / 'predictions.csv'}"
    )
    for r in skipped[:5]:
        warn(f"skipped {r['reason']}")
    if len(skipped) > 5:
        warn(f"... and {len(skipped) - 5} more skipped files (column 'reason' of {out / 'predictions.csv'})")
    if n_done == 0:
        raise DataError(
            f"none of the {len(ordered)} files could be scored; the reasons are in {out / 'predictions.csv'}"
        )
    sys.stdout.flush()
    return 0


def _fmt(value: Any, spec: str) -> str:
    return "" if value == "" else format(value, spec)


def _write_tables(
    stage: Path,
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    predictor: Any,
    th: dict,
    version: str,
    category: str,
) -> None:
    with open(stage / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    **r,
                    "score": _fmt(r["score"], ".6g"),
                    "normalized_score": _fmt(r["normalized_score"], ".4f"),
                    "threshold": _fmt(r["threshold"], ".4f"),
                    "threshold_score": _fmt(r["threshold_score"], ".6g"),
                    "mask_area": _fmt(r["mask_area"], ".6f"),
                }
            )
    doc = {
        "format": PREDICTIONS_FORMAT,
        "format_version": 1,
        "anomopt_version": version,
        "artifact": str(Path(args.artifact).resolve()),
        "model": predictor.meta.get("model"),
        "precision": predictor.precision,
        "image_size": predictor.image_size,
        "category": category,
        "thresholds": th,
        "counts": {
            "files": len(rows),
            "scored": sum(r["decision"] in ("normal", "anomalous") for r in rows),
            "anomalous": sum(r["decision"] == "anomalous" for r in rows),
            "skipped": sum(r["decision"] == "skipped" for r in rows),
        },
        "rows": [{k: (None if v == "" else v) for k, v in r.items()} for r in rows],
    }
    (stage / "predictions.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
