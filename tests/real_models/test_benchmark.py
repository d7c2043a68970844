"""The suite's benchmark script (benchmarks/real_models.py) end to end on its smallest model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPOSITORY

pytestmark = pytest.mark.real_models


def test_the_benchmark_regenerates_its_readme_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\n## Real-model suite\n\nold table\n\n## Calibration\n\nkept\n")
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY / "benchmarks" / "real_models.py"), "--models", "ad_autoencoder",
         "--columns", "int8-ref,onnxruntime", "--write-readme", "--readme", str(readme)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    text = readme.read_text()
    assert "old table" not in text and text.endswith("## Calibration\n\nkept\n")
    rows = [line for line in text.splitlines() if line.startswith("| ad_autoencoder |")]
    # ONNX Runtime first (the latency base), then the others; the same QDQ model as the reference.
    assert rows[0].startswith("| ad_autoencoder | onnxruntime | yes | – | 0 | 0/2560 | – |") and rows[0].endswith("| 1.00× |")
    assert rows[1].startswith("| ad_autoencoder | int8-ref | yes | none |")
    assert len(rows) == 2
