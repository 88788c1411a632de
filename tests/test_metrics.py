"""Tests of anomopt.metrics: AUROC, F1-max, AUPRO (against a slow reference) and reports."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from anomopt.errors import AnomoptError, ConfigError, DataError
from anomopt.metrics import (
    aupro,
    evaluate_predictions,
    f1_max,
    format_table,
    image_auroc,
    pixel_auroc,
    pro_curve,
    to_markdown,
)

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strictly increasing maps of the real line (on the value ranges generated below they are injective
# in float64, so they create no new ties).
MONOTONE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "affine": lambda x: 3.5 * x + 2.0,
    "exp": lambda x: np.exp(x / 4.0),
    "cube": lambda x: x**3,
    "arctan": np.arctan,
}


# ----------------------------------------------------------------------------- strategies


@st.composite
def image_labels_scores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels with both classes and scores on a coarse grid (so ties happen)."""
    n = draw(st.integers(2, 40))
    labels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    assume(0 < labels.sum() < n)
    ints = draw(st.lists(st.integers(-40, 40), min_size=n, max_size=n))
    return labels, np.array(ints, dtype=np.float64) / 4.0


@st.composite
def masks_and_maps(draw: st.DrawFn, max_images: int = 4, max_side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Binary masks made of rectangles and sparse blobs, with integer-grid maps correlated to them.

    The first image always gets a rectangle smaller than the image, so there is at least one anomalous
    region and at least one normal pixel.
    """
    n = draw(st.integers(1, max_images))
    h = draw(st.integers(6, max_side))
    w = draw(st.integers(6, max_side))
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        n_rects = draw(st.integers(1 if i == 0 else 0, 3))
        for _ in range(n_rects):
            y0, x0 = draw(st.integers(0, h - 2)), draw(st.integers(0, w - 2))
            rh, rw = draw(st.integers(1, h // 2)), draw(st.integers(1, w // 2))
            masks[i, y0 : y0 + rh, x0 : x0 + rw] = True
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # scattered blobs: many small, diagonally touching regions
        masks |= rng.random(masks.shape) < draw(st.sampled_from([0.03, 0.1, 0.25]))
    assume(not masks.all())
    levels = draw(st.integers(2, 60))  # few levels -> many ties
    strength = draw(st.integers(0, levels))
    noise = rng.integers(0, levels, size=masks.shape)
    maps = (noise + strength * masks).astype(np.float64) / levels * 4.0 - 2.0  # in [-2, 6]
    return masks, maps


# ----------------------------------------------------------------------------- slow references


def _regions_8(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Connected regions of one 2-D mask with 8-connectivity, by breadth-first flood fill."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for i in range(h):
        for j in range(w):
            if not mask[i, j] or seen[i, j]:
                continue
            seen[i, j] = True
            queue, region = deque([(i, j)]), []
            while queue:
                y, x = queue.popleft()
                region.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            queue.append((yy, xx))
            regions.append(region)
    return regions


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Exact AUPRO: every unique score is a threshold, PRO/FPR counted directly, trapezoid to the limit."""
    region_scores = []
    for mask, amap in zip(masks, maps, strict=True):
        for region in _regions_8(mask):
            region_scores.append(np.array([amap[y, x] for y, x in region]))
    normal = maps[~masks]
    points = [(0.0, 0.0)]  # threshold +inf
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        fpr = float(np.mean(normal >= t))
        pro = float(np.mean([np.mean(r >= t) for r in region_scores]))
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / fpr_limit


def brute_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds 'score >= t', counted directly."""
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = int(np.sum(pred & (labels == 1)))
        fp = int(np.sum(pred & (labels == 0)))
        fn = int(np.sum(~pred & (labels == 1)))
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


# ----------------------------------------------------------------------------- image AUROC / F1


@PROPS
@given(image_labels_scores())
def test_image_auroc_perfect_inverted_constant(case: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = case
    perfect = labels * 100.0 + scores  # scores lie in [-10, 10]: classes fully separated
    # scikit-learn integrates with the trapezoid rule, so allow float rounding.
    assert image_auroc(labels, perfect) == pytest.approx(1.0, abs=1e-12)
    assert image_auroc(labels, -perfect) == pytest.approx(0.0, abs=1e-12)
    assert image_auroc(labels, np.full(labels.shape, 0.25)) == pytest.approx(0.5, abs=1e-12)


@PROPS
@given(image_labels_scores(), st.sampled_from(sorted(MONOTONE)))
def test_image_auroc_invariant_to_monotone_rescaling(case: tuple[np.ndarray, np.ndarray], name: str) -> None:
    labels, scores = case
    base = image_auroc(labels, scores)
    assert image_auroc(labels, MONOTONE[name](scores)) == pytest.approx(base, abs=1e-12)
    assert 0.0 <= base <= 1.0


@PROPS
@given(image_labels_scores())
def test_f1_max_matches_brute_force(case: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = case
    f1, thr = f1_max(labels, scores)
    assert f1 == pytest.approx(brute_f1_max(labels, scores), abs=1e-12)
    # The returned threshold actually achieves the returned F1.
    pred = scores >= thr
    tp = np.sum(pred & (labels == 1))
    assert 2 * tp / (pred.sum() + labels.sum()) == pytest.approx(f1, abs=1e-12)


def test_f1_max_perfectly_separable_and_hand_case() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    f1, thr = f1_max(labels, np.array([0.1, 0.2, 0.3, 0.7, 0.9]))
    assert f1 == 1.0 and thr == pytest.approx(0.7)
    # t=0.8: P=1, R=.5; t=0.6: P=.5, R=.5; t=0.4: P=2/3, R=1 -> F1=0.8 (best); t=0.1: P=.5, R=1
    f1, thr = f1_max([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8])
    assert f1 == pytest.approx(0.8) and thr == pytest.approx(0.4)
    assert isinstance(f1, float) and isinstance(thr, float)


def test_image_inputs_accept_column_vectors_and_bools() -> None:
    labels = np.array([[False], [True], [True]])
    assert image_auroc(labels, np.array([[0.0], [1.0], [2.0]])) == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- pixel AUROC


@PROPS
@given(masks_and_maps(), st.sampled_from(sorted(MONOTONE)))
def test_pixel_auroc_matches_sklearn_and_is_invariant(case: tuple[np.ndarray, np.ndarray], name: str) -> None:
    masks, maps = case
    value = pixel_auroc(masks, maps)
    assert value == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_auroc(masks, MONOTONE[name](maps)) == pytest.approx(value, abs=1e-12)
    assert pixel_auroc(masks, masks.astype(np.float32)) == 1.0
    assert pixel_auroc(masks, -masks.astype(np.float32)) == 0.0


def test_pixel_auroc_accepts_channel_axis_and_subsamples_deterministically() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((8, 1, 32, 32)) < 0.2
    maps = (rng.normal(size=masks.shape) + masks).astype(np.float32)
    exact = pixel_auroc(masks, maps)
    assert pixel_auroc(masks[:, 0], maps[:, 0]) == exact
    assert pixel_auroc(masks, maps[:, 0]) == exact
    sampled = pixel_auroc(masks, maps, max_pixels=3000)
    assert sampled == pixel_auroc(masks, maps, max_pixels=3000)  # fixed seed
    assert sampled != exact and abs(sampled - exact) < 0.03


# ----------------------------------------------------------------------------- AUPRO


def test_aupro_hand_example() -> None:
    # One region of 2 pixels (scores .9, .5), four normal pixels (.8, .1, .2, .3).
    masks = np.array([[[1, 1, 0, 0, 0, 0]]], dtype=np.uint8)
    maps = np.array([[[0.9, 0.5, 0.8, 0.1, 0.2, 0.3]]])
    # Curve: (0,0) (0,.5) (.25,.5) (.25,1) (.5,1) (.75,1) (1,1).
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.875)
    assert aupro(masks, maps, fpr_limit=0.5) == pytest.approx((0.125 + 0.25) / 0.5)
    # Limit inside the first horizontal segment: PRO is .5 there.
    assert aupro(masks, maps, fpr_limit=0.1) == pytest.approx(0.5)


def test_aupro_averages_over_regions_with_8_connectivity_per_image() -> None:
    normal_scores = 0.2
    # Image 0: diagonal pair (one 8-connected region) scored (.9, .1) and a lone pixel scored .1.
    m0 = np.zeros((6, 6), dtype=bool)
    m0[0, 0] = m0[1, 1] = m0[4, 4] = True
    a0 = np.full((6, 6), normal_scores)
    a0[0, 0], a0[1, 1], a0[4, 4] = 0.9, 0.1, 0.1
    # Image 1: three pixels at the same place as image 0's first pixel -- a separate region.
    m1 = np.zeros((6, 6), dtype=bool)
    m1[0, 0:3] = True
    a1 = np.full((6, 6), normal_scores)
    a1[0, 0:3] = 0.1
    fpr, pro, thr = pro_curve(np.stack([m0, m1]), np.stack([a0, a1]))
    at_09 = np.flatnonzero(thr == 0.9)[0]
    assert fpr[at_09] == 0.0
    # Regions: {2 px, 1 of them hit}, {1 px, missed}, {3 px, missed} -> (0.5 + 0 + 0) / 3.
    assert pro[at_09] == pytest.approx(0.5 / 3)


@PROPS
@given(masks_and_maps(), st.sampled_from([0.05, 0.1, 0.3, 0.5, 1.0]))
def test_aupro_exact_against_reference_with_enough_thresholds(
    case: tuple[np.ndarray, np.ndarray], fpr_limit: float
) -> None:
    masks, maps = case
    n0 = int((~masks).sum())
    # num_thresholds >= fpr_limit * N0 makes every relevant normal score a threshold: exact.
    value = aupro(masks, maps, fpr_limit=fpr_limit, num_thresholds=max(1, math.ceil(fpr_limit * n0)))
    assert value == pytest.approx(reference_aupro(masks, maps, fpr_limit), abs=1e-9)


@PROPS
@given(masks_and_maps(), st.sampled_from([0.1, 0.3, 1.0]), st.sampled_from([2, 5, 20, 200]))
def test_aupro_close_to_reference_within_stated_bound(
    case: tuple[np.ndarray, np.ndarray], fpr_limit: float, num_thresholds: int
) -> None:
    masks, maps = case
    n0 = int((~masks).sum())
    value = aupro(masks, maps, fpr_limit=fpr_limit, num_thresholds=num_thresholds)
    # Documented bound of the rank-based discretisation.
    bound = (1.0 + 1.0 / (fpr_limit * n0)) / (2.0 * num_thresholds)
    assert abs(value - reference_aupro(masks, maps, fpr_limit)) <= bound + 1e-12


@PROPS
@given(masks_and_maps(), st.sampled_from(sorted(MONOTONE)), st.sampled_from([3, 50, 200]))
def test_aupro_invariant_to_monotone_rescaling(
    case: tuple[np.ndarray, np.ndarray], name: str, num_thresholds: int
) -> None:
    masks, maps = case
    base = aupro(masks, maps, num_thresholds=num_thresholds)
    assert 0.0 <= base <= 1.0
    rescaled = aupro(masks, MONOTONE[name](maps), num_thresholds=num_thresholds)
    assert rescaled == pytest.approx(base, abs=1e-12)


@FEW
@given(masks_and_maps(), st.sampled_from([0.01, 0.3, 1.0]))
def test_aupro_of_perfect_map_is_one(case: tuple[np.ndarray, np.ndarray], fpr_limit: float) -> None:
    masks, maps = case
    assert aupro(masks, masks.astype(np.float64), fpr_limit=fpr_limit) == pytest.approx(1.0, abs=1e-12)
    # Still perfect with noise that keeps every anomalous pixel above every normal one.
    separated = masks * 10.0 + maps
    assert aupro(masks, separated, fpr_limit=fpr_limit, num_thresholds=3) == pytest.approx(1.0, abs=1e-12)
    # Inverted: nothing is found before every normal pixel fires.
    assert aupro(masks, -separated, fpr_limit=fpr_limit) == pytest.approx(0.0, abs=1e-12)


@FEW
@given(masks_and_maps())
def test_pro_curve_is_monotone_and_starts_at_origin(case: tuple[np.ndarray, np.ndarray]) -> None:
    fpr, pro, thr = pro_curve(*case)
    assert fpr[0] == 0.0 and pro[0] == 0.0 and thr[0] == np.inf
    assert np.all(np.diff(thr) < 0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    assert fpr[-1] >= 0.3 and pro.min() >= 0.0 and pro.max() <= 1.0


def test_aupro_accepts_channel_axis_and_float32() -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 1, 20, 20), dtype=np.uint8)
    masks[:, :, 5:12, 6:14] = 1
    maps = rng.normal(size=masks.shape).astype(np.float32) + masks
    assert aupro(masks, maps) == aupro(masks[:, 0], maps[:, 0])


def test_aupro_and_pixel_auroc_at_full_scale() -> None:
    """100 maps of 256x256 (timing is measured in benchmarks/, never asserted here)."""
    rng = np.random.default_rng(0)
    masks = np.zeros((100, 256, 256), dtype=bool)
    for i in range(100):
        for _ in range(3):
            y, x = rng.integers(0, 220, 2)
            h, w = rng.integers(5, 40, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = (rng.normal(size=masks.shape) + 1.5 * masks).astype(np.float32)
    value = aupro(masks, maps)
    assert 0.5 < value < 1.0
    assert value == pytest.approx(aupro(masks, np.exp(maps.astype(np.float64))), abs=1e-6)
    assert 0.5 < pixel_auroc(masks, maps) < 1.0


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_data_error() -> None:
    with pytest.raises(DataError, match="differ in length"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="NaN"):
        image_auroc([0, 1], [0.1, math.nan])
    with pytest.raises(DataError, match="one class"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="one class"):
        f1_max([0, 0], [0.1, 0.2])
    with pytest.raises(DataError, match="binary"):
        image_auroc([0, 2], [0.1, 0.2])
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:4, 2:4] = True
    maps = np.zeros((2, 8, 8))
    with pytest.raises(DataError, match="different shapes"):
        pixel_auroc(masks, maps[:, :7])
    with pytest.raises(DataError, match="different shapes"):
        aupro(masks, maps[:1])
    nan_maps = maps.copy()
    nan_maps[1, 3, 3] = math.nan
    with pytest.raises(DataError, match="NaN"):
        pixel_auroc(masks, nan_maps)
    with pytest.raises(DataError, match="NaN"):
        aupro(masks, nan_maps)
    with pytest.raises(DataError, match="binary"):
        aupro(masks * 255, maps)
    with pytest.raises(DataError, match="no anomalous region"):
        aupro(np.zeros_like(masks), maps)
    with pytest.raises(DataError, match="no normal pixel"):
        aupro(np.ones_like(masks), maps)
    with pytest.raises(DataError, match="both classes"):
        pixel_auroc(np.zeros_like(masks), maps)
    with pytest.raises(ConfigError):
        aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ConfigError):
        aupro(masks, maps, num_thresholds=0)
    assert issubclass(DataError, AnomoptError)


# ----------------------------------------------------------------------------- report


def _report_example() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    categories = ["a", "a", "b", "a", "c", "b", "a", "c"]
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.6, 0.2, 0.4, 0.5, 0.9, 0.8, 0.3])
    masks = np.zeros((8, 4, 4), dtype=bool)
    for i in np.flatnonzero(labels):
        masks[i, 1:3, 1:3] = True
    maps = masks.astype(np.float64)  # perfect maps ...
    maps[[2, 5]] = 1.0 - maps[[2, 5]]  # ... except category b's, which are inverted
    return categories, labels, scores, masks, maps


def test_evaluate_predictions_hand_example() -> None:
    categories, labels, scores, masks, maps = _report_example()
    result = evaluate_predictions(categories, labels, scores, masks[:, None], maps[:, None])
    per = result["per_category"]
    assert list(per) == ["a", "b", "c"]
    # a: labels [0,0,1,1], scores [.1,.6,.4,.8] -> AUROC 3/4, F1-max .8 (at .4); perfect maps.
    assert per["a"]["image_auroc"] == pytest.approx(0.75)
    assert per["a"]["f1_max"] == pytest.approx(0.8)
    assert per["a"]["f1_threshold"] == pytest.approx(0.4)
    assert per["a"]["pixel_auroc"] == 1.0 and per["a"]["aupro"] == pytest.approx(1.0)
    assert (per["a"]["n_normal"], per["a"]["n_anomalous"]) == (2, 2)
    # b: separable images, inverted maps.
    assert per["b"]["image_auroc"] == pytest.approx(1.0) and per["b"]["f1_max"] == 1.0
    assert per["b"]["pixel_auroc"] == 0.0 and per["b"]["aupro"] == pytest.approx(0.0)
    # c: only normal images -> everything undefined, with a warning.
    for key in ("image_auroc", "f1_max", "pixel_auroc", "aupro"):
        assert math.isnan(per["c"][key])
    assert "only normal" in per["c"]["warning"] and "warning" not in per["a"]
    assert any(w.startswith("c:") for w in result["warnings"])
    # Mean over categories (not pooled), skipping c.
    mean = result["mean"]
    assert mean["image_auroc"] == pytest.approx(0.875)
    assert mean["f1_max"] == pytest.approx(0.9)
    assert mean["pixel_auroc"] == pytest.approx(0.5)
    assert mean["aupro"] == pytest.approx(0.5)
    assert (mean["n_normal"], mean["n_anomalous"], mean["n_categories"]) == (5, 3, 3)
    pooled = image_auroc(labels, scores)
    assert pooled != pytest.approx(mean["image_auroc"])
    for entry in [*per.values(), mean]:
        assert all(type(entry[k]) is float for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max"))


def test_evaluate_predictions_without_pixels_and_bad_input() -> None:
    categories, labels, scores, masks, maps = _report_example()
    result = evaluate_predictions(categories, labels, scores)
    assert math.isnan(result["mean"]["pixel_auroc"]) and math.isnan(result["mean"]["aupro"])
    assert result["mean"]["image_auroc"] == pytest.approx(0.875)
    skipped = evaluate_predictions(categories, labels, scores, masks, maps, pixel_metrics=False)
    assert math.isnan(skipped["per_category"]["a"]["pixel_auroc"])
    with pytest.raises(DataError, match="same length"):
        evaluate_predictions(categories[:-1], labels, scores)
    with pytest.raises(DataError, match="NaN"):
        evaluate_predictions(categories, labels, np.where(labels, math.nan, 0.0))
    with pytest.raises(DataError, match="maps is missing"):
        evaluate_predictions(categories, labels, scores, masks=masks)
    with pytest.raises(DataError, match="8"):
        evaluate_predictions(categories, labels, scores, masks[:-1], maps[:-1])


def test_format_table_and_markdown() -> None:
    result = evaluate_predictions(*_report_example())
    table = format_table(result, title="demo run")
    lines = table.splitlines()
    assert lines[0] == "demo run"
    assert lines[1].split() == [
        "Category", "Image", "AUROC", "Pixel", "AUROC", "AUPRO", "F1-max", "FR@thr", "Escape@thr", "F1@thr"
    ]
    table_lines = [ln for ln in lines[1:] if not ln.startswith("note: ")]
    body = [ln for ln in table_lines if not set(ln) <= {"-"}]
    assert len({len(ln) for ln in table_lines}) == 1  # fixed width
    assert lines[-len(result["warnings"]):] == [f"note: {w}" for w in result["warnings"]]
    rows = {ln.split()[0]: ln.split()[1:] for ln in body[1:]}
    na3 = ["n/a"] * 3  # no thresholds given: decisions not measured
    assert rows["a"] == ["75.0", "100.0", "100.0", "80.0", *na3]
    assert rows["c"] == ["n/a"] * 7
    assert rows["mean"] == ["87.5", "50.0", "50.0", "90.0", *na3]
    assert body[-1].startswith("mean")
    assert "demo" not in format_table(result)

    md = to_markdown(result).splitlines()
    assert md[0] == "| Category | Image AUROC | Pixel AUROC | AUPRO | F1-max | FR@thr | Escape@thr | F1@thr |"
    assert md[1] == "|:---|---:|---:|---:|---:|---:|---:|---:|"
    assert md[2] == "| a | 75.0 | 100.0 | 100.0 | 80.0 | n/a | n/a | n/a |"
    assert md[-1] == "| mean | 87.5 | 50.0 | 50.0 | 90.0 | n/a | n/a | n/a |"
    assert len(md) == 2 + 3 + 1


def test_decision_metrics_at_the_shipped_threshold() -> None:
    categories, labels, scores, masks, maps = _report_example()
    norm = {
        # a: z = (s - 0.2) / 0.1 -> [-1, 4, 2, 6] for labels [0, 0, 1, 1]; threshold z > 3
        "a": {"score_mean": 0.2, "score_std": 0.1, "image_threshold_z": 3.0},
        # b: z = (s - 0.1) / 0.1 -> [1, 8] for labels [0, 1]; threshold z > 0.5 flags both
        "b": {"score_mean": 0.1, "score_std": 0.1, "image_threshold_z": 0.5},
        "c": {"score_mean": 0.0, "score_std": 1.0, "image_threshold_z": 3.0},
    }
    result = evaluate_predictions(categories, labels, scores, masks, maps, normalization=norm)
    a, b, c = (result["per_category"][k] for k in "abc")
    # a flags the good 0.6 (z 4) and the bad 0.8 (z 6), passes the bad 0.4 (z 2)
    assert a["false_reject_rate"] == pytest.approx(0.5)
    assert a["escape_rate"] == pytest.approx(0.5)
    assert a["f1_at_threshold"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert a["median_z_good"] == pytest.approx(1.5)
    assert (b["false_reject_rate"], b["escape_rate"]) == (1.0, 0.0)
    assert b["f1_at_threshold"] == pytest.approx(2 / 3)
    assert c["false_reject_rate"] == 0.0 and math.isnan(c["escape_rate"]) and math.isnan(c["f1_at_threshold"])
    assert result["mean"]["false_reject_rate"] == pytest.approx(0.5)
    assert result["mean"]["escape_rate"] == pytest.approx(0.25)
    with pytest.raises(DataError, match=r"unknown category 'c'; known: a, b"):
        evaluate_predictions(categories, labels, scores, normalization={"a": norm["a"], "b": norm["b"]})


def test_pixel_metrics_are_na_without_masks() -> None:
    categories, labels, scores, masks, maps = _report_example()
    has_mask = np.ones(8, bool)
    has_mask[[5]] = False  # category b's only anomalous image is labelled per image
    has_mask[[3]] = False  # one of a's two anomalous images too
    result = evaluate_predictions(categories, labels, scores, masks, maps, has_mask=has_mask)
    a, b = result["per_category"]["a"], result["per_category"]["b"]
    assert math.isnan(b["pixel_auroc"]) and math.isnan(b["aupro"]) and "pixel metrics n/a" in b["warning"]
    assert b["image_auroc"] == 1.0  # image metrics still measured
    assert a["pixel_auroc"] == 1.0 and "1 anomalous images without masks" in a["warning"]
    assert "n/a" in format_table(result).split("\n")[3]  # b's row
