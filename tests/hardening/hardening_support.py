"""Helpers shared by the hardening tests: a one-target (cpu) copy of the example project, the
registry's observable state, and the command line run in-process or as a subprocess."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from conftest import EXAMPLE, git

TAPEOUT = [sys.executable, "-m", "tapeout.flows.cli"]

# The example pipeline with only the cpu target (onnxruntime): fast, and no optional extra.
CPU_PIPELINE = """\
model:
  name: digits-cnn
  source:
{source}
  inputs:
    - name: {input_name}
      shape: [1, 1, 16, 16]
      dtype: float32
  outputs: [logits]

calibration:
  set: {calibration}
  method: minmax
  samples: {samples}

validation:
  set: {validation}
  labels: label
  metric: top1_accuracy

targets:
  - name: cpu
    compiler: onnxruntime
    firmware_revision: "{firmware}"
    options:
      graph_optimization_level: basic
      threads: 1

gates:
  accuracy_drop: {{max: 0.02}}
  top1_agreement: {{min: 0.97}}
  latency_p95_ms: {{max: 50}}

signing:
{signing}

registry:
{registry}
"""

PYTORCH_SOURCE = "    pytorch:\n      factory: model.py:build_model\n      weights: weights.pt"


def pipeline_text(
    *,
    source: str = PYTORCH_SOURCE,
    input_name: str = "image",
    calibration: str = "data/calibration.npz",
    samples: int = 300,
    validation: str = "data/validation.npz",
    firmware: str = "1.32.0",
    signing: str = "  method: key",
    registry: str = "  {}",
) -> str:
    return CPU_PIPELINE.format(
        source=source, input_name=input_name, calibration=calibration, samples=samples,
        validation=validation, firmware=firmware, signing=signing, registry=registry,
    )


def cpu_project(root: Path, text: str | None = None, files: dict[str, bytes] | None = None) -> Path:
    """The example in its own committed git repository, with a one-target pipeline (or `text`)
    and any extra `files` (relative path → bytes); returns pipeline.yaml."""
    project = root / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "pipeline.yaml").write_text(text if text is not None else pipeline_text())
    for relative, data in (files or {}).items():
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "example")
    return project / "pipeline.yaml"


def registry_state(tracking_uri: str, artifacts: Path) -> dict:
    """Every registered model's versions with their tags and aliases: what "the registry is
    unchanged" compares."""
    from tapeout.artifacts.registry import Registry

    client = Registry(tracking_uri, artifacts)._client
    state = {}
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{model.name}'")
        state[model.name] = {
            "aliases": dict(model.aliases or {}),
            "versions": {
                str(v.version): {"tags": dict(v.tags), "source": v.source, "run_id": v.run_id}
                for v in versions
            },
        }
    return state


def subprocess_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what earlier in-process runs pointed at their own
    homes (Prefect's home, database and result storage), plus `extra`."""
    environment = {
        name: value for name, value in os.environ.items()
        if name not in ("PREFECT_HOME", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL")
    }
    environment.update(extra)
    environment["PATH"] = f"{Path(sys.executable).parent}:{environment.get('PATH', '')}"
    environment.pop("PYTEST_CURRENT_TEST", None)
    return environment
