"""Smoke test of benchmarks/paper_grid.py: its quick mode on a tiny generated data set prints the paper's
tables with the expected rows and finite metrics, evaluates real INT8 artifacts, and resumes from its cache."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import onnx
import pytest

from anomopt.data import generate_synthetic

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import paper_grid  # noqa: E402


def _table(text: str, title: str) -> list[list[str]]:
    """The body rows of the markdown table under a bold ``title`` prefix."""
    block = text.split(f"**{title}", 1)[1].split("\n\n", 2)[1]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def _numbers(cells: list[str]) -> list[float]:
    return [float(x) for c in cells for x in re.findall(r"-?\d+\.\d+", c)]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    tmp = tmp_path_factory.mktemp("grid")
    data = generate_synthetic(tmp / "data", categories=2, n_train=8, n_test=6, image_size=64, seed=0, progress=False)
    work = tmp / "work"
    argv = ["--data", str(data), "--quick", "--models", "stfpm", "--work-dir", str(work),
            "--results", str(tmp / "RESULTS.md")]
    capture = tmp / "out.txt"
    stdout = sys.stdout
    with capture.open("w") as f:
        sys.stdout = f
        try:
            assert paper_grid.main(argv) == 0
        finally:
            sys.stdout = stdout
    return capture.read_text(), work, data


def test_tables_have_expected_rows_and_finite_metrics(grid_run: tuple[str, Path, Path]) -> None:
    text, _, _ = grid_run
    for n in range(2, 8):
        assert f"**Table {n}:" in text
    t2 = _table(text, "Table 2")
    assert [r[0] for r in t2] == ["STFPM"]
    assert len(_numbers(t2[0][1:])) == 6
    for title in ("Table 3", "Table 4", "Table 5"):
        rows = _table(text, title)
        assert [(r[0], r[1]) for r in rows] == [("STFPM", "one-class"), ("STFPM", "unified")]
        for r in rows:
            values = _numbers(r[2:])
            assert len(values) == 9 and all(math.isfinite(v) for v in values)
            fp, q, pts = values[0], values[1], values[2]  # image AUROC FP32 -> INT8, points
            assert 0.0 <= fp <= 1.0 and 0.0 <= q <= 1.0
            assert pts == pytest.approx(100 * (q - fp), abs=0.11)
    sizes = _numbers(_table(text, "Table 6")[0][1:])
    fp32_student, int8_student = sizes[3], sizes[5]
    assert 0.2 * fp32_student < int8_student < 0.35 * fp32_student  # int8 weights + scales
    lat = _numbers(_table(text, "Table 7")[0][1:])
    assert all(v > 0 for v in lat)


def test_rows_come_from_real_artifacts(grid_run: tuple[str, Path, Path]) -> None:
    _, work, _ = grid_run
    rows = json.loads((work / "measurements.json").read_text())
    assert len(rows) == 3 * 4  # (2 one-class + 1 unified) models x 4 variants
    assert {r["category"] for r in rows.values()} == {"fabric", "brushed_metal", "unified"}
    for r in rows.values():
        ops = {n.op_type for n in onnx.load(r["artifact"]).graph.node}
        assert ("QuantizeLinear" in ops) == (r["variant"] != "fp32")
        assert r["calibration"] is None or r["calibration"]["source"] in ("train", "noise")
    noise = [r for r in rows.values() if r["variant"] == "ptq-noise"]
    assert noise and all(r["calibration"]["source"] == "noise" for r in noise)


def test_resume_reuses_rows(grid_run: tuple[str, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    text, work, data = grid_run
    argv = ["--data", str(data), "--quick", "--models", "stfpm", "--work-dir", str(work), "--no-write",
            "--resume"]
    assert paper_grid.main(argv) == 0
    again = capsys.readouterr().out
    assert "optimize)" not in again  # nothing rebuilt
    assert _table(again, "Table 3") == _table(text, "Table 3")


def test_section_goes_to_its_part_of_results(grid_run: tuple[str, Path, Path]) -> None:
    """The run replaced (here: created) the data set's part of the paper-grid section, with the shared
    header; the --no-write rerun above left the file alone."""
    import results_writer as rw

    _, work, data = grid_run
    results = work.parent / "RESULTS.md"
    text = results.read_text()
    (section,) = rw.sections(text)
    assert section.key == "paper-grid" and section.script == "benchmarks/paper_grid.py"
    (part,) = rw.parts(text, section)
    assert part.key == data.name
    body = text[part.start:part.end]
    assert "- command: `PYTHONPATH=src .venv/bin/python benchmarks/paper_grid.py --data" in body
    assert "threads: torch 1, ONNX Runtime 2; load average" in body
    assert "**Table 7:" in body
