"""Train the digits example model on the training split and write `weights.pt` beside this file.

    python examples/digits/train.py

Seeded, single-threaded and with PyTorch's deterministic algorithms, so a re-run on the same
torch build gives the same weights. Only the training split is used; the calibration and
validation splits (see `data.py`) are never seen in training. Takes a few seconds on one CPU core.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
WEIGHTS_PATH = HERE / "weights.pt"

SEED = 0
EPOCHS = 30
BATCH_SIZE = 64
LEARNING_RATE = 2e-3


def _load_sibling(name: str) -> ModuleType:
    """Import `<name>.py` from this directory (examples/ is not an installed package)."""
    module_name = f"tapeout_examples_digits_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None  # the file sits beside this one
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of `model`'s logits on the given images."""
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float(np.mean(predicted == labels))


def train(images: np.ndarray, labels: np.ndarray) -> nn.Module:
    """A `DigitsCNN` trained with Adam on cross-entropy, reshuffling each epoch from `SEED`."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    model = _load_sibling("model").build_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    shuffle = torch.Generator().manual_seed(SEED)

    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x), generator=shuffle)
        for start in range(0, len(x), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimiser.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    return model


def main(weights_path: Path = WEIGHTS_PATH) -> None:
    data = _load_sibling("data")
    parts = data.split(*data.load_images())
    model = train(parts.train.images, parts.train.labels)
    print(f"train accuracy      {accuracy(model, parts.train.images, parts.train.labels):.4f}"
          f" ({len(parts.train.labels)} samples)")
    print(f"validation accuracy"
          f" {accuracy(model, parts.validation.images, parts.validation.labels):.4f}"
          f" ({len(parts.validation.labels)} samples)")
    torch.save(model.state_dict(), weights_path)
    print(f"wrote {weights_path}")


if __name__ == "__main__":
    main()
