"""``anomopt data``: make a synthetic data set (``synth``) or check a data set on disk (``check``)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from anomopt.errors import ConfigError, DataError

__all__ = ["register", "run_check", "run_synth"]


def _categories_arg(text: str) -> int | list[str]:
    """``--categories``: a count (``3``) or comma-separated names (``fabric,mesh``)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give a number of categories or comma-separated names")
    return names


def register(subparsers: Any) -> None:
    """Add the ``data`` command and its sub-commands to the top-level ``subparsers``."""
    from anomopt.data.synthetic import DEFECT_TYPES, SYNTHETIC_CATEGORIES

    data = subparsers.add_parser(
        "data",
        help="make or check anomaly-detection data sets",
        description="Make a synthetic MVTec-layout data set, or check that a data set on disk loads.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    cats = "; ".join(f"{c} ({', '.join(d)})" for c, d in DEFECT_TYPES.items())
    synth = sub.add_parser(
        "synth",
        help="write a synthetic industrial data set in MVTec AD layout",
        description=(
            "Write a procedural industrial anomaly-detection data set in MVTec AD layout "
            "(<out>/<category>/train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png). "
            f"Categories and defect types: {cats}. The same arguments give byte-identical files."
        ),
    )
    synth.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created; replaced only if empty or an earlier synthetic set)",
    )
    synth.add_argument(
        "--categories",
        type=_categories_arg,
        default=len(SYNTHETIC_CATEGORIES),
        metavar="N|NAMES",
        help=f"number of categories (first N of {', '.join(SYNTHETIC_CATEGORIES)}) or "
        "comma-separated names (default: all 5)",
    )
    synth.add_argument(
        "--train", type=int, default=60, metavar="N", help="normal training images per category (default: 60)"
    )
    synth.add_argument(
        "--test",
        type=int,
        default=30,
        metavar="N",
        help="test images per category, about half anomalous (default: 30)",
    )
    synth.add_argument(
        "--size", type=int, default=256, metavar="PX", help="square image size in pixels (default: 256)"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument(
        "--anomaly-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="fraction of test images that are anomalous (default: 0.5)",
    )
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=run_synth)

    check = sub.add_parser(
        "check",
        help="scan an MVTec-layout data set and report problems",
        description=(
            "Scan an MVTec-layout data set (folders, masks, mask sizes) and print per-category counts; "
            "exits with status 2 and a message naming the offending file if anything is wrong."
        ),
    )
    check.add_argument("root", metavar="ROOT", help="data set root holding <category>/train/good")
    check.add_argument(
        "--categories",
        default="all",
        metavar="NAMES",
        help="'all' (default) or comma-separated category names",
    )
    check.add_argument(
        "--decode",
        action="store_true",
        help="also decode every image and mask (slow; finds truncated or corrupt files)",
    )
    check.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    """Generate the synthetic data set described by ``args``; returns the exit code."""
    from anomopt.data.synthetic import generate_synthetic

    if args.train < 1 or args.test < 0 or args.size < 32:
        raise ConfigError("need --train >= 1, --test >= 0 and --size >= 32")
    start = time.perf_counter()
    out = generate_synthetic(
        args.out,
        categories=args.categories,
        n_train=args.train,
        n_test=args.test,
        image_size=args.size,
        seed=args.seed,
        anomaly_fraction=args.anomaly_fraction,
        progress=not args.quiet,
    )
    print(f"wrote synthetic data set to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Scan (and optionally decode) a data set; prints counts per category; returns the exit code."""
    from anomopt.data.images import check_mask_matches_image, read_image, read_mask
    from anomopt.data.layout import scan_mvtec

    splits = scan_mvtec(args.root, args.categories, require_test=False)
    for name, cs in splits.items():
        anomalous = [s for s in cs.test if s.label == 1]
        for s in anomalous:
            if s.mask_path is not None:
                check_mask_matches_image(s.mask_path, s.path)
        if args.decode:
            for s in cs.train + cs.test:
                read_image(s.path, None)
                if s.mask_path is not None:
                    read_mask(s.mask_path, None)
        defects = sorted({s.defect for s in anomalous})
        print(
            f"{name}: {len(cs.train)} train, {len(cs.test) - len(anomalous)} good test, "
            f"{len(anomalous)} anomalous test ({', '.join(defects) or 'none'})"
        )
    if args.categories.strip() == "all":
        from anomopt.cli.common import non_category_folders

        skipped = non_category_folders(args.root)
        if skipped:
            names = ", ".join(p.name for p in skipped)
            raise DataError(
                f"{skipped[0] / 'train' / 'good'}: folder missing, so {len(skipped)} folder(s) of the root are "
                f"not categories and are skipped ({names}); add train/good/ with normal images, or move them out"
            )
    return 0
