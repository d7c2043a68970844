"""The README's "Bring your own model" walkthrough, run as written: an fp32 ONNX model with a
dynamic batch and one .npz holding a train and a test split, to registered versions.

The user's files are made the way a user makes them: the digits example's trained CNN exported
by torch.onnx with a dynamic batch axis, and the example's images in one `.npz` of four arrays.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tapeout.artifacts.registry import Registry
from conftest import EXAMPLE, REPOSITORY

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

SECTION = "## Bring your own model"


def walkthrough() -> str:
    """The first `sh` block of the README's section."""
    text = (REPOSITORY / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[: section.index("\n## ", len(SECTION))]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"tapeout_byom_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def users_files(folder: Path) -> None:
    """model.onnx (dynamic batch) and digits.npz (Xtr, ytr, Xte, yte)."""
    model = _example("model").build_model()
    model.load_state_dict(torch.load(EXAMPLE / "weights.pt", weights_only=True))
    model.eval()
    torch.onnx.export(
        model, (torch.zeros(1, 1, 16, 16),), str(folder / "model.onnx"), input_names=["input"],
        output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False,
    )
    data = _example("data")
    split = data.split(*data.load_images())
    np.savez(
        folder / "digits.npz",
        Xtr=split.train.images, ytr=split.train.labels, Xte=split.validation.images, yte=split.validation.labels,
    )


def test_the_readme_walkthrough_registers_every_target(tmp_path):
    import onnx

    folder = tmp_path / "digits16"
    folder.mkdir()
    users_files(folder)
    batch = onnx.load(str(folder / "model.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "N"  # a dynamic batch, as exported models have
    environment = {
        name: value for name, value in os.environ.items()
        if not name.startswith(("PREFECT_HOME", "PREFECT_API", "PREFECT_LOCAL", "TAPEOUT_HOME", "PYTEST_"))
    }
    environment.update({
        "PATH": f"{Path(sys.executable).parent}:{environment.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "user", "GIT_AUTHOR_EMAIL": "user@example.invalid",
        "GIT_COMMITTER_NAME": "user", "GIT_COMMITTER_EMAIL": "user@example.invalid",
    })
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=folder, capture_output=True, text=True,
        env=environment, timeout=1500,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    out = completed.stdout
    assert "labels    label: one integer label per sample (not a model input)" in out
    for target in ("cpu", "npu-int8", "ethos-u55"):
        assert f"PASS {target}: registered digits16-{target} version 1" in out
    assert "signature       verified now" in out
    home = folder / ".tapeout"
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
    commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    version = registry.resolve("digits16-npu-int8@candidate")
    assert version.tags["commit"] == commit and version.tags["source_dirty"] == "false"
    assert "XNNPACK" not in completed.stderr
