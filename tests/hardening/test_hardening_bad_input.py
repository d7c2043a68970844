"""The bad input matrix (docs/bad-input.md): every row is one test here. Each bad input exits
2 (1 for a failed verification) with one `error:` line naming the thing that is wrong, no
traceback unless `--debug`, and leaves the registry exactly as it was."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import pytest

from tapeout.flows.cli import main
from hardening_support import PYTORCH_SOURCE, cpu_project, pipeline_text, registry_state

ONNX_SOURCE = "    onnx: model.onnx"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A tapeout home whose registry already holds one version with the candidate alias, so
    that "unchanged" is checked against something."""
    from tapeout.artifacts.registry import Registry

    home = tmp_path_factory.mktemp("bad-input-home")
    bundle = home / "seed-bundle"
    bundle.mkdir()
    (bundle / "provenance.json").write_text("{}\n")
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
    run_id = registry.start_run("digits-cnn", "seed", {"commit": "0" * 40})
    registry.log_directory(run_id, bundle, "bundle")
    registry.register("digits-cnn-cpu", run_id, {"commit": "0" * 40, "config_digest": "seed"})
    registry.end_run(run_id, "FINISHED")
    return home


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def images(count: int, shape=(1, 16, 16), dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).random((count, *shape)).astype(dtype)


def run_bad(capsys, home: Path, pipeline: Path, *extra: str) -> tuple[int, str]:
    """Run the pipeline; check the registry is unchanged and there is no traceback."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    before = registry_state(uri, home / "artifacts")
    code = main(["run", str(pipeline), "--home", str(home), *extra])
    captured = capsys.readouterr()
    assert registry_state(uri, home / "artifacts") == before
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    return code, errors[0]


def ec_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# -- the config ----------------------------------------------------------------------------------


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path, pipeline_text().replace("  method: minmax", "  method: [minmax"))
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert f"{pipeline}:" in error and "not valid YAML" in error


def test_unknown_field_is_named(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path, pipeline_text().replace("  method: minmax", "  method: minmax\n  sample: 3"))
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "calibration.sample: unknown field" in error and f"{pipeline}:" in error


def test_missing_field_is_named(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path, pipeline_text().replace("  set: data/calibration.npz\n", ""))
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "calibration.set: required field is missing" in error


def test_firmware_revision_that_is_not_a_version(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path, pipeline_text(firmware="latest"))
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "targets[0].firmware_revision" in error and "'latest'" in error


def test_misspelled_section_or_key_is_named_with_the_closest_field(tmp_path, capsys, home):
    for wrong, right, field in (
        ("validation:", "validaton:", "validaton"),
        ("firmware_revision:", "firmware_revison:", "targets[0].firmware_revison"),
    ):
        pipeline = cpu_project(tmp_path / right.rstrip(":"), pipeline_text().replace(wrong, right))
        code, error = run_bad(capsys, home, pipeline)
        assert code == 2
        assert f"{field}: unknown field (did you mean '{wrong.rstrip(':')}'?)" in error
        assert "required field is missing" not in error


# -- checked against this machine (plugins, files) before anything runs -------------------------


def exports(home: Path) -> list[Path]:
    """The model exports in the home's stage cache."""
    return sorted((home / "cache" / "export").glob("*"))


def two_targets(compiler: str = "int8-ref", firmware: str = "1.1.0", option: str = "requant: fixed-point") -> str:
    """The cpu pipeline with a second target after the (valid) cpu one."""
    second = f'  - name: npu\n    compiler: {compiler}\n    firmware_revision: "{firmware}"\n    options:\n      {option}\n'
    return pipeline_text().replace("\n\ngates:", f"\n{second}\ngates:")


def test_misspelled_compiler_stops_every_target_and_suggests_the_plugin(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path, two_targets(compiler="int8-rf"))
    exported = exports(home)
    code, error = run_bad(capsys, home, pipeline)  # the registry is unchanged: cpu was not built
    assert code == 2
    line = pipeline.read_text().splitlines().index("    compiler: int8-rf") + 1
    assert f"{pipeline}:{line}: targets[1].compiler: no compiler plugin named 'int8-rf' (did you mean 'int8-ref'?)" in error
    assert "onnxruntime" in error  # the installed plugins are listed
    assert exports(home) == exported


def test_an_option_the_compiler_does_not_take_or_a_value_it_does_not_allow(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path / "name", two_targets(option="reqant: fixed-point"))
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "targets[1].options.reqant: not an option of compiler 'int8-ref' (did you mean 'requant'?)" in error
    pipeline = cpu_project(tmp_path / "value", two_targets(option="requant: fixedpoint"))
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "targets[1].options.requant: expected one of ['ort', 'fixed-point'], found 'fixedpoint'" in error


def test_firmware_the_compiler_cannot_build_for(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path, two_targets(firmware="0.9.0"))
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "targets[1].firmware_revision: compiler 'int8-ref' builds for firmware 2.0.0 or newer, found '0.9.0'" in error


