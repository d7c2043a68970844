"""The digits example model: a two-block CNN over 16x16 grey-scale digit images.

Loaded only by the PyTorch front end (and by `train.py`), so it may import torch at the top.
The shapes below are for one sample; the batch axis N is free.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 16
NUM_CLASSES = 10


class DigitsCNN(nn.Module):
    """[N, 1, 16, 16] float32 images in [0, 1] -> [N, 10] float32 logits (no softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),  # [8, 16, 16]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [8, 8, 8]
            nn.Conv2d(8, 16, kernel_size=3, padding=1),  # [16, 8, 8]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [16, 4, 4]
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # [256]
            nn.Linear(16 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, NUM_CLASSES),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


def build_model() -> nn.Module:
    """A freshly initialised `DigitsCNN`; load `weights.pt` into it with `load_state_dict`."""
    return DigitsCNN()
