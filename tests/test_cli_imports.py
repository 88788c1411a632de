"""The command line registers without torch; without the training extra, commands say what to install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_building_the_parser_imports_no_torch():
    proc = _python("""
        import sys
        from anomopt.cli.main import build_parser
        build_parser()
        print(sorted(m for m in ("torch", "timm", "matplotlib") if m in sys.modules))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_without_the_training_extra_commands_name_it():
    """Packages of the extra made unimportable: --help and predict's parser work, train stops in one line."""
    proc = _python("""
        import sys
        for name in ("torch", "torchvision", "timm", "scipy", "matplotlib", "sklearn", "tqdm", "onnx"):
            sys.modules[name] = None  # importing them now fails
        from anomopt.cli.main import build_parser, main
        parser = build_parser()
        assert "predict" in parser.format_help() and "data" in parser.format_help()
        print(main(["train", "--data", "d", "--out", "o"]))
        print(main(["data", "synth", "--out", "d"]))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "2"]
    lines = proc.stderr.strip().splitlines()
    extra = "pip install 'anomopt[train]'"
    assert lines == [
        f"anomopt: error: `anomopt train` needs the training extra (torch is not installed): {extra}",
        f"anomopt: error: `anomopt data` needs the training extra (scipy is not installed): {extra}",
    ]
