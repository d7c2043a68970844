"""The four MLPerf Tiny v0.5 reference networks, written in PyTorch from their published
descriptions: C. Banbury et al., "MLPerf Tiny Benchmark", NeurIPS Datasets and Benchmarks
2021 (arXiv:2106.07597), and the reference training code of MLCommons tiny v0.5
(`benchmark/training/*/keras_model.py`, `visual_wake_words/vww_model.py`).

The references are Keras models (NHWC); these take the same tensors in PyTorch's NCHW order.
Keras' `padding='same'` with stride 2 pads one more row/column at the bottom/right; PyTorch's
symmetric padding gives the same output sizes with the window shifted by one pixel, which
changes no op and no shape. Dropout layers are inference no-ops and left out.

tapeout's PyTorch front end imports this file by path (`factory: FILE.py:FUNCTION`), so it
imports nothing from the suite package.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(inputs: int, outputs: int, kernel, stride=1, padding=0, groups=1) -> list[nn.Module]:
    return [
        nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=padding, groups=groups),
        nn.BatchNorm2d(outputs),
        nn.ReLU(),
    ]


class _Softmax(nn.Module):
    """The references end in a softmax classifier (Keras `Dense(..., activation='softmax')`)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)


def kws_ds_cnn() -> nn.Module:
    """Keyword spotting, DS-CNN: [1, 1, 49, 10] MFCC (49 frames x 10 coefficients) -> 12
    keywords. A 10x4 stride-2 convolution with 64 filters, four depthwise-separable blocks
    (3x3 depthwise, 1x1 pointwise, 64 channels, each with batch norm and ReLU), average
    pooling over (24, 5) as the reference's `final_pool_size` (its 25x5 map pooled with that
    window leaves one 1x1 output), and a 12-way softmax classifier."""
    layers = _conv_bn_relu(1, 64, (10, 4), stride=2, padding=(5, 1))  # -> 64 x 25 x 5
    for _ in range(4):
        layers += _conv_bn_relu(64, 64, 3, padding=1, groups=64)
        layers += _conv_bn_relu(64, 64, 1)
    layers += [nn.AvgPool2d((24, 5)), nn.Flatten(), nn.Linear(64, 12), _Softmax()]
    return nn.Sequential(*layers)


def vww_mobilenet_v1() -> nn.Module:
    """Visual wake words, MobileNetV1 with width multiplier 0.25: [1, 3, 96, 96] -> 2 classes
    (person / no person). A 3x3 stride-2 convolution with 8 filters, 13 depthwise-separable
    blocks (MobileNetV1's strides and channel doublings at a quarter width, 16 to 256
    channels), average pooling over the final 3x3 map, and a 2-way softmax classifier."""
    # (output channels, depthwise stride) of MobileNetV1's 13 blocks at alpha 0.25
    blocks = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)] + [(128, 1)] * 5 + [(256, 2), (256, 1)]
    layers = _conv_bn_relu(3, 8, 3, stride=2, padding=1)  # -> 8 x 48 x 48
    channels = 8
    for outputs, stride in blocks:
        layers += _conv_bn_relu(channels, channels, 3, stride=stride, padding=1, groups=channels)
        layers += _conv_bn_relu(channels, outputs, 1)
        channels = outputs
    layers += [nn.AvgPool2d(3), nn.Flatten(), nn.Linear(256, 2), _Softmax()]
    return nn.Sequential(*layers)


class _ResidualStack(nn.Module):
    """Two 3x3 convolutions with batch norm, added to the input (through a 1x1 stride-2
    convolution, without batch norm, where the stack halves the map), then ReLU."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(inputs, outputs, 3, stride=stride, padding=1),
            nn.Conv2d(outputs, outputs, 3, padding=1),
            nn.BatchNorm2d(outputs),
        )
        self.shortcut = nn.Conv2d(inputs, outputs, 1, stride=stride) if stride != 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.body(x))


def ic_resnet8() -> nn.Module:
    """Image classification, ResNet-8 for CIFAR-10: [1, 3, 32, 32] -> 10 classes. A 3x3
    convolution with 16 filters, three residual stacks of 16, 32 and 64 filters (the last two
    at stride 2), average pooling over the final 8x8 map, and a 10-way softmax classifier."""
    return nn.Sequential(
        *_conv_bn_relu(3, 16, 3, padding=1),
        _ResidualStack(16, 16, 1),
        _ResidualStack(16, 32, 2),
        _ResidualStack(32, 64, 2),
        nn.AvgPool2d(8),
        nn.Flatten(),
        nn.Linear(64, 10),
        _Softmax(),
    )


def ad_autoencoder() -> nn.Module:
    """Anomaly detection, the fully connected autoencoder (DCASE 2020 task 2 baseline):
    [1, 640] (5 frames x 128 log-mel bands) -> [1, 640] reconstruction. Dense layers of
    128, 128, 128, 128, 8, 128, 128, 128, 128 units, each with batch norm and ReLU, then a
    linear 640-unit output."""
    layers: list[nn.Module] = []
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128]
    for inputs, outputs in zip(widths, widths[1:]):
        layers += [nn.Linear(inputs, outputs), nn.BatchNorm1d(outputs), nn.ReLU()]
    layers.append(nn.Linear(128, 640))
    return nn.Sequential(*layers)