def test_missing_calibration_set_is_named_by_its_field_before_the_export(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path, pipeline_text(calibration="data/calib.npz"))
    exported = exports(home)
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    line = pipeline.read_text().splitlines().index("  set: data/calib.npz") + 1
    assert f"{pipeline}:{line}: calibration.set: expected a sample set (.npz file or folder) at " in error
    assert str(pipeline.parent / "data" / "calib.npz") in error
    assert exports(home) == exported


def test_debug_shows_the_traceback(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path, pipeline_text(firmware="latest"))
    code = main(["run", str(pipeline), "--home", str(home), "--debug"])
    assert code == 2
    assert "Traceback" in capsys.readouterr().err


# -- the model -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_model_file_that_is_not_onnx(tmp_path, capsys, home):
    pipeline = cpu_project(
        tmp_path, pipeline_text(source=ONNX_SOURCE), {"model.onnx": b"PK\x03\x04 this is a zip, not ONNX"}
    )
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "model.onnx: not an ONNX model" in error


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_model_input_names_differ_from_the_config(tmp_path, capsys, home, exported_model):
    pipeline = cpu_project(
        tmp_path, pipeline_text(source=ONNX_SOURCE, input_name="pixels"),
        {"model.onnx": exported_model.path.read_bytes()},
    )
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "model inputs: expected ['pixels'], found ['image']" in error


