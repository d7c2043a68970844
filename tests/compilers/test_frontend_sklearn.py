"""Front ends are plugins (`tapeout.frontends`); scikit-learn estimators go through skl2onnx
and then the same calibrate -> compile -> gate -> sign path as a PyTorch model."""

from __future__ import annotations

import json
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import yaml

from tapeout.compilers.errors import InvalidInput, TapeoutError
from tapeout.compilers.frontends import (
    FrontEndError,
    OnnxSource,
    PyTorchSource,
    SklearnSource,
    export_model,
    frontend_for,
    load_frontends,
)
from tapeout.compilers.interface import TensorSpec
from tapeout.flows.cli import main
from conftest import git

FEATURES = (TensorSpec("features", (1, 64), "float32"),)

FACTORY = '''
import warnings

import numpy as np
from sklearn.datasets import load_digits


def build_mlp():
    """A small MLP on scikit-learn's own 8x8 digits (shipped with scikit-learn, no download)."""
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(
            (features / 16.0).astype(np.float32), labels
        )


def build_logistic():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = load_digits(return_X_y=True)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        (features / 16.0).astype(np.float32), labels
    )


def not_an_estimator():
    return {"weights": [1, 2, 3]}
'''


@pytest.fixture(scope="module")
def factory(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sklearn") / "estimators.py"
    path.write_text(FACTORY)
    return path


def digits():
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    return (features / 16.0).astype(np.float32), labels.astype(np.int64)


def test_the_three_front_ends_are_registered_through_the_entry_point():
    names = {entry.name for entry in entry_points(group="tapeout.frontends")}
    assert {"pytorch", "onnx", "sklearn"} <= names
    frontends = load_frontends()
    assert frontend_for(PyTorchSource(Path("m.py"), "f", Path("w.pt"))).name == "pytorch"
    assert type(frontend_for(OnnxSource(Path("m.onnx")))) is type(frontends["onnx"])
    assert frontend_for(SklearnSource(Path("m.py"), "f")).name == "sklearn"
    with pytest.raises(InvalidInput, match="no front end handles a str source"):
        frontend_for("model.bin")


def test_an_mlp_exports_to_plain_onnx_ops_that_match_predict_proba(factory, tmp_path):
    import onnx
    import onnxruntime

    exported = export_model(SklearnSource(factory, "build_mlp"), FEATURES, (), tmp_path / "model.onnx")
    assert exported.inputs == FEATURES
    assert exported.outputs == (TensorSpec("probabilities", (1, 10), "float32"),)
    model = onnx.load(str(exported.path))
    # The label branch (ArgMax, ai.onnx.ml ArrayFeatureExtractor) is gone: quantizable ops only.
    assert {node.domain for node in model.graph.node} == {""}
    assert {node.op_type for node in model.graph.node} <= {"Cast", "MatMul", "Add", "Relu", "Softmax", "Identity"}
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    features, _ = digits()
    import importlib.util

    spec = importlib.util.spec_from_file_location("estimators_reference", factory)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mlp = module.build_mlp()
    for row in features[:20]:
        got = session.run(None, {"features": row[None]})[0]
        np.testing.assert_allclose(got, mlp.predict_proba(row[None]), rtol=1e-4, atol=1e-5)


def test_a_pipeline_with_ml_domain_ops_keeps_the_declared_output(factory, tmp_path):
    exported = export_model(SklearnSource(factory, "build_logistic"), FEATURES, ("probabilities",), tmp_path / "m.onnx")
    assert [spec.name for spec in exported.outputs] == ["probabilities"]


def test_sklearn_errors_are_named(factory, tmp_path):
    with pytest.raises(InvalidInput, match=r"must return a fitted scikit-learn estimator, found dict"):
        export_model(SklearnSource(factory, "not_an_estimator"), FEATURES, (), tmp_path / "a.onnx")
    with pytest.raises(InvalidInput, match=r"one float32 input of shape \[batch, features\]"):
        export_model(
            SklearnSource(factory, "build_mlp"), (TensorSpec("x", (1, 1, 8, 8), "float32"),), (), tmp_path / "b.onnx"
        )
    with pytest.raises(InvalidInput, match=r"outputs: expected \['scores'\], skl2onnx produces \['label', 'probabilities'\]"):
        export_model(SklearnSource(factory, "build_mlp"), FEATURES, ("scores",), tmp_path / "c.onnx")
    with pytest.raises(InvalidInput, match="expected a function 'missing'"):
        export_model(SklearnSource(factory, "missing"), FEATURES, (), tmp_path / "d.onnx")


def test_a_broken_front_end_plugin_is_named(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "half_frontend.py").write_text("class FrontEnd:\n    name = 'half'\n    source_type = dict\n")
    dist = site / "half_frontend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: half-frontend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tapeout.frontends]\nhalf = half_frontend:FrontEnd\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(FrontEndError, match=r"front end plugin 'half': .* lacks method\(s\) \['material', 'export'\]") as raised:
        load_frontends()
    assert isinstance(raised.value, TapeoutError)


def write_project(root: Path, factory: Path) -> Path:
    """A scikit-learn project: the factory, a calibration and a validation set, pipeline.yaml."""
    project = root / "sk-project"
    (project / "data").mkdir(parents=True)
    (project / "estimators.py").write_text(factory.read_text())
    features, labels = digits()
    order = np.random.default_rng(0).permutation(len(labels))
    np.savez(project / "data" / "calibration.npz", features=features[order[:200]])
    np.savez(project / "data" / "validation.npz", features=features[order[200:500]], label=labels[order[200:500]])
    pipeline = {
        "model": {
            "name": "digits-mlp",
            "source": {"sklearn": {"factory": "estimators.py:build_mlp"}},
            "inputs": [{"name": "features", "shape": [1, 64], "dtype": "float32"}],
            "outputs": ["probabilities"],
        },
        "calibration": {"set": "data/calibration.npz", "method": "minmax", "samples": 200},
        "validation": {"set": "data/validation.npz", "labels": "label"},
        "targets": [
            {"name": "npu", "compiler": "int8-ref", "firmware_revision": "2.0.0"},
            {"name": "cpu", "compiler": "onnxruntime", "firmware_revision": "1.32.0"},
        ],
        "gates": {"accuracy_drop": {"max": 0.05}, "top1_agreement": {"min": 0.9}},
    }
    path = project / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "sklearn example")
    return path


@pytest.mark.slow
def test_a_scikit_learn_model_is_calibrated_compiled_gated_and_signed(factory, tmp_path, prefect_harness, capsys):
    pipeline = write_project(tmp_path, factory)
    home = tmp_path / "home"
    code = main(["run", str(pipeline), "--home", str(home), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, [(target["target"], target["message"]) for target in result["targets"]]
    verdicts = {target["target"]: target["gate_verdict"] for target in result["targets"]}
    assert verdicts == {"npu": "pass", "cpu": "pass"}
    bundle = next((home / "bundles" / "digits-mlp-npu").iterdir())
    record = json.loads((bundle / "compiled" / "compiler.json").read_text())
    assert record["compiler"] == "int8-ref"
    assert main(["verify", str(bundle), "--home", str(home)]) == 0
