"""Shared fixtures: the example project in a temporary git repository, its exported model,
and one Prefect test harness per session (it costs ~14 s to start)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tapeout.flows import environment

# The real-model suite's fixtures (`real_model`), for the suite's tests and any other's.
pytest_plugins = ["real_models.fixtures"]

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLE = REPOSITORY / "examples" / "digits"

# Quiet and offline before Prefect or MLflow is first imported by any test.
for _name, _value in environment.QUIET_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)


def git(folder: Path, *arguments: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(folder), *arguments],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.invalid",
        },
    )
    return completed.stdout.strip()


def make_project(root: Path) -> Path:
    """A copy of the example in its own git repository, committed; returns pipeline.yaml."""
    project = root / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "example")
    return project / "pipeline.yaml"


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory):
    """The example CNN exported once to fp32 ONNX (torch export takes seconds)."""
    from tapeout.compilers.frontends import PyTorchSource, export_model
    from tapeout.compilers.interface import TensorSpec

    output = tmp_path_factory.mktemp("export") / "model.onnx"
    return export_model(
        PyTorchSource(EXAMPLE / "model.py", "build_model", EXAMPLE / "weights.pt"),
        (TensorSpec("image", (1, 1, 16, 16), "float32"),),
        ("logits",),
        output,
    )


@pytest.fixture(scope="session")
def quantized_model(exported_model, tmp_path_factory: pytest.TempPathFactory):
    """The example quantized to QDQ int8 with MinMax ranges from its calibration set."""
    from tapeout.calibration.calibrate import calibrate
    from tapeout.calibration.dataset import load_sample_set
    from tapeout.calibration.quantizer import quantize

    workdir = tmp_path_factory.mktemp("quantize")
    samples = load_sample_set(EXAMPLE / "data" / "calibration.npz", exported_model.inputs)
    table = calibrate(exported_model.path, samples, method="minmax", batch_size=1, workdir=workdir)
    return quantize(
        exported_model.path,
        table,
        inputs=exported_model.inputs,
        outputs=exported_model.outputs,
        output_path=workdir / "model.qdq.onnx",
    )


@pytest.fixture(scope="session")
def dynamic_batch_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example CNN exported by torch.onnx (dynamo) with a dynamic batch axis, as most
    exported models come: input `image` [N, 1, 16, 16], output `logits` [N, 10]."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("digits_model", EXAMPLE / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = module.build_model()
    network.load_state_dict(torch.load(EXAMPLE / "weights.pt", weights_only=True))
    path = tmp_path_factory.mktemp("dynamic-batch") / "digits-dynamic.onnx"
    torch.onnx.export(
        network.eval(), (torch.zeros(2, 1, 16, 16),), str(path), input_names=["image"], output_names=["logits"],
        dynamic_shapes={"image": {0: torch.export.Dim("N", min=1, max=4096)}}, dynamo=True, external_data=False,
    )
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
