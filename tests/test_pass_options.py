"""Declared pass options, checked pass_options, and the lazy built-in pass table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from anomopt.api import apply_pass_options, optimize
from anomopt.errors import ConfigError
from anomopt.passes import (
    BUILTIN_PASSES,
    Pass,
    available_pipelines,
    known_passes,
    load_pipeline,
    register_pass,
    resolve_pass,
)
from anomopt.passes.pipeline import pipeline_from_dict, pipelines_dir
from anomopt.passes.registry import pass_class

SRC = Path(__file__).resolve().parents[1] / "src"

CPU_INT8 = """
[pipeline]
name = "mine"
target = "cpu"
bits = 8

[[pass]]
name = "fold_batchnorm"

[[pass]]
name = "insert_fake_quant"

[[pass]]
name = "calibrate"
{calibrate}

[[pass]]
name = "lower"
"""


def _write(tmp_path: Path, calibrate: str) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(CPU_INT8.format(calibrate=calibrate))
    return path


def test_misspelt_option_in_pipeline_file_names_file_pass_key_and_known_keys(tmp_path):
    path = _write(tmp_path, 'methd = "entropy"')
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    text = str(err.value)
    assert str(path) in text and "[[pass]] #3" in text
    assert "'calibrate'" in text and "'methd'" in text
    assert "known options: method, percentile, batch_size" in text and "max_score_drift" in text


def test_wrong_option_type_in_pipeline_file_is_a_config_error(tmp_path):
    path = _write(tmp_path, 'batch_size = "eight"')
    with pytest.raises(ConfigError, match=r"'calibrate': option 'batch_size' must be an integer, not 'eight'"):
        load_pipeline(path)
    path = _write(tmp_path, "max_map_drift = \"wide\"")
    with pytest.raises(ConfigError, match=r"tolerance 'max_map_drift' must be a number"):
        load_pipeline(path)


def test_valid_options_are_typed_and_only_given_ones_are_recorded(tmp_path):
    path = _write(tmp_path, 'method = "percentile"\npercentile = 99\nmax_map_drift = 0.5')
    calibrate = load_pipeline(path).passes[2]
    assert calibrate.options.method == "percentile"
    assert calibrate.options.percentile == 99.0 and isinstance(calibrate.options.percentile, float)
    assert calibrate.options.batch_size == 8  # the declared default
    assert calibrate.given_options == {"method": "percentile", "percentile": 99.0}
    assert calibrate.tolerance_override == {"max_map_drift": 0.5}


def test_nested_option_types_are_checked():
    prune = resolve_pass("prune", stage_ratios={"blocks.5": 0.25}, roles=["student"])
    assert prune.options.stage_ratios == {"blocks.5": 0.25}
    with pytest.raises(ConfigError, match="option 'stage_ratios' must be a table of strings to numbers"):
        resolve_pass("prune", stage_ratios={"blocks.5": "half"})
    with pytest.raises(ConfigError, match="option 'roles' must be a list of strings"):
        resolve_pass("prune", roles="student")
    with pytest.raises(ConfigError, match="option 'drop_dead' must be true or false, not 1"):
        resolve_pass("prune", drop_dead=1)
    assert resolve_pass("insert_fake_quant", weight_bits=None).options.weight_bits is None


def test_a_pass_that_declares_no_options_refuses_any():
    with pytest.raises(ConfigError, match="'accuracy_gate' has no option 'limit'; known options: max_score_drift"):
        resolve_pass("accuracy_gate", limit=1.0)
    gate = resolve_pass("accuracy_gate", max_image_auroc_drop=1)
    assert gate.tolerance_override == {"max_image_auroc_drop": 1.0}


def test_pass_options_for_a_pass_not_in_the_pipeline_is_a_config_error(toy_model):
    pipeline = load_pipeline(pipelines_dir() / "cpu-fp32.toml")
    with pytest.raises(ConfigError, match="pass_options names pass 'calibrate', which is not in pipeline 'cpu-fp32'"):
        apply_pass_options(pipeline, {"calibrate": {"method": "max"}})
    with pytest.raises(ConfigError, match="pass 'lower' has no option 'dla'; known options: backend"):
        apply_pass_options(pipeline, {"lower": {"dla": 0}})
    apply_pass_options(pipeline, {"lower": {"dla_core": 0}})
    assert pipeline.passes[-1].options.dla_core == 0 and pipeline.passes[-1].given_options == {"dla_core": 0}
    # through optimize(), before any work is done
    with pytest.raises(ConfigError, match="'qat_finetune', which is not in pipeline 'custom'"):
        optimize(toy_model, "cpu", 32, passes=["fold_batchnorm"], pass_options={"qat_finetune": {"epochs": 1}},
                 progress=False)


def test_every_shipped_pipeline_loads():
    names = available_pipelines()
    assert len(names) >= 16 and "cpu-int8" in names and "xavier_nx-int8-modelopt" in names
    for name in names:
        pipeline = load_pipeline(pipelines_dir() / f"{name}.toml")
        assert pipeline.passes and pipeline.passes[-1].name == "lower", name


def test_builtin_table_matches_the_registered_classes():
    for name, where in BUILTIN_PASSES.items():
        cls = pass_class(name)
        assert cls.name == name and f"{cls.__module__}:{cls.__qualname__}" == where
        for option, (type_name, default, doc) in cls.option_docs().items():
            assert doc and type_name, f"{name}.{option} has no doc"
            assert getattr(cls(**{option: default}).options, option) == default  # the default fits its type
        assert all(f.name not in Pass.TOLERANCE_KEYS for f in fields(cls.Options))
    assert set(BUILTIN_PASSES) <= set(known_passes())


def test_load_pipeline_alone_resolves_lower_without_importing_targets_first():
    code = (
        "import sys\n"
        "from anomopt.passes.pipeline import load_pipeline, pipelines_dir\n"
        "assert 'anomopt.targets' not in sys.modules, 'targets imported ahead'\n"
        "p = load_pipeline(pipelines_dir() / 'xavier_nx-int8-modelopt.toml')\n"
        "print(' '.join(type(x).__name__ for x in p.passes))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["FoldBatchNorm", "ModeloptQuantize", "Lower"]


def test_a_name_cannot_be_registered_twice():
    class Other(Pass):
        name = "calibrate"

    with pytest.raises(ConfigError, match="pass name 'calibrate' is already registered to anomopt.passes.calibrate"):
        register_pass(Other)

    class Mine(Pass):
        name = "test_pass_options_mine"

    try:
        assert register_pass(Mine) is Mine and register_pass(Mine) is Mine  # the same class again: a no-op

        class Mine(Pass):  # noqa: F811 - the same definition run again (a notebook cell) replaces it
            name = "test_pass_options_mine"

        assert register_pass(Mine) is Mine and pass_class("test_pass_options_mine") is Mine

        class Impostor(Pass):
            name = "test_pass_options_mine"

        with pytest.raises(ConfigError, match="already registered"):
            register_pass(Impostor)
        assert isinstance(resolve_pass("test_pass_options_mine"), Mine)
    finally:
        from anomopt.passes.registry import PASS_REGISTRY

        PASS_REGISTRY.pop("test_pass_options_mine", None)


def test_unknown_pass_lists_builtin_names_not_yet_imported():
    with pytest.raises(ConfigError) as err:
        pipeline_from_dict({"pass": [{"name": "lowr"}]}, source="x.toml")
    assert "unknown pass 'lowr'" in str(err.value) and "lower" in str(err.value)
    assert "modelopt_quantize" in str(err.value)


def test_docs_table_lists_every_builtin_option_with_its_default():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "pass_authoring.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| [^|]+ \| `([^`]*)` \|", doc, flags=re.M)
    documented = {(p, o): d for p, o, d in rows}
    declared = {}
    for name in BUILTIN_PASSES:
        for option, (_type, default, _doc) in pass_class(name).option_docs().items():
            declared[(name, option)] = "unset" if default is None else json.dumps(default)
    assert documented == declared
