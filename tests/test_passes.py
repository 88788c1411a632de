"""Pass framework and quantization passes: requirements, drift refusal, and property-bounded drift."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anomopt.errors import ConfigError, DataError, DriftError, PipelineError
from anomopt.graph import capture
from anomopt.passes import (
    Calibrate,
    FoldBatchNorm,
    InsertFakeQuant,
    Pass,
    PassContext,
    PassManager,
    Tolerance,
    load_pipeline,
    option,
    resolve_pass,
)
from anomopt.passes.fake_quant import quantized_layers
from anomopt.passes.mixed_precision import AutoMixedPrecision
from anomopt.quant import FakeQuantizer, QuantScheme, RangeCollector, compute_range
from conftest import ToyKD, randomize_bn


def _ctx(images: torch.Tensor, **kw) -> PassContext:
    return PassContext(calib_images=images[:16], held_images=images[16:], train_images=images[:16], **kw)


def _outputs(model, x):
    with torch.no_grad():
        s, m = model(x)
    return s.numpy(), m.numpy()


def test_zero_pass_pipeline_is_identity(toy_model, toy_images):
    graph = capture(toy_model, toy_images[:1])
    before = _outputs(toy_model, toy_images)
    out, report = PassManager([]).run(graph, _ctx(toy_images))
    after = _outputs(out.model, toy_images)
    assert report.records == []
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_fold_batchnorm_drift_below_1e5(seed):
    model = ToyKD(seed=seed).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    ref_s, ref_m = _outputs(model, x)
    graph = capture(model, x[:1])
    graph = FoldBatchNorm().run(graph, PassContext())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in graph.model.student.modules())
    s, m = _outputs(graph.model, x)
    assert np.linalg.norm(s - ref_s) / np.linalg.norm(ref_s) < 1e-5
    assert np.linalg.norm(m - ref_m) / np.linalg.norm(ref_m) < 1e-5


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(-10, 0),
    width=st.floats(0.01, 20),
    bits=st.sampled_from([4, 8]),
    symmetric=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fake_quant_error_at_most_half_step_in_range(lo, width, bits, symmetric, seed):
    hi = lo + width
    q = FakeQuantizer(QuantScheme(bits, symmetric))
    q.set_range(lo, hi)
    scale = float(q.qparams()[0])
    if symmetric:
        bound = max(abs(lo), abs(hi))
        lo_in, hi_in = -bound, bound
    else:
        lo_in, hi_in = min(lo, 0.0), max(hi, 0.0)
    x = torch.rand(500, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    x = lo_in + (hi_in - lo_in) * x
    err = (q(x) - x).abs().max().item()
    assert err <= scale / 2 + 1e-6 * max(1.0, abs(hi_in), abs(lo_in))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 1000),
    shift=st.floats(-3, 3),
    spread=st.floats(0.01, 5),
    symmetric=st.booleans(),
)
def test_percentile_100_equals_max_and_max_never_clips(seed, shift, spread, symmetric):
    g = torch.Generator().manual_seed(seed)
    batches = [shift + spread * torch.randn(300, generator=g) for _ in range(3)]
    c = RangeCollector("t")
    for b in batches:
        c.observe_minmax(b)
    c.start_histogram()
    for b in batches:
        c.observe_histogram(b)
    mx = compute_range(c, "max", symmetric=symmetric)
    assert compute_range(c, "percentile", percentile=100.0, symmetric=symmetric) == pytest.approx(
        mx, rel=1e-12
    )
    data = torch.cat(batches)
    assert mx[0] <= float(data.min()) and mx[1] >= float(data.max())
    # every other method clips inside max's range (an affine grid always includes 0)
    lo_bound, hi_bound = (mx[0], mx[1]) if symmetric else (min(mx[0], 0.0), max(mx[1], 0.0))
    for method in ("percentile", "entropy", "mse"):
        lo, hi = compute_range(c, method, symmetric=symmetric)
        assert lo_bound - 1e-6 <= lo <= hi <= hi_bound + 1e-6


def test_max_calibration_never_clips_calibration_activations(toy_model, toy_images):
    graph = capture(toy_model, toy_images[:1])
    ctx = _ctx(toy_images)
    graph, _ = PassManager([InsertFakeQuant(), Calibrate(method="max")]).run(graph, ctx)
    seen: dict[str, tuple[float, float]] = {}
    handles = []
    for name in quantized_layers(graph):
        conv = graph.module(name)

        def hook(mod, args, _n=name):
            lo, hi = seen.get(_n, (float("inf"), float("-inf")))
            seen[_n] = (min(lo, float(args[0].min())), max(hi, float(args[0].max())))

        handles.append(conv.register_forward_pre_hook(hook, prepend=True))
    for name in quantized_layers(graph):
        graph.module(name).input_quantizer.enabled = False
    graph.run(ctx.calib_images)
    for h in handles:
        h.remove()
    assert len(seen) == 2
    for name, (lo, hi) in seen.items():
        q = graph.module(name).input_quantizer
        assert float(q.amin) <= lo + 1e-6 and float(q.amax) >= hi - 1e-6


def test_requirements_are_checked_before_running(toy_model, toy_images):
    graph = capture(toy_model, toy_images[:1])
    with pytest.raises(PipelineError, match="'calibrate' requires \\['fake_quant'\\]"):
        PassManager([Calibrate()]).run(graph, _ctx(toy_images))
    with pytest.raises(PipelineError, match="fold_batchnorm"):
        PassManager([InsertFakeQuant(), FoldBatchNorm()]).run(graph, _ctx(toy_images))


def test_drift_over_tolerance_names_pass_and_amount(toy_model, toy_images):
    graph = capture(toy_model, toy_images[:1])
    ctx = _ctx(toy_images, tolerance=Tolerance(max_map_drift=1e-9))
    with pytest.raises(
        DriftError, match=r"pass 'calibrate' moved anomaly maps by [0-9.e-]+ .*over its tolerance 1e-09"
    ):
        # the weight quantizers are live from insertion: that pass gets its own (loose) tolerance here
        PassManager([InsertFakeQuant(weight_bits=4, max_map_drift=1.0), Calibrate(method="max")]).run(graph, ctx)


def test_insert_fake_quant_weight_error_is_measured_and_enforced(toy_model, toy_images):
    graph = capture(toy_model, toy_images[:1])
    ctx = _ctx(toy_images, tolerance=Tolerance(max_map_drift=1e-9))
    with pytest.raises(DriftError, match=r"pass 'insert_fake_quant' moved anomaly maps by [0-9.e-]+ "):
        PassManager([InsertFakeQuant(weight_bits=4)]).run(graph, ctx)


def test_nan_in_calibration_batch_is_a_clear_error(toy_model, toy_images):
    graph = capture(toy_model, toy_images[:1])
    bad = toy_images.clone()
    bad[3, 0, 5, 5] = float("nan")
    with pytest.raises(DataError, match="NaN or Inf"):
        PassManager([InsertFakeQuant(), Calibrate()]).run(graph, _ctx(bad))


class ScaleMap(Pass):
    """A custom pass for the tests: multiplies the head's output by a constant via a forward hook."""

    name = "scale_map"

    @dataclass
    class Options:
        factor: float = option(2.0, "the map and score multiplier")

    def run(self, graph, ctx):
        factor = self.options.factor
        graph.model.head.register_forward_hook(lambda m, a, out: (out[0] * factor, out[1] * factor))
        return graph


