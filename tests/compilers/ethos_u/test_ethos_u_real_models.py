"""Every model of the real-model suite through the `ethos-u` compiler: converted to int8 TFLite,
placed by Vela on the U55-128 (any op may fall back to the CPU), and the TFLite model run by
LiteRT against ONNX Runtime on the same QDQ model (tests/real_models: the `ethos-u` column).

Markers as the suite's own tests: `real_models` on all, `slow` beyond the fast tier.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ethosu.vela")
pytest.importorskip("ai_edge_litert")

from real_models import ARCHITECTURES, FAST_TIER  # noqa: E402
from real_models.architectures import MLPERF_TINY  # noqa: E402
from real_models.measure import (  # noqa: E402
    COLUMNS,
    ETHOS_U_FLOAT_OPS,
    compare_with_onnxruntime,
    compile_model,
    load_runner,
    with_float_ops,
)

pytestmark = pytest.mark.real_models

COLUMN = COLUMNS["ethos-u"]

# LayerNormalization runs in float between int8 tensors (docs/ethos-u.md): the bound is ONNX
# Runtime's top-1 on every test input, not LSB.
LAYERNORM_HEAVY = ("convnext_tiny", "vit_tiny_d4")

# What the `float_ops` of ETHOS_U_FLOAT_OPS write, all on the Cortex-M (Vela takes no float32
# feature map and no int64 one).
EXACT_OPS_ON_CPU = {"DEQUANTIZE", "QUANTIZE", "CAST", "ADD", "MUL", "MAXIMUM", "MINIMUM", "LOGISTIC", "MEAN"}


def _cases():
    for name in ARCHITECTURES:
        marks = [] if name in FAST_TIER else [pytest.mark.slow]
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_cases()))
def test_converts_compiles_and_agrees_with_onnxruntime(name, real_model, tmp_path):
    """Every op int8 on the NPU; for the models of ETHOS_U_FLOAT_OPS (whose int8 HARD_SWISH,
    LOGISTIC, MUL or ADD computes otherwise than ONNX Runtime: 4 to 31 LSB by the default, in
    benchmarks/README.md) with those ops written as ONNX Runtime computes them, on the CPU."""
    column = with_float_ops(COLUMN, ETHOS_U_FLOAT_OPS[name]) if name in ETHOS_U_FLOAT_OPS else COLUMN
    model = real_model(name, column.activations)
    artifact = compile_model(model, column, tmp_path)
    report = artifact.report
    assert report["macs_total"] > 0 and 0.99 <= report["npu_mac_share"] <= 1.0
    if ARCHITECTURES[name].factory_file == MLPERF_TINY:
        assert report["cpu_operators"] == [], "MLPerf Tiny runs every op on the U55-128's NPU"
    if name in ETHOS_U_FLOAT_OPS:  # the exact ops carry no MACs: the NPU keeps every one
        assert report["npu_mac_share"] == 1.0
        assert {op["op"] for op in report["cpu_operators"]} <= EXACT_OPS_ON_CPU
    agreement = compare_with_onnxruntime(model, load_runner(artifact))
    if name in LAYERNORM_HEAVY:
        assert agreement.top1_agreement == 1.0, agreement
        assert {op["op"] for op in report["cpu_operators"]} >= {"DEQUANTIZE", "RSQRT", "QUANTIZE"}
    else:
        assert agreement.max_lsb is not None and agreement.max_lsb <= 2, agreement


def test_uint8_and_int8_models_convert_to_the_same_arithmetic(real_model, tmp_path):
    """ONNX Runtime's default uint8 activations and the int8 switch of the suite quantize one
    network to the same scales (zero points 128 apart): the converted models agree."""
    import numpy as np

    from tapeout.compilers.tflite import convert
    from tapeout.compilers.tflite.runner import TfliteRunner

    runners = []
    for activations in ("uint8", "int8"):
        conversion = convert(real_model("ic_resnet8", activations).qdq_path, tmp_path / f"{activations}.tflite")
        runners.append(TfliteRunner(conversion.path, conversion.inputs, conversion.outputs))
    for feed in real_model("ic_resnet8").feeds():
        first, second = (runner.run(feed) for runner in runners)
        np.testing.assert_array_equal(first["output"], second["output"])



def test_the_benchmark_table_gains_the_ethos_u_part(tmp_path):
    """benchmarks/real_models.py with the `ethos-u` column writes its row in the main table and
    the Ethos-U table: CPU ops, NPU share of MACs, LSB, Vela's estimates on U55-128 and U85-256."""
    import subprocess
    import sys

    from conftest import REPOSITORY

    readme = tmp_path / "README.md"
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY / "benchmarks" / "real_models.py"), "--models", "ad_autoencoder",
         "--columns", "onnxruntime,ethos-u", "--write-readme", "--readme", str(readme)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = [line.split(" | ") for line in readme.read_text().splitlines() if line.startswith("| ad_autoencoder |")]
    main_row, ethos_row = rows[1], rows[2]
    assert main_row[1:4] == ["ethos-u", "yes", "none"] and main_row[4] == "0"
    assert ethos_row[1:5] == ["yes", "none", "100.00%", "0"]
    u55, u85 = (float(cell.strip(" |").replace(",", "")) for cell in ethos_row[5:7])
    assert u85 > u55 > 0  # the U85-256 has more MACs per cycle than the U55-128
