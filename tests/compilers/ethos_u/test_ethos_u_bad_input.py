"""The `ethos-u` compiler's bad inputs through the command line (docs/bad-input.md, the Ethos-U
rows): `tapeout compile ... --compiler ethos-u` exits 2 with one `error:` line that names the
option, op, budget or package, expected against found, and records no artifact."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("ethosu.vela")
pytest.importorskip("ai_edge_litert")

from tapeout.flows.cli import main  # noqa: E402

pytestmark = pytest.mark.slow  # runs Vela


def compile_bad(capsys, model, tmp_path, *options: str, firmware: str = "25.08") -> str:
    """`tapeout compile` with `options`: exit 2, one `error:` line (returned), no record."""
    arguments = ["compile", str(model), "--compiler", "ethos-u", "--firmware", firmware, "-o", str(tmp_path / "out"),
                 "--home", str(tmp_path / "home")]
    for option in options:
        arguments += ["--option", option]
    code = main(arguments)
    error = capsys.readouterr().err
    assert code == 2, error
    lines = [line for line in error.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), error
    assert not (tmp_path / "out" / "compiler.json").exists()
    return lines[0]


@pytest.mark.parametrize(("options", "message"), [
    (("accelerator_config=ethos-u99-1",),
     "error: compiler 'ethos-u': option accelerator_config: expected one of ['ethos-u55-32', "),
    (("accelerator=ethos-u55-128",), "error: compiler 'ethos-u': unknown option(s) ['accelerator']; known: "),
    (("system_config=Ethos_U85_SYS_DRAM_Mid",),
     "error: compiler 'ethos-u': option system_config: expected a system config for ethos-u55 (Ethos_U55_...), "
     "found 'Ethos_U85_SYS_DRAM_Mid'"),
    (("float_ops=GELU",),
     "error: compiler 'ethos-u': option float_ops: expected comma-separated TFLite ops of ['ADD', "
     "'HARD_SWISH', 'LOGISTIC', 'MUL', 'SOFTMAX'], or \"*\" for all of them, found 'GELU'"),
    (("sram_budget_bytes=1024",),
     "error: ethos-u55-128 (Ethos_U55_High_End_Embedded, Shared_Sram): SRAM budget exceeded: expected at most "
     "1024 bytes, found "),
    (("flash_budget_bytes=4096",),
     "error: ethos-u55-128 (Ethos_U55_High_End_Embedded, Shared_Sram): flash budget exceeded: expected at most "
     "4096 bytes, found "),
    (("min_inferences_per_second=1e9",),
     "error: ethos-u55-128: inferences per second below the SLA: expected at least 1e+09, found "),
], ids=["accelerator", "unknown-option", "system-config", "float-ops", "sram", "flash", "sla"])
def test_a_bad_option_or_an_exceeded_budget_is_one_line(options, message, quantized_model, tmp_path, capsys):
    assert compile_bad(capsys, quantized_model.path, tmp_path, *options).startswith(message)


def test_firmware_older_than_the_npu_is_one_line(quantized_model, tmp_path, capsys):
    line = compile_bad(capsys, quantized_model.path, tmp_path, "accelerator_config=ethos-u85-256", firmware="23.11")
    assert line == ("error: target 'manual': firmware_revision 23.11 predates ethos-u85 support; "
                    "Ethos-U software 24.05 or newer is needed")


def test_an_op_left_on_the_cpu_that_is_not_allowed_is_named(tmp_path, capsys):
    """A 9x9 SAME average pool, which Vela leaves to the U55's CPU: refused by default, built
    when `allowed_cpu_ops` names it."""
    from ethos_u_models import quantize_model, with_conv
    from onnx import helper

    model = quantize_model(with_conv([helper.make_node("AveragePool", ["c"], ["y"], kernel_shape=[9, 9],
                                                       pads=[4, 4, 4, 4])], [1, 4, 8, 8]), tmp_path)
    line = compile_bad(capsys, model, tmp_path)
    assert line == ("error: ethos-u55-128: expected every op on the NPU, found on the CPU: AVERAGE_POOL_2D "
                    "(output 'y_QuantizeLinear_Output')")
    code = main(["compile", str(model), "--compiler", "ethos-u", "--firmware", "25.08", "--option",
                 "allowed_cpu_ops=AVERAGE_POOL_2D", "-o", str(tmp_path / "allowed"), "--home", str(tmp_path / "home")])
    assert code == 0, capsys.readouterr().err


def test_a_node_the_converter_cannot_lower_is_named(tmp_path, capsys):
    import numpy as np
    from ethos_u_models import quantize_model, with_conv
    from onnx import helper, numpy_helper

    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    resize = helper.make_node("Resize", ["c", "", "scales"], ["y"], name="upsample", mode="nearest")
    model = quantize_model(with_conv([resize], [1, 4, 16, 16], initializers=[scales]), tmp_path)
    line = compile_bad(capsys, model, tmp_path)
    assert line.startswith("error: compiler 'ethos-u' cannot build node 'upsample' (op Resize): not in the int8 "
                           "TFLite op set of this converter")


def test_another_vela_release_installed_is_named(quantized_model, tmp_path):
    """The installed ethos-u-vela is read from its package metadata: a 5.1.0 distribution found
    first on the path stands for another release installed."""
    site = tmp_path / "site"
    metadata = site / "ethos_u_vela-5.1.0.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: ethos-u-vela\nVersion: 5.1.0\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-m", "tapeout.flows.cli", "compile", str(quantized_model.path), "--compiler", "ethos-u",
         "--firmware", "25.08", "-o", str(tmp_path / "out"), "--home", str(tmp_path / "home")],
        capture_output=True, text=True, env=environment, timeout=300, check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.strip() == "error: compiler 'ethos-u': expected ethos-u-vela 5.2.0, found 5.1.0"
    assert not (tmp_path / "out" / "model_int8.tflite").exists()


def test_the_extra_not_installed_says_which_to_install(quantized_model, tmp_path, capsys, monkeypatch):
    from importlib.metadata import PackageNotFoundError

    from tapeout.compilers.ethos_u import compiler

    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(compiler, "installed_version", not_installed)
    line = compile_bad(capsys, quantized_model.path, tmp_path)
    assert line == "error: compiler 'ethos-u' needs the ethos-u extra: pip install 'tapeout[ethos-u]'"