def test_onnx_file_with_an_unsupported_operator(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])  # noqa: E731
    node = helper.make_node("Frobnicate", ["image"], ["logits"], name="frob0", domain="com.example")
    model = helper.make_model(
        helper.make_graph([node], "custom", [value("image")], [value("logits")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    onnx.save(model, tmp_path / "custom.onnx")
    code = main([
        "compile", str(tmp_path / "custom.onnx"), "--compiler", "onnxruntime", "--firmware", "1.20.0",
        "-o", str(tmp_path / "out"), "--home", str(tmp_path / "home"),
    ])
    captured = capsys.readouterr()
    assert code == 2
    assert "cannot build node 'frob0' (op com.example.Frobnicate)" in captured.err
    assert "Traceback" not in captured.err


# -- the data --------------------------------------------------------------------------------------


def _data_case(tmp_path, exported_model, calibration: bytes | None = None, validation: bytes | None = None):
    files = {"model.onnx": exported_model.path.read_bytes()}
    names = {}
    if calibration is not None:
        files["data/bad-calibration.npz"] = calibration
        names["calibration"] = "data/bad-calibration.npz"
    if validation is not None:
        files["data/bad-validation.npz"] = validation
        names["validation"] = "data/bad-validation.npz"
    return cpu_project(tmp_path, pipeline_text(source=ONNX_SOURCE, samples=1, **names), files)


DATA_CASES = {
    "wrong-shape": (dict(calibration=npz(image=images(8, (1, 8, 8)))), ["bad-calibration.npz", "image", "8, 8]"]),
    "wrong-dtype": (dict(calibration=npz(image=images(8, dtype=np.float64))), ["bad-calibration.npz", "image", "float64"]),
    "nan": (
        dict(calibration=npz(image=np.where(np.arange(8)[:, None, None, None] == 5, np.nan, images(8)).astype(np.float32))),
        ["bad-calibration.npz", "NaN"],
    ),
    "inf": (
        dict(calibration=npz(image=np.where(np.arange(8)[:, None, None, None] == 2, np.inf, images(8)).astype(np.float32))),
        ["bad-calibration.npz", "infinite"],
    ),
    "empty": (dict(calibration=npz(image=images(0))), ["bad-calibration.npz"]),
    "no-labels": (dict(validation=npz(image=images(8))), ["bad-validation.npz", "'label'"]),
}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_calibration_or_validation_data(case, tmp_path, capsys, home, exported_model):
    arguments, expected = DATA_CASES[case]
    pipeline = _data_case(tmp_path, exported_model, **arguments)
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    for text in expected:
        assert text in error


# -- the signing key --------------------------------------------------------------------------------


def _key_case(tmp_path, key: bytes | None, *, directory: bool = False) -> Path:
    pipeline = cpu_project(tmp_path, pipeline_text(signing="  method: key\n  private_key: keys/signing.pem"))
    path = pipeline.parent / "keys" / "signing.pem"
    if directory:
        path.mkdir(parents=True)
    elif key is not None:
        path.parent.mkdir(parents=True)
        path.write_bytes(key)
    return pipeline


def test_missing_signing_key(tmp_path, capsys, home):
    pipeline = _key_case(tmp_path, None)
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "keys/signing.pem: cannot read the signing key (No such file or directory)" in error


def test_unreadable_signing_key(tmp_path, capsys, home):
    pipeline = _key_case(tmp_path, None, directory=True)
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "keys/signing.pem: cannot read the signing key (Is a directory)" in error


def test_signing_key_that_is_not_a_key(tmp_path, capsys, home):
    pipeline = _key_case(tmp_path, b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "keys/signing.pem: expected an unencrypted PEM EC private key" in error


def test_signing_key_of_the_wrong_type(tmp_path, capsys, home):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pipeline = _key_case(tmp_path, pem)
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "keys/signing.pem: expected an EC private key (P-256), found Ed25519PrivateKey" in error


def test_encrypted_signing_key(tmp_path, capsys, home):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    pipeline = _key_case(tmp_path, pem)
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert "keys/signing.pem: expected an unencrypted PEM EC private key" in error
    assert "secret" not in error


# -- the registry ---------------------------------------------------------------------------------


def test_unreachable_registry_fails_fast(tmp_path, capsys, home):
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pipeline = cpu_project(tmp_path, pipeline_text(registry=f"  tracking_uri: http://127.0.0.1:{port}"))
    start = time.monotonic()
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert f"MLflow at http://127.0.0.1:{port}: cannot look up digits-cnn-cpu" in error
    assert "Connection refused" in error
    assert time.monotonic() - start < 60  # bounded retries, not MLflow's minutes of backoff


def _closed_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_dask_scheduler_that_does_not_answer_is_named_before_anything_runs(tmp_path, capsys, home):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    pipeline = cpu_project(tmp_path)
    code, error = run_bad(capsys, home, pipeline, "--dask-scheduler", address)
    assert code == 2
    assert error.startswith(f"error: --dask-scheduler: no Dask scheduler answers at {address}")
    assert "refused" in error


def test_a_runner_address_that_is_not_tcp_host_port_is_a_config_error(tmp_path, capsys, home):
    pipeline = cpu_project(tmp_path, pipeline_text() + "runner:\n  dask_scheduler: dask-scheduler:8786\n")
    code, error = run_bad(capsys, home, pipeline)
    assert code == 2
    assert f"{pipeline}:" in error and "runner.dask_scheduler" in error and "dask-scheduler:8786" in error


# -- verification -------------------------------------------------------------------------------


def test_verify_a_folder_that_is_not_a_bundle(tmp_path, capsys, home):
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "model.onnx").write_bytes(b"x")
    code = main(["verify", str(tmp_path / "loose"), "--home", str(home)])
    captured = capsys.readouterr()
    assert code == 1
    assert "no signature file model.sig" in captured.err and "Traceback" not in captured.err


def test_verify_an_unknown_reference(capsys, home):
    code = main(["verify", "digits-cnn-cpu@7", "--home", str(home)])
    captured = capsys.readouterr()
    assert code == 2
    assert "reference 'digits-cnn-cpu@7': not registered" in captured.err


# -- as a user sees it: a separate process, Prefect's own logging included ------------------------------


@pytest.mark.slow
def test_a_stage_failing_inside_the_flow_prints_one_line_and_no_traceback(tmp_path):
    """In-process tests cannot see what Prefect's console handler writes; a subprocess can.
    Prefect re-applies its logging config when a flow starts, so a task's failure used to be
    logged with its traceback."""
    import subprocess

    from hardening_support import TAPEOUT, subprocess_environment

    pipeline = cpu_project(
        tmp_path, pipeline_text(source=ONNX_SOURCE), {"model.onnx": b"not ONNX at all"}
    )
    completed = subprocess.run(
        [*TAPEOUT, "run", str(pipeline), "--home", str(tmp_path / "home")],
        capture_output=True, text=True, env=subprocess_environment(), timeout=300,
    )
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.onnx: not an ONNX model" in errors[0], completed.stderr
    assert "| ERROR" not in completed.stderr  # no Prefect log lines either


# -- a worker's signing key from its environment (artifacts.worker_key) ---------------------------


def test_a_worker_key_variable_naming_no_file(tmp_path, capsys, home, monkeypatch):
    monkeypatch.setenv("TAPEOUT_SIGNING_KEY", str(tmp_path / "no-such-key.pem"))
    code, error = run_bad(capsys, home, cpu_project(tmp_path, pipeline_text()))
    assert code == 2
    assert "$TAPEOUT_SIGNING_KEY: expected a PEM private key (-----BEGIN ...) or the path of a key file, found neither" in error
    assert "no-such-key" not in error  # the value may be a secret pasted wrongly: never echoed


def test_a_worker_key_variable_holding_no_ec_key(tmp_path, capsys, home, monkeypatch):
    monkeypatch.setenv("TAPEOUT_SIGNING_KEY", "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    code, error = run_bad(capsys, home, cpu_project(tmp_path, pipeline_text()))
    assert code == 2
    assert error.startswith("error: $TAPEOUT_SIGNING_KEY: expected an unencrypted PEM EC private key")


def test_two_worker_key_variables_at_once(tmp_path, capsys, home, monkeypatch):
    monkeypatch.setenv("TAPEOUT_SIGNING_KEY", str(tmp_path / "key.pem"))
    monkeypatch.setenv("TAPEOUT_SIGNING_KEY_SECRET", "tapeout-signing-key")
    code, error = run_bad(capsys, home, cpu_project(tmp_path, pipeline_text()))
    assert code == 2
    assert "$TAPEOUT_SIGNING_KEY and $TAPEOUT_SIGNING_KEY_SECRET are both set: expected one signing key, found two" in error
