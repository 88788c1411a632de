"""Uninformed Students (Bergmann et al., CVPR 2020), dense and fully convolutional.

Two descriptor teachers (``teacher`` option):

- ``"backbone"`` (the recipe, :data:`anomopt.models.RECIPES`): the frozen pretrained backbone's own features
  are the descriptors, one scale per ``target_taps`` entry (resampled to the stride-4 grid), standardised
  per channel (or whitened) with training-set statistics measured in the first epoch. Offline there are no
  ImageNet patches to distil a general teacher from; the backbone already is one (its stride-4 tap describes
  a 19 px patch). Students, scores and statistics are as below; there is no teacher phase.
- ``"distilled"`` (checkpoints without a ``teacher`` option: the earlier default), built from the paper's
  description:

- For every patch size ``p`` a *descriptor teacher* maps each ``p x p`` patch to a descriptor. It is a
  patch network: unpadded ("valid") convolutions, so a descriptor depends on its patch only. The image is
  padded once in front of the network (mid-grey by default: the zero of the backbone's input
  normalisation, which is how the backbone itself pads) so the descriptors still cover the whole image, at
  stride 4 (one convolutional pass, no per-pixel patch loop). The teacher is distilled from the frozen
  pretrained backbone: a 1x1 projection of its descriptor regresses the backbone's standardised features,
  sampled at the patch centres. The paper distils on ImageNet; here the teacher sees the training images
  plus augmented ones (shuffled, recoloured and pasted patches), so that it maps unfamiliar patches to
  backbone-like descriptors instead of extrapolating from normal ones.
- The teacher's descriptors are standardised per channel with their mean and standard deviation over the
  training set (``whiten=True``: ZCA-whitened), computed exactly in the first student epoch and kept as a
  fixed 1x1 convolution.
- An ensemble of students, independently initialised copies of the teacher's architecture, regress the
  standardised descriptors on normal images only.
- Per pixel and patch size: regression error ``e = ||mean_k s_k - t||^2`` and predictive variance
  ``v = mean_c var_k s_k``, each standardised with its mean and standard deviation on training data (as the
  paper does on validation data; measured during the last student epoch); the anomaly map sums
  ``e + variance_weight * v`` over the patch sizes. The paper weights both equally; measured here on the
  synthetic set the variance only added noise, so ``variance_weight`` defaults to 0. The outermost
  ``margin`` ring of descriptors (patches that are about half padding) is scored as average normal.

The pretrained backbone and the teacher's projection run only in training. Training has two phases: the
first ``teacher_fraction`` of the epochs distils the teachers, then the teachers are frozen and the
students regress them. ``set_epoch`` (called by the trainer) switches the phase. BatchNorm statistics
of the final teacher and students are exact averages over their last epoch (``precise_bn``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from anomopt.errors import ConfigError
from anomopt.models.backbones import feature_channels, get_backbone_config
from anomopt.models.base import KDModel, ModelConfig, freeze
from anomopt.models.head import LeanMapHead
from anomopt.models.teacher import Teacher

STRIDE = 4


def _valid_conv(
    cin: int, cout: int, kernel: int, stride: int = 1, bn: bool = True, dilation: int = 1
) -> nn.Sequential:
    """Unpadded conv + (BatchNorm) + ReLU: the output depends on its receptive field only."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=0, dilation=dilation, bias=not bn)
    ]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def patch_net(
    patch: int, descriptor: int = 128, width: int = 64, bn: bool = True, dilate: bool = False
) -> nn.Sequential:
    """A stride-4 patch network with receptive field ``patch`` (7 + 8n: 15, 23, 31, ...), no padding.

    ``dilate`` grows the receptive field with dilation-2 3x3 convolutions (16 pixels each instead of 8), so a
    large patch (e.g. 71) costs half the layers."""
    if patch < 15 or (patch - 7) % 8:
        raise ValueError(f"patch size must be 7 + 8n with n >= 1 (15, 23, 31, ...), not {patch}")
    layers = [_valid_conv(3, width // 2, 3, 2, bn), _valid_conv(width // 2, width, 3, 2, bn)]
    cin = width
    units = (patch - 7) // 8
    dilations = [2] * (units // 2) + [1] * (units % 2) if dilate else [1] * units
    for d in dilations:
        layers.append(_valid_conv(cin, 2 * width, 3, 1, bn, dilation=d))
        cin = 2 * width
    layers.append(_valid_conv(cin, descriptor, 1, 1, bn))
    layers.append(nn.Conv2d(descriptor, descriptor, 1))
    return nn.Sequential(*layers)


def pad_for_patch(x: torch.Tensor, patch: int, mode: str = "reflect") -> torch.Tensor:
    """Pad an image (``mode``: reflect, replicate or constant) so a stride-4 ``patch`` network gives
    ceil(H/4) x ceil(W/4) descriptors, centred within half a pixel of the stride-4 grid's cells."""
    lo, hi = (patch - 1) // 2 - 2, (patch - 1) // 2 + 1
    if mode == "constant":  # mid-grey: the zero of the backbone's input normalisation
        return F.pad(x, (lo, hi, lo, hi), value=0.5)
    return F.pad(x, (lo, hi, lo, hi), mode=mode)


def _identity_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        conv.bias.zero_()
    conv.requires_grad_(False)
    return conv


class DescriptorTeacher(nn.Module):
    """One descriptor network per patch size; outputs standardised with training-set statistics."""

    def __init__(
        self,
        patches: Sequence[int],
        descriptor: int,
        width: int,
        target_channels: int,
        bn: bool = True,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        self.patches = tuple(patches)
        self.pad_mode = pad_mode
        self.nets = nn.ModuleList(patch_net(p, descriptor, width, bn) for p in self.patches)
        # A fixed 1x1 conv: descriptors whitened with their training-set mean and covariance (set by the model).
        self.standardize = nn.ModuleList(_identity_conv(descriptor) for _ in self.patches)
        # Training only: regresses the backbone's features from each descriptor.
        self.project = nn.ModuleList(nn.Conv2d(descriptor, target_channels, 1) for _ in self.patches)

    def raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [net(pad_for_patch(x, p, self.pad_mode)) for p, net in zip(self.patches, self.nets, strict=True)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [std(d) for std, d in zip(self.standardize, self.raw(x), strict=True)]


class Students(nn.Module):
    """An ensemble of independently initialised students for one patch size."""

    def __init__(
        self,
        count: int,
        patch: int,
        descriptor: int,
        width: int,
        bn: bool = True,
        pad_mode: str = "reflect",
        dilate: bool = False,
    ) -> None:
        super().__init__()
        self.patch = patch
        self.pad_mode = pad_mode
        self.members = nn.ModuleList(patch_net(patch, descriptor, width, bn, dilate) for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_for_patch(x, self.patch, self.pad_mode)
        return torch.stack([m(x) for m in self.members], dim=0)  # (K, N, C, h, w)


class StudentEnsembles(nn.Module):
    """One student ensemble per patch size (``descriptor``: one size for all, or one per patch size)."""

    def __init__(
        self,
        count: int,
        patches: Sequence[int],
        descriptor: int | Sequence[int],
        width: int,
        bn: bool = True,
        pad_mode: str = "reflect",
        dilate: bool = False,
    ) -> None:
        super().__init__()
        dims = [descriptor] * len(patches) if isinstance(descriptor, int) else list(descriptor)
        self.scales = nn.ModuleList(
            Students(count, p, d, width, bn, pad_mode, dilate) for p, d in zip(patches, dims, strict=True)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [s(x) for s in self.scales]


class BackboneDescriptors(nn.Module):
    """The pretrained backbone's own features as the descriptor teacher (``teacher="backbone"``).

    One descriptor per scale: the tapped feature map (timm feature index ``taps[i]``) resampled bilinearly
    to the students' stride-4 grid (``ceil(H/4) x ceil(W/4)``), then standardised per channel (or whitened)
    with a fixed 1x1 convolution whose weights are the training set's statistics (set by the model)."""

    def __init__(
        self, backbone: str, pretrained: bool, weights: Any, taps: Sequence[int], channels: Sequence[int]
    ) -> None:
        super().__init__()
        self.taps = tuple(int(t) for t in taps)
        self.unique = tuple(sorted(set(self.taps)))
        self.features = freeze(Teacher(backbone, pretrained, weights, taps=list(self.unique)))
        self.standardize = nn.ModuleList(_identity_conv(int(c)) for c in channels)

    def raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = -(-x.shape[-2] // STRIDE), -(-x.shape[-1] // STRIDE)
        feats = dict(zip(self.unique, self.features(x), strict=True))
        out = []
        for t in self.taps:
            f = feats[t]
            if f.shape[-2:] != (h, w):
                f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
            out.append(f)
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [std(d) for std, d in zip(self.standardize, self.raw(x), strict=True)]


class _Moments:
    """Exact running sums for a mean and variance per channel (float64), all-reduced under DDP."""

    def __init__(self) -> None:
        self.n = 0.0
        self.s: torch.Tensor | None = None
        self.ss: torch.Tensor | None = None

    def add(self, x: torch.Tensor, cross: bool = False) -> None:
        """Add (N, C, H, W) values; ``cross`` keeps the full C x C second moments (for a covariance)."""
        x = x.detach().double()
        n = torch.tensor([float(x.numel() // x.shape[1])], dtype=torch.float64)  # values per channel
        s = x.sum(dim=(0, 2, 3))
        if cross:
            flat = x.transpose(0, 1).reshape(x.shape[1], -1)
            ss = flat @ flat.T
        else:
            ss = x.pow(2).sum(dim=(0, 2, 3))
        if dist.is_available() and dist.is_initialized():
            for t in (n, s, ss):
                dist.all_reduce(t)
        self.n += float(n)
        self.s = s if self.s is None else self.s + s
        self.ss = ss if self.ss is None else self.ss + ss

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and variance (for ``cross``: the mean and the covariance matrix)."""
        assert self.s is not None and self.ss is not None
        mean = self.s / self.n
        if self.ss.dim() == 2:
            return mean, self.ss / self.n - torch.outer(mean, mean)
        return mean, (self.ss / self.n - mean.pow(2)).clamp_min(0.0)


def _augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Teacher-phase augmentation: unfamiliar patches (recoloured, shuffled, pasted) for the teacher only."""
    n, _, h, w = x.shape
    g = generator
    out = x.clone()
    # Per-image colour and contrast changes, and random flips.
    gain = 0.6 + 0.8 * torch.rand(n, 3, 1, 1, generator=g)
    bias = 0.3 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    mix = torch.rand(n, 1, 1, 1, generator=g) < 0.5
    out = torch.where(mix, (out * gain + bias).clamp(0, 1), out)
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    # Paste rectangles cut from other images (at other places), some of them inverted or grey.
    for i in range(n):
        for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
            ph = int(torch.randint(max(2, h // 16), max(3, h // 3), (1,), generator=g))
            pw = int(torch.randint(max(2, w // 16), max(3, w // 3), (1,), generator=g))
            src = int(torch.randint(0, n, (1,), generator=g))
            sy, dy = (int(v) for v in torch.randint(0, h - ph + 1, (2,), generator=g))
            sx, dx = (int(v) for v in torch.randint(0, w - pw + 1, (2,), generator=g))
            patch = x[src, :, sy : sy + ph, sx : sx + pw]
            kind = float(torch.rand(1, generator=g))
            if kind < 0.2:
                patch = 1.0 - patch
            elif kind < 0.4:
                patch = patch.mean(0, keepdim=True).expand_as(patch)
            elif kind < 0.6:
                patch = torch.rand(3, 1, 1, generator=g).expand_as(patch)
            out[i, :, dy : dy + ph, dx : dx + pw] = patch
    return out


def _cumulative_batchnorm(module: nn.Module) -> None:
    """Restart every BatchNorm's running statistics as a plain average over the coming batches (no decay
    toward stale values of earlier weights, nor toward the initial ones)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None


def _compactness(desc: torch.Tensor) -> torch.Tensor:
    """The paper's descriptor compactness loss: off-diagonal correlations of the descriptor channels
    (here their mean square), so the descriptor spreads its information over all its dimensions."""
    flat = desc.transpose(0, 1).reshape(desc.shape[1], -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / (flat.norm(dim=1, keepdim=True) + 1e-6)
    corr = flat @ flat.T
    off = corr - torch.diag(corr.diagonal())
    return off.pow(2).sum() / (corr.shape[0] * (corr.shape[0] - 1))


class UninformedStudents(KDModel):
    """Uninformed Students: descriptor teachers per patch size and a 3-student ensemble for each."""

    phased_training = True

    def __init__(self, config: ModelConfig | None = None, pretrained: bool = True, weights=None) -> None:
        super().__init__()
        self.config = config or ModelConfig(model="us")
        extra = self.config.extra
        descriptor = int(extra.get("descriptor", 128))
        width = int(extra.get("width", 64))
        n_students = int(extra.get("students", 3))
        patches = extra.get("patch_sizes", (15, 23))
        self.patches = tuple(int(p) for p in ([patches] if isinstance(patches, int) else patches))
        self.augment = bool(extra.get("teacher_augment", True))
        self.whiten = bool(extra.get("whiten", False))
        self.margin = int(extra.get("margin", 1))
        self.variance_weight = float(extra.get("variance_weight", 0.0))
        pad_mode = str(extra.get("pad_mode", "constant"))
        self.compactness = float(extra.get("compactness", 0.0))
        self.precise_bn = bool(extra.get("precise_bn", True))
        self.shrink = float(extra.get("whiten_shrink", 1e-3))
        channels = feature_channels(self.config.backbone)
        backbone_cfg = get_backbone_config(self.config.backbone)
        bn = bool(extra.get("batchnorm", True))
        teacher_bn = bool(extra.get("teacher_batchnorm", bn))
        student_bn = bool(extra.get("student_batchnorm", bn))
        dilate = bool(extra.get("dilate", False))
        self.teacher_kind = str(extra.get("teacher", "distilled"))
        if self.teacher_kind == "backbone":
            # One scale per entry of ``target_taps`` (indices into the backbone's scales), each with its own
            # student ensemble of receptive field ``patch_sizes[i]``; no teacher phase.
            self.target_taps = tuple(int(i) for i in extra.get("target_taps", (0,)))
            if len(self.target_taps) != len(self.patches):
                raise ConfigError(
                    f"teacher='backbone' needs one target tap per patch size: {len(self.target_taps)} taps "
                    f"for patch sizes {self.patches}"
                )
            dims = [channels[i] for i in self.target_taps]
            self.backbone = None
            self.teacher = BackboneDescriptors(
                self.config.backbone, pretrained, weights, [backbone_cfg.taps[i] for i in self.target_taps], dims
            )
            self.student = StudentEnsembles(n_students, self.patches, dims, width, student_bn, pad_mode, dilate)
        elif self.teacher_kind == "distilled":
            self.target_taps = tuple(int(i) for i in extra.get("target_taps", (0,)))
            # The backbone is built only up to the deepest target tap: the rest would be dead compute.
            self._backbone_taps = tuple(sorted(set(self.target_taps)))
            taps = [backbone_cfg.taps[i] for i in self._backbone_taps]
            self.backbone = freeze(Teacher(self.config.backbone, pretrained, weights, taps=taps))
            targets = sum(channels[i] for i in self.target_taps)
            self.teacher = DescriptorTeacher(self.patches, descriptor, width, targets, teacher_bn, pad_mode)
            self.student = StudentEnsembles(
                n_students, self.patches, descriptor, width, student_bn, pad_mode, dilate
            )
        else:
            raise ConfigError(f"us teacher must be 'backbone' or 'distilled', not {self.teacher_kind!r}")
        self.head = LeanMapHead(self.config.image_size, combine="sum", blur_sigma=self.config.blur_sigma)
        # Per patch size: mean and std of the regression error and of the predictive variance (training set).
        norm = torch.tensor([[0.0, 1.0, 0.0, 1.0]]).repeat(len(self.patches), 1)
        self.register_buffer("score_norm", norm)
        if self.teacher_kind == "backbone" and float(extra.get("teacher_fraction", 0.0)) != 0.0:
            raise ConfigError("us teacher='backbone' has no teacher phase: drop teacher_fraction, or use "
                              "teacher='distilled'")
        # backbone descriptors: nothing to distil, the students train from the first epoch
        self.teacher_fraction = float(extra.get("teacher_fraction", 0.4 if self.teacher_kind == "distilled" else 0.0))
        self.phase = "students"  # a loaded (trained) model is past the teacher phase
        self._scheduled = False  # set_epoch not called yet: the optimizer must cover both phases
        self._collect_descriptors = False
        self._collect_scores = False
        self._desc_moments: list[_Moments] = []
        self._score_moments: list[_Moments] = []
        self._target_moments = _Moments()
        self._step = 0

    # ------------------------------------------------------------------------------------------ phases

    def set_epoch(self, epoch: int, total: int) -> None:
        teacher_epochs = 0
        if total > 1 and self.teacher_fraction > 0:
            teacher_epochs = min(total - 1, max(1, round(self.teacher_fraction * total)))
        previous = self.phase if self._scheduled else None
        self._scheduled = True
        self._finish_collection()
        self.phase = "teacher" if epoch < teacher_epochs else "students"
        if self.phase == "teacher" and previous != "teacher":
            self._target_moments = _Moments()
        if self.phase == "teacher" and epoch == teacher_epochs - 1 and self.precise_bn and self.backbone is not None:
            _cumulative_batchnorm(self.teacher.nets)  # exact BatchNorm statistics of the final teacher
        if epoch == total - 1 and self.phase == "students" and self.precise_bn:
            _cumulative_batchnorm(self.student)
        if epoch < total and self.phase == "students":
            if epoch == teacher_epochs:  # first student epoch: measure the teacher's descriptor statistics
                self._collect_descriptors = True
                self._desc_moments = [_Moments() for _ in self.patches]
            if epoch == total - 1:  # last student epoch: measure the statistics of error and variance
                self._collect_scores = True
                self._score_moments = [_Moments() for _ in self.patches]

    def _finish_collection(self) -> None:
        if self._collect_descriptors and all(m.n > 0 for m in self._desc_moments):
            self._store_descriptor_stats()
        if self._collect_scores and all(m.n > 0 for m in self._score_moments):
            for i, m in enumerate(self._score_moments):
                mean, var = m.mean_var()
                self.score_norm[i] = torch.stack([mean[0], var[0].sqrt(), mean[1], var[1].sqrt()]).float()
                self.score_norm[i, 1::2].clamp_(min=1e-8)
        self._collect_descriptors = self._collect_scores = False

    @torch.no_grad()
    def refit_statistics(self, images: torch.Tensor, batch_size: int = 8) -> dict[str, Any]:
        """Re-measure ``score_norm`` (mean and std of the regression error and predictive variance per
        patch size) on normal ``images`` with the model as it now is (e.g. with fake quantizers after QAT,
        or a pruned student): the statistics the last training epoch measured no longer fit it."""
        was_training = self.training
        self.eval()
        moments = [_Moments() for _ in self.patches]
        try:
            for start in range(0, len(images), batch_size):
                x = images[start : start + batch_size]
                desc = self.teacher(x)
                preds = self.student_features(x, desc)
                for m, ti, si in zip(moments, desc, preds, strict=True):
                    error, variance = self._error_variance(ti.float(), si.float())
                    m.add(torch.cat([error, variance], 1))
        finally:
            self.train(was_training)
        if not all(m.n > 0 for m in moments):
            return {}
        before = self.score_norm.clone()
        for i, m in enumerate(moments):
            mean, var = m.mean_var()
            self.score_norm[i] = torch.stack([mean[0], var[0].sqrt(), mean[1], var[1].sqrt()]).float()
            self.score_norm[i, 1::2].clamp_(min=1e-8)
        return {"score_norm_before": before.tolist(), "score_norm_after": self.score_norm.tolist()}

    def _store_descriptor_stats(self) -> None:
        """Whitening (ZCA) with the training descriptors' mean and covariance, slightly shrunk."""
        for conv, m in zip(self.teacher.standardize, self._desc_moments, strict=True):
            mean, cov = m.mean_var()
            if self.whiten:
                eig, vec = torch.linalg.eigh(cov)
                eig = eig.clamp_min(0.0) + self.shrink * eig.clamp_min(0.0).mean() + 1e-12
                w = vec @ torch.diag(eig.rsqrt()) @ vec.T
            else:
                w = torch.diag((cov.diagonal().clamp_min(0.0) + 1e-6).rsqrt())
            conv.weight.copy_(w.float().view_as(conv.weight))
            conv.bias.copy_((-w @ mean).float())

    def train(self, mode: bool = True) -> UninformedStudents:
        nn.Module.train(self, mode)
        if self.backbone is not None:
            self.backbone.eval()
        if self.phase == "students" or self.backbone is None:
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the current phase trains; before the first ``set_epoch`` both phases (the trainer builds its
        optimizer once, before scheduling)."""
        parts: list[nn.Module] = []
        if self.backbone is not None and (not self._scheduled or self.phase == "teacher"):
            parts += [self.teacher.nets, self.teacher.project]
        if not self._scheduled or self.phase == "students":
            parts.append(self.student)
        return [p for part in parts for p in part.parameters() if p.requires_grad]

    def student_parameters(self) -> list[nn.Parameter]:
        """What QAT fine-tunes: the students only."""
        return [p for p in self.student.parameters() if p.requires_grad]

    # ---------------------------------------------------------------------------------------- features

    @torch.no_grad()
    def frozen_targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The descriptor teachers' target: the backbone's features at the patch centres, concatenated.

        Each tapped map (overall stride ``s``, "same" padding: cell ``i`` centred on pixel ``s*i + s - 1``) is
        sampled bilinearly at the centres of the teachers' stride-4 patches (pixel ``4*j + 2``). With
        ``teacher="backbone"``: the backbone descriptors before their standardisation, one per scale."""
        if self.backbone is None:
            return self.teacher.raw(x)
        feats = dict(zip(self._backbone_taps, self.backbone(x), strict=True))
        h, w = -(-x.shape[-2] // STRIDE), -(-x.shape[-1] // STRIDE)
        out = []
        for i in self.target_taps:
            f = feats[i]
            grid = torch.stack(torch.meshgrid(
                [self._sample_positions(n, x.shape[d], f.shape[d], f.device) for n, d in ((h, -2), (w, -1))],
                indexing="ij"), dim=-1).flip(-1)  # (h, w, [x, y]) in grid_sample's units
            grid = grid.to(f.dtype).unsqueeze(0).expand(f.shape[0], -1, -1, -1)
            out.append(F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=True))
        return [torch.cat(out, 1)]

    @staticmethod
    def _sample_positions(n: int, size: int, cells: int, device: torch.device) -> torch.Tensor:
        stride = size / cells
        centre = STRIDE * torch.arange(n, device=device, dtype=torch.float32) + 2.0  # patch centres (pixels)
        index = (centre - (stride - 1.0)) / stride  # fractional cell index of the tapped map
        return 2.0 * index / max(cells - 1, 1) - 1.0

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.teacher(x)

    def student_features(self, x: torch.Tensor, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.student(x)

    def _error_variance(self, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        error = (s.mean(dim=0) - t).pow(2).sum(dim=1, keepdim=True)
        variance = s.var(dim=0, unbiased=False).mean(dim=1, keepdim=True)
        return error, variance

    def distances(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = []
        for i, (ti, si) in enumerate(zip(t, s, strict=True)):
            error, variance = self._error_variance(ti, si)
            norm = self.score_norm[i]
            score = (error - norm[0]) / norm[1]
            if self.variance_weight:
                score = score + self.variance_weight * (variance - norm[2]) / norm[3]
            if self.margin:  # descriptors of patches that are mostly padding: scored as average normal
                m = self.margin
                score = F.pad(score[..., m:-m, m:-m], (m, m, m, m), value=0.0)
            maps.append(score)
        return maps

    def loss_from_features(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> torch.Tensor:
        return sum((si - ti.detach().unsqueeze(0)).pow(2).mean() for ti, si in zip(t, s, strict=True))  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------- training

    def _teacher_loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.augment:
            with torch.no_grad():
                g = torch.Generator().manual_seed(1000 + self._step)
                x_aug = _augment(x.float(), g)
                target = torch.cat([target, self.frozen_targets(x_aug)[0].to(target.dtype)])
            x = torch.cat([x, x_aug.to(x.dtype)])
        self._step += 1
        target = target.float()
        self._target_moments.add(target)
        mean, var = self._target_moments.mean_var()
        target = (target - mean.float().view(1, -1, 1, 1)) / (var.float().sqrt().view(1, -1, 1, 1) + 1e-4)
        loss = x.new_zeros(())
        for raw, project in zip(self.teacher.raw(x), self.teacher.project, strict=True):
            pred = project(raw)
            loss = loss + (pred.float() - target).pow(2).mean()
            if self.compactness > 0:
                loss = loss + self.compactness * _compactness(raw.float())
        return loss

    def distillation_loss(self, x: torch.Tensor, targets: list[torch.Tensor] | None = None) -> torch.Tensor:
        if targets is None:
            targets = self.frozen_targets(x)
        if self.phase == "teacher":
            return self._teacher_loss(x, targets[0])
        with torch.no_grad():
            raws = targets if self.backbone is None else self.teacher.raw(x)
            if self._collect_descriptors and self.training:
                for m, raw in zip(self._desc_moments, raws, strict=True):
                    m.add(raw.float(), cross=True)
                self._store_descriptor_stats()
            desc = [std(r.float()) for std, r in zip(self.teacher.standardize, raws, strict=True)]
        preds = self.student_features(x, desc)
        if self._collect_scores and self.training:
            with torch.no_grad():
                for m, ti, si in zip(self._score_moments, desc, preds, strict=True):
                    error, variance = self._error_variance(ti.float(), si.detach().float())
                    m.add(torch.cat([error, variance], 1))
        return self.loss_from_features(desc, preds)
