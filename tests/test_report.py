"""The HTML report: its sections and tables on a small hand-made run (no training), decisions at the shipped
threshold (read from the metrics or computed), identical ROC curves named, pass notes as lists, and the
page rendered in a real headless Chromium (screenshot not blank, no console errors)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomopt.metrics import evaluate_predictions
from anomopt.report import ReportVariant, write_report
from anomopt.report.decisions import threshold_results
from anomopt.report.figures import curve_twins

CATS = ["bottle", "cable"]


def _variant(name, scores, labels, cats, masks, maps, latency=None, norm=None, extra_keys=None):
    metrics = evaluate_predictions(cats, labels, scores, masks, maps)
    for key, value in (extra_keys or {}).items():
        for entry in [*metrics["per_category"].values(), metrics["mean"]]:
            entry[key] = value
    return ReportVariant(name=name, metrics=metrics, labels=labels, scores=scores, categories=cats,
                         latency=latency, size_bytes=2_000_000 if latency else None, normalization=norm)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 16
    cats = [CATS[i % 2] for i in range(n)]
    labels = np.array([1 if i >= 8 else 0 for i in range(n)])
    masks = np.zeros((n, 32, 32))
    masks[labels == 1, 10:20, 10:20] = 1
    maps = rng.random((n, 32, 32)) + 2 * masks
    scores = maps.reshape(n, -1).max(1)
    # the shipped thresholds: score z above 1 (normal scores ~ mean 1.9, std 0.05)
    norm = {c: {"score_mean": 1.9, "score_std": 0.05, "image_threshold_z": 1.0, "map_mean": 0.5,
                "map_std": 0.3, "pixel_threshold_z": 3.0} for c in CATS}
    lat = {"p50_ms": 10.0, "p90_ms": 11.0, "p99_ms": 13.5, "throughput_ips": 250.0, "batch": 8, "peak_rss_mb": 321}
    variants = [
        _variant("FP32 (ORT)", scores, labels, cats, masks, maps, lat, norm),
        _variant("INT8", scores, labels, cats, masks, maps, {**lat, "p50_ms": 5.0}, norm,
                 extra_keys={"false_reject_rate": 0.25, "escape_rate": 0.125, "f1_at_threshold": 0.8}),
        _variant("QAT", scores, labels, cats, masks, maps),  # no latency, no thresholds
    ]
    passes = [
        {"name": "fold_batchnorm", "seconds": 0.1, "drift": {"score": 1e-7, "map": 2e-7, "score_rank_corr": 1.0},
         "tolerance": {"max_score_drift": 1e-4, "max_map_drift": 1e-4}, "notes": {"folded": 12}},
        {"name": "accuracy_gate", "seconds": 2.0, "drift": None, "drift_note": "evaluation only",
         "tolerance": {}, "notes": {"image_auroc_drop": 0.123456}},
        {"name": "lower", "seconds": 3.0, "drift": {"score": 0.01, "map": 0.02, "score_rank_corr": 0.99},
         "tolerance": {"max_score_drift": 0.6}, "notes": {
             "artifact": "/tmp/x", "integer_kernels": {"by_role": {"student": {"integer": 20, "float": 1}}},
             "kept": [f"layer{i}" for i in range(20)]}},
    ]
    rows = []
    for i in (8, 0):  # a defect, then a normal image
        rows.append({"image": np.full((32, 32, 3), 0.5), "gt": masks[i] > 0, "caption": f"img{i}",
                     "maps": {"FP32 (ORT)": maps[i] * 3, "INT8": maps[i] * 3},
                     "notes": {"FP32 (ORT)": "score z 1.0: ok", "INT8": "score z 1.1: DEFECT"}})
    panels = [{"category": "bottle", "variants": ["FP32 (ORT)", "INT8"], "threshold_z": 3.0, "rows": rows}]
    out = write_report(
        tmp_path_factory.mktemp("report") / "index.html", "test report", variants, passes, panels,
        summary="console text", context={"CPU": "test cpu", "threads": 2, "image size": "32 x 32 px"},
        notes=["INT8 is 2.00x as fast because ..."], baseline="FP32 (ORT)",
    )
    return out, variants


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_sections_latency_columns_and_context(report):
    path, _ = report
    html = path.read_text()
    text = _text(html)
    for heading in ("Machine and settings", "Accuracy, latency, memory and size", "Decisions at the shipped threshold",
                    "Accuracy vs latency", "ROC curves", "Anomaly maps: FP32 beside INT8", "Per-pass drift"):
        assert heading in text, heading
    assert "p90 ms" in text and "p99 ms" in text and "peak RSS MiB" in text and "img/s (batch)" in text
    assert "13.50" in text and "250.0 (8)" in text and "321" in text and "2.00" in text
    assert "1.00x" in text and "2.00x" in text  # speed-up vs the FP32 (ORT) baseline
    assert "test cpu" in text and "32 x 32 px" in text and "INT8 is 2.00x as fast" in text
    assert "<script" not in html


def test_decisions_read_from_metrics_computed_from_thresholds_or_na(report):
    _, variants = report
    fp32, int8, qat = (threshold_results(v) for v in variants)
    assert int8["bottle"] == {"false_reject_rate": 0.25, "escape_rate": 0.125, "f1_at_threshold": 0.8}
    # computed locally from the shipped threshold: score z > 1 means score > 1.95
    v = variants[0]
    sel = np.asarray(v.categories) == "cable"
    flagged = v.scores[sel] > 1.95
    normal, defect = v.labels[sel] == 0, v.labels[sel] == 1
    assert fp32["cable"]["false_reject_rate"] == pytest.approx(flagged[normal].mean())
    assert fp32["cable"]["escape_rate"] == pytest.approx((~flagged[defect]).mean())
    assert qat["cable"] == {"false_reject_rate": None, "escape_rate": None, "f1_at_threshold": None}
    text = _text(report[0].read_text())
    assert "25.0 / 12.5 / 80.0" in text and "n/a / n/a / n/a" in text


def test_pass_notes_are_lists_and_missing_drift_says_why(report):
    html = report[0].read_text()
    assert "{'" not in html and "&#x27;:" not in html  # no raw Python dict
    text = _text(html)
    assert "n/a (evaluation only)" in text
    assert "layer0, layer1" in text and "(20 in all)" in text and "image_auroc_drop: 0.1235" in text
    assert "integer: 20" in text and "score drift ≤ 0.6" in text.replace("&le;", "≤")


def test_identical_roc_curves_are_named():
    labels = np.array([0, 0, 1, 1, 0, 1])
    a = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    twins = curve_twins({"FP32": (labels, a), "PTQ": (labels, a * 2 + 1), "QAT": (labels, -a)})
    assert twins == {"FP32": None, "PTQ": "FP32", "QAT": None}


def _chromium() -> str | None:
    return next((p for p in ("chromium", "chromium-browser", "google-chrome") if shutil.which(p)), None)


def _render(url: str, png: Path, browser: str) -> str:
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         f"--screenshot={png}", "--window-size=1280,3000", url],
        capture_output=True, text=True, timeout=180,
    )
    return proc.stderr


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    assert browser is not None
    # the console check can fail: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>undefinedFunction()</script></body></html>")
    assert _console_errors(_render(bad.as_uri(), tmp_path / "bad.png", browser))

    png = tmp_path / "report.png"
    log = _render(report[0].as_uri(), png, browser)
    assert png.is_file(), log[-2000:]
    assert _console_errors(log) == []
    with Image.open(png) as im:
        gray = np.asarray(im.convert("L"))
        colours = len(im.convert("RGB").getcolors(maxcolors=1 << 20) or [])
    assert gray.shape == (3000, 1280)
    assert gray.std() > 10 and colours > 50  # text, tables and figures, not a blank page
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", report[0].as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    assert "Decisions at the shipped threshold" in dom and dom.count("<img") >= 5


def test_demo_map_panels_put_fp32_beside_int8_in_normalized_units():
    from types import SimpleNamespace

    from anomopt.demo import map_panels

    n = 6
    labels = np.array([1, 1, 1, 0, 0, 1])
    masks = np.zeros((n, 8, 8))
    for i, area in enumerate([4, 16, 9, 0, 0, 1]):
        masks[i].flat[:area] = 1
    maps = np.arange(n * 64, dtype=float).reshape(n, 8, 8) / 64
    paths = [f"/d/{c}/test/{'good' if y == 0 else 'crack'}/{i:03d}.png"
             for i, (c, y) in enumerate(zip(["a"] * 5 + ["b"], labels))]
    cats = ["a"] * 5 + ["b"]

    def preds(scale):
        return SimpleNamespace(categories=cats, labels=labels, scores=np.arange(n, dtype=float) * scale,
                               masks=masks, maps=maps * scale, paths=paths)

    norm = {c: {"score_mean": 2.0, "score_std": 1.0, "image_threshold_z": 1.0, "map_mean": 1.0, "map_std": 2.0,
                "pixel_threshold_z": 3.0} for c in ("a", "b")}
    test = [{"image": torch.zeros(3, 8, 8)} for _ in range(n)]
    evals = {"FP32": (preds(1.0), None), "INT8": (preds(2.0), None)}
    panels = map_panels(evals, {"FP32": norm, "INT8": norm}, test, ["FP32", "INT8"])
    assert [p["category"] for p in panels] == ["a", "b"] and panels[0]["variants"] == ["FP32", "INT8"]
    rows = panels[0]["rows"]
    # the two largest defects (16 then 9 pixels), then the first normal image
    assert [r["caption"] for r in rows] == ["crack/001.png", "crack/002.png", "normal/003.png"]
    np.testing.assert_allclose(rows[0]["maps"]["FP32"], (maps[1] - 1.0) / 2.0)
    np.testing.assert_allclose(rows[0]["maps"]["INT8"], (2 * maps[1] - 1.0) / 2.0)
    # image 1: z = (1 - 2) / 1 = -1 (ok) for FP32, (2 - 2) / 1 = 0 (ok) for INT8; image 3 (normal): 1 vs 4
    assert rows[0]["notes"]["FP32"].endswith(": ok") and rows[2]["notes"]["INT8"].endswith(": DEFECT")
    assert rows[2]["notes"]["FP32"] == "score z 1 <= 1: ok"
    assert not rows[2]["gt"].any() and panels[0]["threshold_z"] == 3.0
    assert len(panels[1]["rows"]) == 1  # category b: one defect, no normal image
