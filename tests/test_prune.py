"""The prune pass: channel groups, exact surgery, identity at ratio 0, sizes, ONNX export, pipelines."""

from __future__ import annotations

import io
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anomopt.api import optimize
from anomopt.errors import PipelineError
from anomopt.graph import capture
from anomopt.models import build_model
from anomopt.passes import PassManager
from anomopt.passes.base import PassContext
from anomopt.passes.fake_quant import InsertFakeQuant
from anomopt.passes.pipeline import pipeline_from_dict
from anomopt.passes.prune import (
    Prune,
    apply_channel_selection,
    apply_prune_plan,
    find_channel_groups,
    kept_channels,
    ratio_for,
    training_only_modules,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SIZE = 64
MODELS = ("stfpm", "rd", "us")
PIPELINE = os.path.join(os.path.dirname(__file__), "..", "passes", "cpu-int8-prune.toml")
# Small and fast: one importance batch, one fine-tune epoch.
FAST = {"finetune_epochs": 1, "batch_size": 4, "importance_batches": 1, "round_to": 8}
OPTIONS = {
    "stfpm": {"ratio": 0.5, "stage_ratios": {"blocks.4": 0.75, "conv_stem": 0.0}},
    "rd": {"ratio": 0.5},
    "us": {"ratio": 0.5, "drop_training_only": True},
}


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine this is several times faster than two."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def originals() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name, image_size=SIZE).eval() for name in MODELS}


@pytest.fixture(scope="module")
def pruned(originals):
    """Each model pruned through optimize() (so through the pass manager), with its prune record."""
    out = {}
    for name, model in originals.items():
        om = optimize(model, "cpu", 8, calib=_images(12, 1), passes=[("prune", {**FAST, **OPTIONS[name]})],
                      progress=False)
        out[name] = om
    return out


# ----------------------------------------------------------------------------------------------- pure parts


@given(
    channels=st.integers(1, 1024),
    ratio=st.floats(0.0, 0.9, allow_nan=False),
    round_to=st.sampled_from([1, 4, 8, 16]),
)
def test_kept_channels_rounding(channels: int, ratio: float, round_to: int) -> None:
    k = kept_channels(channels, ratio, round_to)
    assert 1 <= k <= channels
    assert k % round_to == 0 or k == channels
    assert k >= channels * (1 - ratio) - 1e-6  # never prunes more than asked
    assert kept_channels(channels, 0.0, round_to) == channels


def test_stage_ratio_keys_match_dotted_fragments() -> None:
    name = "student.features.blocks.4.1.conv_pw"
    assert ratio_for(name, 0.5, None) == 0.5
    assert ratio_for(name, 0.5, {"blocks.4": 0.75}) == 0.75
    assert ratio_for(name, 0.5, {"blocks.4": 0.75, "blocks.4.1": 0.1}) == 0.1  # the longest key wins
    assert ratio_for(name, 0.5, {"blocks.41": 0.9, "locks.4": 0.9}) == 0.5  # whole dotted parts only


# --------------------------------------------------------------------- channel groups and exact surgery


class _ToyStudent(nn.Module):
    """Residual add, concat, depthwise conv, fork through upsampling, and a tapped output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.expand = nn.Sequential(
            nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
        self.a = nn.Conv2d(8, 6, 1)
        self.b = nn.Conv2d(8, 4, 1)
        self.c = nn.Sequential(nn.Conv2d(10, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2)
        self.d = nn.Conv2d(12, 5, 1)
        self.e = nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s = self.stem(x)
        r = self.project(self.expand(s)) + s  # residual: stem and project outputs are coupled
        h = self.c(torch.cat([self.a(r), self.b(r)], dim=1))  # concat: a and b stay whole
        return [r, self.d(self.up(h)), self.e(h)]  # r is a tap


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student = _ToyStudent()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.student(x)


def _toy() -> _Toy:
    torch.manual_seed(0)
    toy = _Toy()
    for m in toy.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so slicing them matters
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return toy.eval()


def test_groups_respect_residuals_concats_and_taps() -> None:
    groups = {g.producer: g for g in find_channel_groups(_toy(), torch.rand(1, 3, 8, 8))}
    assert set(groups) == {"student.expand.0", "student.c.0"}
    assert groups["student.expand.0"].consumers == ["student.project.0"]
    assert "student.expand.3" in groups["student.expand.0"].members  # the depthwise conv follows
    assert sorted(groups["student.c.0"].consumers) == ["student.d", "student.e"]
    assert "student.up" in groups["student.c.0"].members


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_pruning_equals_zeroing_the_removed_channels(data) -> None:
    toy = _toy()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    groups = find_channel_groups(toy, x[:1])
    keep = {}
    for g in groups:
        choice = st.lists(st.integers(0, g.channels - 1), min_size=1, max_size=g.channels, unique=True)
        idx = data.draw(choice)
        keep[g.producer] = torch.tensor(sorted(idx))
    # reference: the unpruned model with the removed channels zeroed at every consumer's input
    handles = []
    for g in groups:
        mask = torch.zeros(g.channels)
        mask[keep[g.producer]] = 1.0
        for c in g.consumers:
            handles.append(toy.get_submodule(c).register_forward_pre_hook(
                lambda mod, args, m=mask: (args[0] * m.view(1, -1, 1, 1),)))
    with torch.no_grad():
        ref = toy(x)
    for h in handles:
        h.remove()
    apply_channel_selection(toy, groups, keep)
    with torch.no_grad():
        out = toy(x)
    for o, r in zip(out, ref, strict=True):
        assert o.shape == r.shape
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ the pass on models


@pytest.mark.parametrize("name", MODELS)
def test_ratio_zero_is_identity(originals, name: str) -> None:
    model = build_model(name, image_size=SIZE, pretrained=False).eval()
    model.load_state_dict(originals[name].state_dict())
    x = _images(3, 7)
    with torch.no_grad():
        ref = model(x)
    graph = capture(model, x[:1])
    options = {"ratio": 0.0, "drop_training_only": name == "us"}
    ctx = PassContext(train_images=None)
    out_graph = Prune(**options).run(graph, ctx)
    notes = ctx.notes
    assert notes["groups_pruned"] == 0 and notes["finetune_losses"] == []
    with torch.no_grad():
        out = out_graph.model(x)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("name", MODELS)
def test_shapes_kept_and_teacher_matched(originals, pruned, name: str) -> None:
    model = pruned[name].graph.model
    x = _images(2, 3)
    with torch.no_grad():
        score, amap = model(x)
        ref_score, ref_map = originals[name](x)
        t = model.teacher_features(x)
        s = model.student_features(x, t)
    assert score.shape == ref_score.shape and amap.shape == ref_map.shape
    assert torch.isfinite(score).all() and torch.isfinite(amap).all()
    t_ref = originals[name].teacher_features(x)
    assert [f.shape for f in t] == [f.shape for f in t_ref]
    if name == "us":
        assert s[0].shape[1:] == (3, *t[0].shape)[1:]  # every student regresses every descriptor channel
    else:
        assert [f.shape for f in s] == [f.shape for f in t]  # one-to-one with the teacher's channels


@pytest.mark.parametrize("name", MODELS)
def test_kept_channels_follow_ratio_and_rounding(pruned, name: str) -> None:
    notes = pruned[name].passes_report.records[0].notes
    assert notes["groups"] > 0 and notes["groups_pruned"] > 0
    for producer, (n, k) in notes["channels"].items():
        ratio = ratio_for(producer, OPTIONS[name]["ratio"], OPTIONS[name].get("stage_ratios"))
        assert k == kept_channels(n, ratio, 8)
        assert k % 8 == 0 or k == n
    if name == "stfpm":
        assert notes["channels"]["student.features.conv_stem"] == [32, 32]
        assert notes["channels"]["student.features.blocks.4.1.conv_pw"] == [672, 168]


def _expected_student_parameters(model: nn.Module, groups, kept: dict[str, int]) -> int:
    """The student's parameter count once every group keeps ``kept[producer]`` channels, from the layer
    shapes of the unpruned ``model``."""
    out_k, in_k, chan_k = {}, {}, {}
    for g in groups:
        out_k[g.producer] = kept[g.producer]
        in_k.update({c: kept[g.producer] for c in g.consumers})
        chan_k.update({m: kept[g.producer] for m in g.members})
    total = 0
    for name, m in model.student.named_modules(prefix="student"):
        own = [p for _, p in m.named_parameters(recurse=False)]
        if not own:
            continue
        if isinstance(m, nn.Conv2d) and name in chan_k:  # depthwise, carried by a group
            c = chan_k[name]
            total += c * math.prod(m.kernel_size) + (c if m.bias is not None else 0)
        elif isinstance(m, nn.Conv2d):
            o, i = out_k.get(name, m.out_channels), in_k.get(name, m.in_channels)
            total += o * (i // m.groups) * math.prod(m.kernel_size) + (o if m.bias is not None else 0)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * chan_k.get(name, m.num_features) if m.affine else 0
        else:
            total += sum(p.numel() for p in own)
    return total


@pytest.mark.parametrize("name", MODELS)
def test_student_parameters_fall_by_the_removed_channels(originals, pruned, name: str) -> None:
    from anomopt.passes.prune import drop_dead_blocks

    notes = pruned[name].passes_report.records[0].notes
    reference = build_model(name, image_size=SIZE, pretrained=False).eval()
    reference.load_state_dict(originals[name].state_dict())
    drop_dead_blocks(reference)
    groups = find_channel_groups(reference, _images(1, 0))
    kept = {p: k for p, (_, k) in notes["channels"].items()}
    before = sum(p.numel() for p in originals[name].student.parameters())
    expected = _expected_student_parameters(reference, groups, kept)
    after = pruned[name].graph.parameter_count("student")
    assert after == expected == notes["params_after"]["student"]
    assert after < before
    assert notes["params_after"]["teacher"] <= notes["params_before"]["teacher"]
    assert notes["macs_after"]["student"] < notes["macs_before"]["student"]


def test_training_only_modules_of_us_are_dropped(pruned) -> None:
    # The default US (backbone descriptors) has nothing training-only: its teacher runs at inference.
    notes = pruned["us"].passes_report.records[0].notes
    assert not notes["dropped_training_only"]
    # The distilled-teacher US (older checkpoints) trains through its backbone and projection only.
    model = build_model("us", image_size=SIZE, pretrained=False, teacher="distilled", patch_sizes=[15]).eval()
    assert set(training_only_modules(model, _images(1, 0))) == {"backbone", "teacher.project"}
    ctx = PassContext(train_images=None)
    graph = Prune(ratio=0.0, drop_training_only=True).run(capture(model, _images(1, 0)), ctx)
    assert set(ctx.notes["dropped_training_only"]) == {"backbone", "teacher.project"}
    with pytest.raises(RuntimeError, match="dropped by the prune pass"):
        graph.model.distillation_loss(_images(2, 0))


@pytest.mark.parametrize("name", MODELS)
def test_drift_is_recorded(pruned, name: str) -> None:
    record = pruned[name].passes_report.records[0]
    assert record.name == "prune" and "pruned" in record.properties
    assert record.drift is not None
    assert np.isfinite(record.drift["score"]) and np.isfinite(record.drift["map"])
    assert all(np.isfinite(v) for v in record.notes["finetune_losses"])


@pytest.mark.parametrize("name", MODELS)
def test_pruned_model_exports_to_onnx_and_matches(pruned, name: str) -> None:
    model = pruned[name].graph.model.eval()
    x = _images(2, 5)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["score", "anomaly_map"])
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    score, amap = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref_score, ref_map = model(x)
    for got, ref in ((score, ref_score.numpy()), (amap, ref_map.numpy())):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.parametrize("name", MODELS)
def test_prune_plan_rebuilds_the_architecture(pruned, name: str) -> None:
    graph = pruned[name].graph
    fresh = build_model(name, image_size=SIZE, pretrained=False).eval()
    apply_prune_plan(fresh, graph.state.prune, _images(1, 0))
    fresh.load_state_dict(graph.model.state_dict())  # strict: every shape matches
    x = _images(2, 9)
    with torch.no_grad():
        assert torch.equal(fresh(x)[1], graph.model(x)[1])


def test_pruning_twice_keeps_a_loadable_plan(originals) -> None:
    passes = [("prune", {**FAST, "ratio": 0.25, "finetune_epochs": 0}),
              ("prune", {**FAST, "ratio": 0.5, "finetune_epochs": 0})]
    om = optimize(originals["stfpm"], "cpu", 8, calib=_images(8, 2), passes=passes, progress=False)
    first, second = (r.notes for r in om.passes_report.records)
    assert not first["dropped_dead"] and not second["dropped_dead"]  # extractors end at their last tap
    after_first = first["channels"]["student.features.blocks.4.1.conv_pw"][1]  # 672 -> 504
    assert second["channels"]["student.features.blocks.4.1.conv_pw"] == [after_first,
                                                                      kept_channels(after_first, 0.5, 8)]
    fresh = build_model("stfpm", image_size=SIZE, pretrained=False).eval()
    apply_prune_plan(fresh, om.graph.state.prune, _images(1, 0))
    fresh.load_state_dict(om.graph.model.state_dict())


@pytest.mark.parametrize("name", MODELS)
def test_prune_then_quantize_pipeline_runs(originals, name: str) -> None:
    passes = [
        ("prune", {**FAST, "ratio": 0.25, "round_to": 16, "finetune_epochs": 0}),
        "fold_batchnorm",
        "insert_fake_quant",
        ("calibrate", {"method": "percentile"}),
    ]
    om = optimize(originals[name], "cpu", 8, calib=_images(8, 2), passes=passes, progress=False)
    assert [r.name for r in om.passes_report.records] == ["prune", "fold_batchnorm", "insert_fake_quant",
                                                          "calibrate"]
    assert {"pruned", "calibrated"} <= om.graph.properties
    for _, (n, k) in om.passes_report.records[0].notes["channels"].items():
        assert k % 16 == 0 or k == n
    scores, maps = om.predict(_images(2, 4))
    assert np.isfinite(scores).all() and maps.shape == (2, SIZE, SIZE)


def test_prune_is_refused_after_fake_quant() -> None:
    with pytest.raises(PipelineError, match="prune"):
        PassManager([InsertFakeQuant(), Prune()]).check(set())


def test_shipped_pipeline_prunes_before_quantizing() -> None:
    with open(PIPELINE, "rb") as f:
        data = tomllib.load(f)
    names = [p["name"] for p in data["pass"]]
    assert names == ["prune", "fold_batchnorm", "insert_fake_quant", "calibrate", "lower"]
    assert data["pass"][0]["ratio"] == 0.5 and data["pass"][0]["round_to"] == 8
    assert data["pass"][2]["scope"] == "all"  # the speed pipeline quantizes the teacher too
    pipeline = pipeline_from_dict(data, source=PIPELINE)
    PassManager(pipeline.passes).check(set())


def test_drop_dead_blocks_cuts_an_uncut_model_as_the_builder_does(monkeypatch) -> None:
    """A model built with timm's full block list (before extractors were cut) loses exactly the blocks the
    builder no longer makes, through the same cut; the counts are those blocks' parameters."""
    from anomopt.models import backbones
    from anomopt.passes.prune import drop_dead_blocks

    with monkeypatch.context() as m:
        m.setattr(backbones, "cut_after_last_tap", lambda net: 0)
        torch.manual_seed(0)
        old = build_model("stfpm", image_size=SIZE, pretrained=False).eval()
    built = build_model("stfpm", image_size=SIZE, pretrained=False).eval()
    params = dict(old.named_parameters())
    x = _images(2, 4)
    with torch.no_grad():
        before = old(x)
    dropped = drop_dead_blocks(old)
    assert dropped and set(old.state_dict()) == set(built.state_dict())
    for path, count in dropped.items():
        assert count == sum(p.numel() for n, p in params.items() if n.startswith(path + "."))
    kept = {n for n in params if not n.startswith(tuple(p + "." for p in dropped))}
    assert kept == set(dict(old.named_parameters())) and len(kept) < len(params)
    with torch.no_grad():
        after = old(x)
    assert torch.equal(before[1], after[1]) and torch.equal(before[0], after[0])
    assert drop_dead_blocks(old) == {} and drop_dead_blocks(built) == {}
