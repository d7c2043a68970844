"""A Dask worker for tapeout's targets: `dask worker SCHEDULER --preload tapeout.flows.dask_worker`
with `TAPEOUT_HOME` set to the worker's own home (docs/scale-out.md, "Targets over machines").

Dask imports this module in the worker process before the worker starts (its `--preload`
option). It creates the home and sets the quiet, offline Prefect and MLflow defaults a
`tapeout` command sets, so that a target run on the worker behaves as one run in threads of
the build's process.
"""

from __future__ import annotations


def dask_setup(worker) -> None:
    """Dask's preload hook, called with the worker before it starts."""
    from tapeout.flows.environment import configure

    configure()
