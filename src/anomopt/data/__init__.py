"""Data loading for anomaly detection: image/mask decoding, MVTec and folder layouts, synthetic data."""

from anomopt.data.dataset import SPLITS, AnomalyDataset, collate, dataset_categories, load_folder, load_mvtec
from anomopt.data.images import IMAGE_EXTENSIONS, check_mask_matches_image, read_image, read_mask
from anomopt.data.layout import (
    CategorySplit,
    Sample,
    list_categories,
    scan_folder,
    scan_mvtec,
    split_validation,
)
from anomopt.data.synthetic import DEFECT_TYPES, SYNTHETIC_CATEGORIES, generate_synthetic, render_sample

__all__ = [
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "SYNTHETIC_CATEGORIES",
    "AnomalyDataset",
    "CategorySplit",
    "Sample",
    "check_mask_matches_image",
    "collate",
    "dataset_categories",
    "generate_synthetic",
    "list_categories",
    "load_folder",
    "load_mvtec",
    "read_image",
    "read_mask",
    "render_sample",
    "scan_folder",
    "scan_mvtec",
    "split_validation",
]