def test_custom_pass_by_object_and_module_string(toy_model, toy_images):
    graph = capture(toy_model, toy_images[:1])
    ref = _outputs(toy_model, toy_images[16:])
    custom = resolve_pass("test_passes:ScaleMap", factor=3.0)
    graph, report = PassManager([custom]).run(graph, _ctx(toy_images))
    assert report.records[0].name == "scale_map"
    assert report.records[0].drift["map"] == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_allclose(_outputs(graph.model, toy_images[16:])[0], 3 * ref[0], rtol=1e-5)
    with pytest.raises(ConfigError, match="unknown pass 'nope'"):
        resolve_pass("nope")


def test_unknown_pass_in_pipeline_file_names_file(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[pipeline]\ntarget="cpu"\n[[pass]]\nname="fold_batchnorm"\n[[pass]]\nname="frobnicate"\n')
    with pytest.raises(ConfigError, match=r"mine.toml: \[\[pass\]\] #2: unknown pass 'frobnicate'"):
        load_pipeline(f)


def test_auto_mixed_precision_keeps_fewest_layers(toy_images):
    model = ToyKD(seed=3).eval()
    graph = capture(model, toy_images[:1])
    ctx = _ctx(toy_images)
    graph, _ = PassManager([InsertFakeQuant(weight_bits=4), Calibrate(method="max")]).run(graph, ctx)
    loose = AutoMixedPrecision(max_map_drift=10.0).run(graph, ctx)
    assert loose.state.kept_fp == []
    tight = AutoMixedPrecision(max_map_drift=1e-12, max_fp_fraction=1.0).run(graph, ctx)
    assert 1 <= len(tight.state.kept_fp) <= 2
    assert all(not graph.module(n).input_quantizer.enabled for n in tight.state.kept_fp)


def test_quantizing_teacher_too_changes_scope(toy_images):
    model = ToyKD(seed=5).eval()
    randomize_bn(model, torch.Generator().manual_seed(0))
    graph = capture(model, toy_images[:1])
    g1 = InsertFakeQuant(scope="all").run(graph, _ctx(toy_images))
    assert {n.split(".")[0] for n in quantized_layers(g1)} == {"teacher", "student"}
    with pytest.raises(ConfigError, match="scope"):
        InsertFakeQuant(scope="everything").run(capture(ToyKD(), toy_images[:1]), _ctx(toy_images))
