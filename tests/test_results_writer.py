"""benchmarks/results_writer.py: sections and parts are replaced in place, the rest of RESULTS.md stays
byte-identical, missing ones are created, replaced text is archived; every benchmark script writes through it."""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import results_writer as rw  # noqa: E402


def _run(date: str = "2026-12-07 20:00 UTC", command: str = "bench --x 1") -> rw.RunInfo:
    return rw.RunInfo(command, date, "Test CPU", 2, "1", (1.0, 2.0, 3.0), (1.5, 2.5, 3.5))


def _span(text: str, key: str) -> str:
    s = next(b for b in rw.sections(text) if b.key == key)
    return text[s.start:s.end]


def _outside(text: str, key: str) -> tuple[str, str]:
    """Everything before and after section ``key``, the index left out (it is regenerated)."""
    s = next(b for b in rw.sections(text) if b.key == key)
    before = re.sub(r"<!-- index -->.*?<!-- /index -->", "", text[:s.start], flags=re.S)
    return before, text[s.end:]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "RESULTS.md"
    rw.write_section("alpha", "Alpha bench", "benchmarks/alpha.py", "| a |\n|---|\n| 1 |", _run(), path=path)
    rw.write_section("beta", "Beta bench", "benchmarks/beta.py", "beta body v1", _run(), part="x", path=path)
    rw.write_section("beta", "Beta bench", "benchmarks/beta.py", "beta body y", _run(), part="y", path=path)
    rw.write_section("gamma", "Gamma", "benchmarks/gamma.py", "gamma body", _run(), path=path)
    return path


def test_new_file_has_preamble_index_and_sections(results: Path) -> None:
    text = results.read_text()
    assert text.startswith("# Benchmark results")
    assert [s.key for s in rw.sections(text)] == ["alpha", "beta", "gamma"]
    assert [p.key for p in rw.parts(text, rw.sections(text)[1])] == ["x", "y"]
    idx = text[text.index(rw.INDEX_START):text.index(rw.INDEX_END)]
    assert "| [Alpha bench](#alpha-bench) | `benchmarks/alpha.py` | - |" in idx
    assert "| [Beta bench](#beta-bench) | `benchmarks/beta.py` | x, y |" in idx
    assert text.index(rw.INDEX_END) < text.index("<!-- section: alpha")
    alpha = _span(text, "alpha")
    assert "- command: `bench --x 1`" in alpha
    assert "- run: 2026-12-07 20:00 UTC; Test CPU, 2 logical CPUs; threads: 1; load average 1.00, 2.00, 3.00 " \
           "at the start, 1.50, 2.50, 3.50 at the end" in alpha
    assert not (results.parent / "history").exists()  # nothing was replaced yet
    assert results.stat().st_mode & 0o777 == 0o644  # readable like any other file (not mkstemp's 0600)


def test_replacing_a_section_keeps_the_others_byte_identical_and_archives_it(results: Path) -> None:
    old = results.read_text()
    old_alpha = _span(old, "alpha")
    archived = rw.write_section("alpha", "Alpha bench", "benchmarks/alpha.py", "| a |\n|---|\n| 2 |",
                                _run("2026-12-08 09:00 UTC", "bench --x 2"), path=results)
    new = results.read_text()
    assert _outside(new, "alpha") == _outside(old, "alpha")
    assert [s.key for s in rw.sections(new)] == ["alpha", "beta", "gamma"]  # in place, not moved to the end
    assert "| 2 |" in _span(new, "alpha") and "| 1 |" not in _span(new, "alpha")
    assert archived == results.parent / "history" / "alpha.md"
    history = archived.read_text()
    assert "## Replaced 2026-12-08 09:00 UTC by `bench --x 2`" in history
    assert old_alpha in history
    rw.write_section("alpha", "Alpha bench", "benchmarks/alpha.py", "v3", _run(), path=results)
    again = archived.read_text()
    assert again.startswith(history.rstrip("\n")) and again.count("## Replaced") == 2  # appended, oldest first


def test_replacing_a_part_keeps_the_other_parts_and_sections(results: Path) -> None:
    old = results.read_text()
    beta = rw.sections(old)[1]
    old_x, old_y = (old[p.start:p.end] for p in rw.parts(old, beta))
    rw.write_section("beta", "Beta bench", "benchmarks/beta.py", "beta body v2", _run(), part="x", path=results)
    new = results.read_text()
    assert _outside(new, "beta") == _outside(old, "beta")
    beta_new = rw.sections(new)[1]
    x, y = (new[p.start:p.end] for p in rw.parts(new, beta_new))
    assert "beta body v2" in x and "beta body v1" not in new
    assert y == old_y
    assert old_x in (results.parent / "history" / "beta.md").read_text()


