"""The tapeout home and the quiet, offline defaults of Prefect and MLflow (docs/architecture.md,
"Orchestration").

Everything a run keeps locally lives under the home: `$TAPEOUT_HOME`, default `./.tapeout/`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Set before Prefect or MLflow is imported: both read their settings at import time.
QUIET_ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # The 20 s default is too short for Prefect's ephemeral server on a loaded 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_UI_ENABLED": "false",
    # MLflow warns about git at import when no git binary is configured: we record the commit.
    "GIT_PYTHON_REFRESH": "quiet",
    # Stage progress is printed by tapeout itself; Prefect's per-task INFO lines repeat it.
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # MLflow's defaults retry an unreachable server for minutes (7 retries, backoff factor 2,
    # 120 s timeout). Bound it: a few seconds per call; the register task retries on top.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def tapeout_home() -> Path:
    return Path(os.environ.get("TAPEOUT_HOME", ".tapeout")).resolve()


def configure(home: Path | None = None) -> Path:
    """Create the home and point Prefect's ephemeral API and MLflow at it. Returns the home.

    User-set variables win: a user who runs a Prefect server sets PREFECT_API_URL, and a
    user with an MLflow server sets the tracking URI in pipeline.yaml.
    """
    home = (home or tapeout_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault(
        "PREFECT_API_DATABASE_CONNECTION_URL",
        f"sqlite+aiosqlite:///{home / 'prefect' / 'prefect.db'}",
    )
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "prefect" / "storage"))
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return home


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def quiet_prefect_logging() -> None:
    """Keep Prefect's flow and task run logs (a failed stage's traceback) off the console:
    tapeout reports a failure in one line. Prefect re-applies its logging config on import and
    when a flow starts, re-reading these environment overrides each time."""
    for name in ("FLOW_RUNS", "TASK_RUNS"):
        os.environ.setdefault(f"PREFECT_LOGGING_LOGGERS_PREFECT_{name}_LEVEL", "CRITICAL")
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
