"""Documentation examples: the pass-authoring example runs; README / user-guide commands and code are real."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "pass_authoring.md"


def test_pass_authoring_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "no python example in docs/pass_authoring.md"
    module = types.ModuleType("docs_example")  # run as a module, as a user's script would be
    sys.modules[module.__name__] = module
    try:
        exec(compile(blocks[0], str(DOC), "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - our own docs
    finally:
        sys.modules.pop(module.__name__, None)
    om = module.om
    assert om.report["kept_fp"] == ["student.features.conv_stem"]
    assert [p["name"] for p in om.report["passes"]][-2:] == ["keep_stem_fp", "lower"]


# ---------------------------------------------------------------------------------------------------------
# README.md and docs/user_guide.md (and docs/jetson.md's commands): every `anomopt` command line uses flags
# the parsers have, every category is one the example data (the synthetic generator) makes, every Python
# example compiles and calls real names with real keywords, and the deployment example runs.

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = [ROOT / "README.md", ROOT / "docs" / "user_guide.md", ROOT / "docs" / "jetson.md"]


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def _command_lines(path: Path) -> list[str]:
    """``anomopt ...`` lines of the bash blocks (continuations joined, comments cut) and inline code spans."""
    lines = []
    for block in _blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("anomopt "):
                lines.append(line)
    for span in re.findall(r"`(anomopt [^`]+)`", path.read_text().replace("\n", " ")):
        lines.append(re.sub(r"[\[\]]", "", span))  # optional parts written as [--flag value]
    return lines


def _subparser(parser, words: list[str]):
    """The (sub)parser that ``anomopt WORDS...`` reaches, and the words it consumed."""
    import argparse

    used = 0
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or used >= len(words) or words[used] not in actions[0].choices:
            return parser, used
        parser = actions[0].choices[words[used]]
        used += 1


def _doc_commands():
    return [(path.name, line) for path in USER_DOCS for line in _command_lines(path)]


def test_docs_have_commands_to_check():
    names = {name for name, _ in _doc_commands()}
    assert {"README.md", "user_guide.md", "jetson.md"} <= names


@pytest.mark.parametrize(("doc", "line"), _doc_commands())
def test_doc_command_flags_exist(doc, line):
    import shlex

    from anomopt.cli.main import build_parser
    from anomopt.data.synthetic import SYNTHETIC_CATEGORIES

    words = shlex.split(line)[1:]
    parser, used = _subparser(build_parser(), words)
    assert used or words[0] in ("--help", "--version"), f"{doc}: `{line}` names no anomopt command"
    options = {s: a for a in parser._actions for s in a.option_strings}
    for i, word in enumerate(words[used:], start=used):
        if not word.startswith("--"):
            continue
        flag = word.split("=", 1)[0]
        assert flag in options, f"{doc}: `{line}`: {flag} is not an option of `anomopt {' '.join(words[:used])}`"
        action = options[flag]
        value = word.split("=", 1)[1] if "=" in word else (words[i + 1] if i + 1 < len(words) else None)
        if action.choices is not None and value not in ("...", None):
            value = action.type(value) if callable(action.type) else value
            assert value in action.choices, f"{doc}: `{line}`: {flag} {value} is not one of {action.choices}"
        if flag in ("--category", "--categories") and value not in ("all", "...", None):
            known = set(SYNTHETIC_CATEGORIES)
            assert set(str(value).split(",")) <= known, f"{doc}: `{line}`: no category {value!r} in the example data"


def _python_examples() -> list[tuple[str, str]]:
    return [(path.name, block) for path in USER_DOCS for block in _blocks(path, "python")]


@pytest.mark.parametrize(("doc", "code"), _python_examples())
def test_doc_python_examples_call_real_names(doc, code):
    """Compiles; its imports resolve; every call of an imported function uses keywords it accepts; every
    ``category=`` is a category of the example data."""
    import ast
    import importlib
    import inspect

    from anomopt.data.synthetic import SYNTHETIC_CATEGORIES

    tree = ast.parse(code, filename=doc)
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anomopt"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                imported[alias.asname or alias.name] = getattr(module, alias.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "category" and isinstance(kw.value, ast.Constant):
                assert kw.value.value in SYNTHETIC_CATEGORIES, f"{doc}: category={kw.value.value!r} not in the data"
        func = node.func
        target = imported.get(func.id) if isinstance(func, ast.Name) else None
        if target is None or not callable(target):
            continue
        params = inspect.signature(target).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        for kw in node.keywords:
            assert kw.arg is None or kw.arg in params, f"{doc}: {func.id}() has no keyword {kw.arg!r}"


def test_user_guide_deploy_example_runs(tmp_path, monkeypatch):
    """The Predictor example, as written, on a small synthetic set and an FP32 artifact made here."""
    import torch

    from anomopt.api import optimize
    from anomopt.data.synthetic import generate_synthetic
    from anomopt.models import build_model

    (code,) = [b for b in _blocks(ROOT / "docs" / "user_guide.md", "python") if "Predictor(" in b]
    monkeypatch.chdir(tmp_path)
    generate_synthetic("data/synth", categories=["fabric"], n_train=2, n_test=6, image_size=64, progress=False)
    torch.manual_seed(0)
    model = build_model("stfpm", image_size=64, pretrained=False).eval()
    norm = {"fabric": {"score_mean": 1.0, "score_std": 0.5, "image_threshold_z": 3.0, "map_mean": 0.2,
                       "map_std": 0.1, "pixel_threshold_z": 4.0, "n_val": 4}}
    optimize(model, "cpu", 32, calib=torch.rand(4, 3, 64, 64), categories=["fabric"], normalization=norm,
             workdir=tmp_path / "work", progress=False).save("artifacts/int8")
    namespace: dict = {"__name__": "docs_example", "print": lambda *a: printed.append(a)}
    printed: list = []
    exec(compile(code, "docs/user_guide.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert len(printed) == 1 and printed[0][2] in (True, False)


def test_doc_categories_exist_in_the_example_data():
    """``category="..."`` anywhere in the user docs (code blocks and inline code) names a synthetic category."""
    from anomopt.data.synthetic import SYNTHETIC_CATEGORIES

    for path in USER_DOCS:
        for name in re.findall(r"category=[\"'](\w+)[\"']", path.read_text()):
            assert name in SYNTHETIC_CATEGORIES, f"{path.name}: category={name!r} is not in the example data"
