"""Small conv building blocks shared by the trainable students (INT8-friendly: conv, BN, ReLU)."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, 'same' padding for odd kernels."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def upsample_block(cin: int, cout: int) -> nn.Sequential:
    """Nearest 2x upsampling followed by two conv-BN-ReLU layers."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        conv_bn_relu(cin, cout),
        conv_bn_relu(cout, cout),
    )
