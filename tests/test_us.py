"""Uninformed Students: both training phases learn, the statistics are measured, inference is well formed."""

from __future__ import annotations

import pytest
import torch

from anomopt.data import generate_synthetic, load_mvtec
from anomopt.errors import ConfigError
from anomopt.inference import predict_dataset, torch_scorer
from anomopt.metrics import evaluate_predictions
from anomopt.models import build_model
from anomopt.train import TrainConfig, seed_everything, train_model

SIZE = 64


def _images(n: int, seed: int) -> torch.Tensor:
    """Smooth random colour fields (structured enough for the losses to fall quickly)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, SIZE // 8, SIZE // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def _step(model, optimizer, x: torch.Tensor, targets) -> float:
    loss = model.distillation_loss(x, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@pytest.mark.parametrize("whiten", [False, True])
def test_us_trains_in_both_phases_and_scores_finite_maps(whiten: bool) -> None:
    torch.manual_seed(0)
    model = build_model(
        "us", image_size=SIZE, teacher="distilled", patch_sizes=[15, 23], teacher_fraction=0.5, whiten=whiten
    )
    x = _images(6, 0)
    all_params = {id(p) for p in model.trainable_parameters()}  # the trainer builds its optimizer first
    teacher_params = {id(p) for p in model.teacher.parameters() if p.requires_grad}
    student_params = {id(p) for p in model.student.parameters()}
    assert teacher_params <= all_params and student_params <= all_params
    assert not {id(p) for p in model.backbone.parameters()} & all_params
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    model.eval()
    targets = model.frozen_targets(x)  # what the trainer caches

    steps, total = 6, 4
    losses: dict[str, list[float]] = {"teacher": [], "students": []}
    for epoch in range(total):  # what the trainer does: set_epoch, train(), steps
        model.set_epoch(epoch, total)
        model.train()
        phase = model.phase
        assert phase == ("teacher" if epoch < 2 else "students")
        params = {id(p) for p in model.trainable_parameters()}
        assert params == (teacher_params if phase == "teacher" else student_params) - {
            id(p) for s in model.teacher.standardize for p in s.parameters()
        }
        for _ in range(steps):
            losses[phase].append(_step(model, optimizer, x, targets))
    model.set_epoch(total, total)
    model.eval()

    for phase, values in losses.items():
        assert all(torch.isfinite(torch.tensor(values))), phase
        first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
        assert last < first, (phase, values)
    # The teacher's standardisation (whitening) and the score statistics were measured in the student phase.
    for conv in model.teacher.standardize:
        assert not torch.equal(conv.weight.flatten(1), torch.eye(conv.weight.shape[0]))
    assert torch.isfinite(model.score_norm).all() and (model.score_norm[:, 1::2] > 0).all()
    assert not torch.equal(model.score_norm, torch.tensor([[0.0, 1.0, 0.0, 1.0]]).repeat(2, 1))

    with torch.no_grad():
        scores, maps = model(_images(3, 1))
        t = model.teacher_features(x)
        s = model.student_features(x, t)
    assert scores.shape == (3,) and maps.shape == (3, 1, SIZE, SIZE)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()
    assert len(t) == len(s) == 2
    for ti, si in zip(t, s, strict=True):
        assert ti.shape == (6, 128, SIZE // 4, SIZE // 4) and si.shape == (3, *ti.shape)
    # Standardised descriptors on the training images: zero mean and unit variance per channel; whitened ones
    # also have a covariance whose eigenvalues are 1, or below 1 in the directions the (shrunk) whitening
    # damps because the training set barely varies there.
    d = t[0].transpose(0, 1).flatten(1).double()
    assert d.mean(1).abs().max() < 1e-3
    if whiten:
        eig = torch.linalg.eigvalsh(torch.cov(d, correction=0))
        assert float(eig.max()) <= 1.0 + 1e-3 and float(eig.max()) > 0.95
    else:
        assert (d.var(1, correction=0) - 1.0).abs().max() < 1e-2


def test_backbone_teacher_us_trains_students_against_standardised_backbone_descriptors() -> None:
    """The default US: the backbone's own features are the descriptors, only the students train."""
    torch.manual_seed(0)
    model = build_model("us", image_size=SIZE)
    assert model.teacher_kind == "backbone" and model.teacher_fraction == 0.0
    student_params = {id(p) for p in model.student.parameters()}
    assert {id(p) for p in model.trainable_parameters()} == student_params  # nothing of the teacher trains
    x = _images(6, 0)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    model.eval()
    targets = model.frozen_targets(x)
    assert [t.shape for t in targets] == [(6, 24, SIZE // 4, SIZE // 4)]  # the stride-4 tap, 24 channels
    losses = []
    for epoch in range(3):
        model.set_epoch(epoch, 3)
        model.train()
        assert model.phase == "students" and not model.teacher.training
        losses += [_step(model, optimizer, x, targets) for _ in range(6)]
    model.set_epoch(3, 3)
    model.eval()
    assert sum(losses[-3:]) < sum(losses[:3])
    with torch.no_grad():
        desc = model.teacher_features(x)[0]
        scores, maps = model(x)
    d = desc.transpose(0, 1).flatten(1).double()  # standardised with the training images' statistics
    assert d.mean(1).abs().max() < 1e-3 and (d.var(1, correction=0) - 1.0).abs().max() < 1e-2
    assert torch.isfinite(scores).all() and maps.shape == (6, 1, SIZE, SIZE)
    assert not torch.equal(model.score_norm, torch.tensor([[0.0, 1.0, 0.0, 1.0]]))


def test_backbone_teacher_students_see_their_patch_only() -> None:
    model = build_model("us", image_size=SIZE, pretrained=False).eval()
    x = _images(1, 2)
    y = x.clone()
    y[..., :, 40:] = 0.0
    with torch.no_grad():
        a, b = model.student(x)[0], model.student(y)[0]
    assert torch.equal(a[..., :3], b[..., :3])  # receptive field 23: columns 0-2 see pixels < 40 only
    assert not torch.equal(a, b)


def test_checkpoint_configs_without_a_teacher_option_rebuild_the_distilled_teacher() -> None:
    """Checkpoints written before ``teacher="backbone"`` became the recipe load as what they were trained as."""
    from anomopt.errors import ConfigError
    from anomopt.models import model_from_config

    new = build_model("us", image_size=SIZE, pretrained=False)
    assert new.config.extra["teacher"] == "backbone"  # the recipe is written into the checkpoint config
    old_config = {**new.config.to_dict(), "extra": {"patch_sizes": [15, 23]}}
    old = model_from_config(old_config, pretrained=False)
    assert old.teacher_kind == "distilled" and old.patches == (15, 23)
    old.load_state_dict(build_model("us", image_size=SIZE, pretrained=False, teacher="distilled",
                                    patch_sizes=[15, 23]).state_dict())
    with pytest.raises(ConfigError, match="one target tap per patch size"):
        build_model("us", image_size=SIZE, pretrained=False, patch_sizes=[23, 47])


def test_us_inference_path_is_plain_convolutions() -> None:
    model = build_model("us", image_size=SIZE, pretrained=False, teacher="distilled", patch_sizes=[15, 23]).eval()
    kinds = {type(m).__name__ for part in (model.teacher.nets, model.teacher.standardize, model.student)
             for m in part.modules() if not list(m.children())}
    assert kinds <= {"Conv2d", "BatchNorm2d", "ReLU"}
    # A descriptor depends on its patch only: changing pixels far away leaves it unchanged.
    x = _images(1, 2)
    y = x.clone()
    y[..., :, 40:] = 0.0
    with torch.no_grad():
        a, b = model.teacher_features(x)[0], model.teacher_features(y)[0]
    assert torch.equal(a[..., :3], b[..., :3])  # columns 0-2 see pixels < 40 only (receptive field 23)


E2E_SIZE = 64
# train_and_evaluate_us with the default recipe (backbone descriptors) over seeds 0, 1, 2 (2026-12-07): image
# AUROC 0.955, 0.950, 0.935 and pixel AUROC 0.971, 0.973, 0.976. The distilled patch teacher it replaced
# scored 0.805 / 0.770 / 0.720 and 0.799 / 0.829 / 0.722 (2026-12-01): the bounds sit about 8 points below
# the worst seed and well above that older level, so a fall back to it fails.
IMAGE_AUROC_BOUND = 0.85
PIXEL_AUROC_BOUND = 0.90
E2E_CATEGORIES = ("brushed_metal", "mesh")


def train_and_evaluate_us(root, seed: int = 0, epochs: int = 8) -> dict:
    """Generate a small synthetic set, train unified US on it (FP32, CPU) and evaluate its test split."""
    generate_synthetic(
        root, categories=list(E2E_CATEGORIES), n_train=40, n_test=20, image_size=E2E_SIZE, seed=0, progress=False
    )
    train = load_mvtec(root, "all", split="train", image_size=E2E_SIZE)
    test = load_mvtec(root, "all", split="test", image_size=E2E_SIZE)
    seed_everything(seed)
    model = build_model("us", image_size=E2E_SIZE)
    config = TrainConfig(epochs=epochs, lr=3e-3, seed=seed, progress=False, precision="fp32")
    train_model(model, train, config)
    preds = predict_dataset(torch_scorer(model), test)
    return evaluate_predictions(preds.categories, preds.labels, preds.scores, preds.masks, preds.maps)["mean"]


@pytest.mark.slow
def test_short_unified_us_training_detects_synthetic_anomalies(tmp_path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 150-200 s on one core of a machine loaded about 10x; the cores are shared
    try:
        mean = train_and_evaluate_us(tmp_path / "data")
    finally:
        torch.set_num_threads(threads)
    assert mean["image_auroc"] >= IMAGE_AUROC_BOUND, mean
    assert mean["pixel_auroc"] >= PIXEL_AUROC_BOUND, mean


def test_refit_statistics_restandardises_the_error_after_the_student_changed() -> None:
    """What QAT and pruning call after retraining: the normalized error on the refit images is standard again."""
    torch.manual_seed(0)
    model = build_model("us", image_size=SIZE, pretrained=False).eval()
    x = _images(8, 2)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    notes = model.refit_statistics(x, batch_size=4)
    assert notes["score_norm_before"] != notes["score_norm_after"]
    assert not model.training
    with torch.no_grad():
        desc = model.teacher(x)
        preds = model.student_features(x, desc)
        for i, (t, s) in enumerate(zip(desc, preds, strict=True)):
            error, _ = model._error_variance(t, s)
            z = (error.double() - float(model.score_norm[i, 0])) / float(model.score_norm[i, 1])
            assert abs(float(z.mean())) < 1e-3
            assert abs(float(z.std(unbiased=False)) - 1.0) < 1e-3


def test_qat_finetune_calls_the_models_refit_hook(toy_images) -> None:
    """qat_finetune re-fits the model's own statistics through ``refit_statistics`` and notes it."""
    from anomopt.graph import capture
    from anomopt.passes import PassContext
    from anomopt.passes.qat import QATFineTune
    from conftest import ToyKD

    calls: list[int] = []

    class Refitting(ToyKD):
        def refit_statistics(self, images, batch_size=8):
            calls.append(len(images))
            return {"refit_images": len(images)}

    model = Refitting().eval()
    graph = capture(model, toy_images[:1])
    ctx = PassContext(train_images=toy_images[:8], seed=0)
    graph = QATFineTune(epochs=1, batch_size=4).run(graph, ctx)
    assert calls == [8]
    assert ctx.notes["refit"] == {"refit_images": 8}


def test_backbone_teacher_refuses_a_teacher_phase():
    """teacher='backbone' has nothing to distil: a teacher_fraction is an error, not silently dropped."""
    with pytest.raises(ConfigError, match="no teacher phase"):
        build_model("us", image_size=64, teacher="backbone", teacher_fraction=0.5)
