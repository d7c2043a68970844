"""`tapeout run`: one full pipeline run (tapeout.flows.build), its outcome per target printed as
a table or as one JSON object. Exit 1 when a gate failed, 2 for bad input."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from tapeout.flows import environment


def add_commands(subparsers, common: argparse.ArgumentParser) -> None:
    run = subparsers.add_parser("run", parents=[common], help="one full pipeline run")
    run.add_argument("pipeline", type=Path, help="pipeline.yaml")
    run.add_argument("--commit", help="source commit (default: git HEAD of the pipeline's folder)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument(
        "--dask-scheduler", metavar="tcp://HOST:PORT",
        help="run the targets on this Dask scheduler's workers (default: pipeline.yaml's runner)",
    )
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    if not args.debug:
        environment.quiet_prefect_logging()  # a failed stage is one line, not Prefect's traceback
    from tapeout.flows.build import build

    stdout = sys.stdout

    def say(message: str) -> None:
        # One write per line: targets report from concurrent threads.
        sys.stderr.write(f"· {message}\n")
        sys.stderr.flush()

    # In --json mode stdout carries exactly one JSON object: whatever libraries print goes
    # to stderr with the progress.
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        result = build(args.pipeline, args.commit, args.home_path, progress=say, dask_scheduler=args.dask_scheduler)
    outcomes, exit_code = result.outcomes, result.exit_code
    if args.json:
        source = result.source
        document = {
            "exit_code": exit_code,
            "source": {
                "repository": source.repository, "commit": source.commit,
                "dirty": source.dirty, "dirty_files": list(source.dirty_files),
            },
            "targets": [
                {
                    "target": o.target,
                    "registered_model": o.registered_model,
                    "version": o.version,
                    "bundle_path": o.bundle_path,
                    "bundle_digest": o.bundle_digest,
                    "gate_verdict": o.verdict,
                    "reused": o.reused,
                    "message": o.message,
                    "gates": [
                        {"metric": g.metric, "bound": g.bound, "threshold": g.threshold,
                         "observed": g.observed, "passed": g.passed}
                        for g in o.gates
                    ],
                }
                for o in outcomes
            ],
        }
        print(json.dumps(document, indent=2), file=stdout)
        return exit_code
    _print_outcomes(outcomes)
    return exit_code


def _print_outcomes(outcomes) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    for outcome in outcomes:
        if outcome.gates:
            table = Table(title=f"{outcome.registered_model}: gates", title_justify="left")
            for column in ("gate", "bound", "threshold", "observed", "verdict"):
                table.add_column(column)
            for gate in outcome.gates:
                observed = "—" if gate.observed is None else f"{gate.observed:.6g}"
                verdict = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
                table.add_row(gate.metric, gate.bound, f"{gate.threshold:.6g}", observed, verdict)
            console.print(table)
        if outcome.verdict == "pass":
            how = "already registered" if outcome.reused else "registered"
            console.print(
                f"[green]PASS[/] {outcome.target}: {how} {outcome.registered_model} "
                f"version {outcome.version}, bundle {outcome.bundle_digest}"
                + (f"\n     {outcome.bundle_path}" if outcome.bundle_path else "")
                + (f"\n     {outcome.message.strip(' ()')}" if outcome.message else "")
            )
        elif outcome.verdict == "fail":
            console.print(f"[red]FAIL[/] {outcome.target}: {outcome.message}")
        else:
            console.print(f"[red]ERROR[/] {outcome.target}: {outcome.message}")