def test_a_wider_part_supersedes_the_parts_it_covers(results: Path) -> None:
    rw.write_section("beta", "Beta bench", "benchmarks/beta.py", "both", _run(), part=["x", "y"], path=results)
    text = results.read_text()
    parts = rw.parts(text, rw.sections(text)[1])
    assert [p.key for p in parts] == ["x,y"]
    history = (results.parent / "history" / "beta.md").read_text()
    assert "beta body v1" in history and "beta body y" in history
    assert "| [Beta bench](#beta-bench) | `benchmarks/beta.py` | x,y |" in text
    rw.write_section("beta", "Beta bench", "benchmarks/beta.py", "only z", _run(), part="z", path=results)
    text = results.read_text()
    assert [p.key for p in rw.parts(text, rw.sections(text)[1])] == ["x,y", "z"]  # not covered: appended


def test_a_missing_section_is_created_at_the_end_and_indexed(results: Path) -> None:
    old = results.read_text()
    assert rw.write_section("delta", "Delta: new", "benchmarks/delta.py", "d", _run(), path=results) is None
    new = results.read_text()
    assert [s.key for s in rw.sections(new)] == ["alpha", "beta", "gamma", "delta"]
    end_old = old.index(rw.INDEX_END) + len(rw.INDEX_END)
    end_new = new.index(rw.INDEX_END) + len(rw.INDEX_END)
    assert new[end_new:].startswith(old[end_old:].rstrip("\n"))  # the old sections, byte for byte
    assert "| [Delta: new](#delta-new) | `benchmarks/delta.py` | - |" in new


def test_text_outside_the_markers_survives(results: Path) -> None:
    results.write_text(results.read_text() + "\n## Someone's appended section\n\nfree text\n")
    rw.write_section("alpha", "Alpha bench", "benchmarks/alpha.py", "new", _run(), path=results)
    assert results.read_text().endswith("\n## Someone's appended section\n\nfree text\n")


def test_broken_markers_and_bad_keys_are_refused(results: Path) -> None:
    results.write_text(results.read_text().replace(rw.SECTION_END, "", 1))
    with pytest.raises(ValueError, match=r"RESULTS\.md: section alpha has no closing"):
        rw.write_section("gamma", "Gamma", "benchmarks/gamma.py", "g", _run(), path=results)
    with pytest.raises(ValueError, match="section key"):
        rw.write_section("has space", "T", "s.py", "b", _run(), path=results.parent / "other.md")
    with pytest.raises(ValueError, match="part"):
        rw.write_section("ok", "T", "s.py", "b", _run(), part="a b", path=results.parent / "other.md")


def test_flags_have_one_spelling_with_a_hidden_alias(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser()
    rw.add_args(p)
    assert p.parse_args(["--no-append"]).no_write and p.parse_args(["--no-write"]).no_write
    assert not p.parse_args([]).no_write and p.parse_args([]).results == str(rw.RESULTS)
    assert "--no-append" not in p.format_help() and "--no-write" in p.format_help()
    target = tmp_path / "R.md"
    args = p.parse_args(["--results", str(target), "--no-write"])
    rw.publish(args, "k", "K", "benchmarks/k.py", "body", _run())
    assert "body" in capsys.readouterr().out and not target.exists()
    rw.publish(p.parse_args(["--results", str(target)]), "k", "K", "benchmarks/k.py", "body", _run())
    assert "<!-- section: k script: benchmarks/k.py -->" in target.read_text()


def test_run_info_measures_this_machine() -> None:
    run = rw.RunInfo.start(BENCH / "latency.py", 2, ["--models", "us"])
    assert run.command == "PYTHONPATH=src .venv/bin/python benchmarks/latency.py --models us"
    assert run.cpu and run.logical_cpus >= 1 and len(run.load_start) == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", run.date)
    assert run.finish().load_end is not None


def test_shipped_results_file_is_well_formed() -> None:
    text = (BENCH / "RESULTS.md").read_text()
    found = rw.sections(text, BENCH / "RESULTS.md")
    keys = [s.key for s in found]
    assert len(keys) == len(set(keys)) >= 9  # one section per benchmark
    for s in found:
        assert (BENCH.parent / s.script).is_file(), s.script
        names = [p.key for p in rw.parts(text, s)]
        assert len(names) == len(set(names))
    current = text[text.index(rw.INDEX_START):text.index(rw.INDEX_END) + len(rw.INDEX_END)]
    assert current == rw.index(text)  # the index is up to date
    assert (BENCH / "history" / "README.md").is_file()


def _scripts() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if p.name not in ("results_writer.py", "grid_common.py"))


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: p.name)
def test_every_benchmark_script_writes_through_the_writer(script: Path) -> None:
    """Each script that writes RESULTS.md publishes through results_writer with the shared flags, and
    opens no results file itself."""
    source = script.read_text()
    tree = ast.parse(source)
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert calls & {"rw.publish", "gc.rw.publish"}, f"{script.name} does not publish through results_writer"
    flags = calls & {"rw.add_args", "gc.rw.add_args", "gc.add_common_args"}
    assert flags, f"{script.name} lacks --results / --no-write"
    assert not re.search(r"""open\([^)]*["']a["']""", source), f"{script.name} appends to a file itself"
    assert "RESULTS.md\"" not in source and "RESULTS.md'" not in source  # the path comes from the writer
    section = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("rw.publish")]
    script_arg = ast.literal_eval(section[0].args[3])
    assert script_arg == f"benchmarks/{script.name}"
