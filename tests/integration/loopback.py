"""The servers of the scale-out deployment on loopback, started by the project's own script
(infra/local/services.sh) and stopped after the module that uses the `services` fixture
(imported into it): PostgreSQL, a Prefect server and an MLflow tracking server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
SERVICES = REPOSITORY / "infra" / "local" / "services.sh"


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.fail("PostgreSQL is not installed: .ci/run installs it (apt-get install postgresql)")
    folder = tmp_path_factory.mktemp("services")
    environment = {
        **os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "TAPEOUT_SERVICES_OWNER": str(os.getpid()),  # stopped even when a signal skips the teardown
    }
    subprocess.run([str(SERVICES), "start", str(folder)], check=True, env=environment, timeout=400)
    try:
        values = dict(
            line.split("=", 1) for line in (folder / "services.env").read_text().split() if "=" in line
        )
        yield values
    finally:
        subprocess.run([str(SERVICES), "stop", str(folder)], env=environment, timeout=120)
