"""Every suite model through every tested compiler: it compiles, runs, and its output is
compared with ONNX Runtime's on the same QDQ model and test inputs.

Every test here carries the marker `real_models` (`pytest -m real_models`: the whole suite).
The MLPerf Tiny four, ResNet-18 and MobileNet v2 are the fast tier (`-m "real_models and not
slow"`); the other ten are also `slow`. `make test` runs both tiers, `make test-quick` neither.
"""

from __future__ import annotations

import pytest

from real_models import ARCHITECTURES, FAST_TIER
from real_models.measure import COLUMNS, compare_with_onnxruntime, compile_model, load_runner
from tapeout.compilers.errors import UnsupportedOperator

TESTED = ("onnxruntime", "int8-ref ort")

# The first op each compiler refuses in each model today. Each entry is a strict xfail: when
# the compiler learns the op, the test fails until the entry is removed (or names the next op).
KNOWN_REFUSALS: dict[tuple[str, str], str] = {}

# Where the bound is top-1 agreement, not LSB: LayerNormalization's integer algorithm cannot
# reproduce ONNX Runtime's float one bit for bit (docs/int8-ref.md).
LAYERNORM_HEAVY = ("convnext_tiny", "vit_tiny_d4")


def _cases():
    for name in ARCHITECTURES:
        tier = [pytest.mark.real_models] + ([] if name in FAST_TIER else [pytest.mark.slow])
        for label in TESTED:
            marks = list(tier)
            refused = KNOWN_REFUSALS.get((label, name))
            if refused:
                marks.append(pytest.mark.xfail(strict=True, raises=UnsupportedOperator, reason=f"refuses {refused}"))
            yield pytest.param(name, label, marks=marks, id=f"{name}-{label.replace(' ', '-')}")


@pytest.mark.parametrize(("name", "label"), _cases())
def test_compiles_runs_and_agrees_with_onnxruntime(name, label, real_model, tmp_path):
    column = COLUMNS[label]
    model = real_model(name, column.activations)
    try:
        artifact = compile_model(model, column, tmp_path)
    except UnsupportedOperator as error:
        expected = KNOWN_REFUSALS.get((label, name))
        if expected is not None and error.op_type != expected:
            pytest.fail(f"{label} now refuses {error.op_type} first in {name}, not {expected}: update KNOWN_REFUSALS")
        raise
    agreement = compare_with_onnxruntime(model, load_runner(artifact))
    assert agreement.max_lsb is not None, "the output has no quantization step to count LSB in"
    if column.compiler == "onnxruntime":
        # The saved, reloaded session runs ONNX Runtime's own integer kernels: bit for bit.
        assert agreement.max_lsb == 0, agreement
    elif name in LAYERNORM_HEAVY:
        assert agreement.top1_agreement == 1.0, agreement
    else:
        assert agreement.max_lsb <= 2, agreement


@pytest.mark.real_models
def test_a_second_build_is_read_from_the_cache(real_model):
    first = real_model("ad_autoencoder")
    written = {path: path.stat().st_mtime_ns for path in (first.float_path, first.qdq_path)}
    from real_models import build

    again = build("ad_autoencoder")
    assert (again.float_path, again.qdq_path) == (first.float_path, first.qdq_path)
    assert {path: path.stat().st_mtime_ns for path in written} == written
    assert (again.test_inputs == first.test_inputs).all()
