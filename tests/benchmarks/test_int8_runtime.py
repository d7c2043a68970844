"""The int8 runtime benchmark (benchmarks/int8_runtime.py) end to end at its smoke size: every
engine builds and runs, the table and the GEMM line are written into the README section.
Nothing about speed is asserted: speed is measured by running the script, not by tests."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPOSITORY

pytestmark = pytest.mark.slow  # quantizes, compiles and runs every engine: ~20 s


def test_the_benchmark_runs_and_regenerates_its_readme_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\n## int8 runtime\n\nold table\n\n## Calibration\n\nkept\n")
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY / "benchmarks" / "int8_runtime.py"), "--smoke",
         "--write-readme", "--readme", str(readme)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    text = readme.read_text()
    assert "old table" not in text and text.endswith("## Calibration\n\nkept\n")
    engines = [line.split(" | ")[1] for line in text.splitlines() if line.startswith("| cnn-8m |")]
    assert {"onnxruntime int8", "int8-ref (fixed-point)", "int8-ref (ort)"} <= set(engines)
    assert "GEMM 32³ (QLinearMatMul, uint8 × int8): onnxruntime int8" in text
    assert "int8-ref ran its **" in text
