"""The worked example in docs/pass_authoring.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "pass_authoring.md"


def test_pass_authoring_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "no python example in docs/pass_authoring.md"
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    om = namespace["om"]
    assert om.report["kept_fp"] == ["student.features.conv_stem"]
    assert [p["name"] for p in om.report["passes"]][-2:] == ["keep_stem_fp", "lower"]
