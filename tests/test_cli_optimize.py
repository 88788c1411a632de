"""One command for one job: ``anomopt optimize`` and its alias ``export`` share one flag set; old
spellings still parse; flags are checked before any work."""

from __future__ import annotations

import argparse

import pytest

from anomopt.cli.main import build_parser, main


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _flags(sub: argparse.ArgumentParser) -> set[str]:
    return {s for a in sub._actions for s in a.option_strings}


def test_export_is_optimize_with_the_same_flags():
    parser = build_parser()
    optimize, export = _sub(parser, "optimize"), _sub(parser, "export")
    assert optimize is export
    flags = _flags(optimize)
    for flag in ("--data", "--bits", "--scope", "--evaluate", "--dla-core", "--trt-quantization", "--fp16-fallback",
                 "--workspace-mib", "--quantizer", "--threshold-policy", "--calib-method"):
        assert flag in flags, flag
    assert "--calib-data" not in optimize.format_help()  # the old spelling parses but is not advertised


@pytest.mark.parametrize("command", ["optimize", "export"])
def test_old_spellings_still_parse(command):
    args = build_parser().parse_args([command, "m.ckpt", "--calib-data", "d", "--bits", "int8", "--out", "o"])
    assert (args.data, args.bits, args.out) == ("d", 8, "o")
    args = build_parser().parse_args([command, "m.ckpt", "--data", "d", "--bits", "fp16", "--out", "o"])
    assert (args.data, args.bits) == ("d", 16)
    assert build_parser().parse_args(["bench", "m.ckpt", "--calib-data", "d"]).data == "d"


def test_bad_bits_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["optimize", "m.ckpt", "--bits", "4", "--out", "o"])
    assert "bits must be 8, 16 or 32 (or int8, fp16, fp32)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bits", "8"], "--data DIR is required at 8 bits"),
        (["--bits", "16"], "target 'cpu' does not run FP16; it runs FP32, INT8"),
        (["--bits", "32", "--evaluate"], "--evaluate needs --data DIR"),
        (["--bits", "32", "--max-image-auroc-drop", "1"], "--max-image-auroc-drop needs --evaluate"),
    ],
)
def test_flags_are_checked_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "art"
    assert main(["optimize", str(tmp_path / "missing.ckpt"), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
