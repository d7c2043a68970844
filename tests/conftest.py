"""Shared fixtures: the example project in a temporary git repository, its exported model,
and one Prefect test harness per session (it costs ~14 s to start). Every new SQLite MLflow
store a test opens in this process starts as a copy of one MLflow migrated once per session
(`_mlflow_stores_start_migrated`)."""

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


# -- MLflow stores: migrated once, copied per store ---------------------------------------------

_MIGRATED_STORE: list[Path] = []


@pytest.fixture(autouse=True)
def _mlflow_stores_start_migrated(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A new SQLite MLflow store runs MLflow's schema migrations (68 in MLflow 3.17): about a
    second of CPU and, on this machine, seconds of waiting on the disk, per store. Once MLflow's database module is imported,
    its engine factory is wrapped: a SQLite file that does not exist yet is first copied from
    one empty database that MLflow itself created and migrated, in this session. MLflow then
    opens it as it opens any up-to-date store (verifies the schema revision, creates the
    default experiment), so a test sees the store a fresh one would be. An existing file, a
    server URI or anything not SQLite is left to MLflow untouched. Subprocesses (the command
    line run as a program) migrate their own stores as usual."""
    import sys

    utils = sys.modules.get("mlflow.store.db.utils")
    if utils is None or getattr(utils.create_sqlalchemy_engine, "_copies_a_migrated_store", False):
        return
    create_engine = utils.create_sqlalchemy_engine

    def migrated_template() -> Path:
        if not _MIGRATED_STORE:
            template = tmp_path_factory.mktemp("mlflow-migrated") / "mlflow.db"
            engine = create_engine(f"sqlite:///{template}")
            try:
                utils._initialize_tables(engine)
            finally:
                engine.dispose()
            _MIGRATED_STORE.append(template)
        return _MIGRATED_STORE[0]

    def create_sqlalchemy_engine(db_uri):
        database = _new_sqlite_file(db_uri)
        if database is not None:
            try:
                shutil.copyfile(migrated_template(), database)
            except OSError:  # a folder it cannot write to: MLflow's own error, as without the copy
                database.unlink(missing_ok=True)
        return create_engine(db_uri)

    create_sqlalchemy_engine._copies_a_migrated_store = True
    utils.create_sqlalchemy_engine = create_sqlalchemy_engine


def _new_sqlite_file(db_uri) -> Path | None:
    """The file of a SQLite URI when it does not exist yet and its folder does."""
    from sqlalchemy.engine import make_url

    url = make_url(db_uri)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    database = Path(url.database)
    return database if database.parent.is_dir() and not database.exists() else None
