"""The `tapeout` command line: the parser, the exit codes and the one-line errors. Each command
group has its own module here and calls the public functions of the package it drives
(docs/architecture.md); nothing below the command line imports this package.

Exit codes: 0 success, 1 a gate or a verification failed, 2 bad input or configuration.
Errors print one line naming their subject; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from tapeout.compilers.errors import TapeoutError
from tapeout.flows import environment
from tapeout.flows.cli import build, calibration, compilers, diff, explain, reproduce, trust, watch


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    home = environment.configure(Path(args.home) if args.home else None)
    args.home_path = home
    if not args.debug:
        # urllib3 logs every retry against an unreachable server; the error line says it once.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except TapeoutError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        full = _disk_full(error)
        if full is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"error: {full}", file=sys.stderr)
        return 2


def _disk_full(error: BaseException) -> str | None:
    """One line for a full disk (or quota), wherever in the chain of causes it shows: an
    OSError from a write, or SQLite's "database or disk is full" inside MLflow's errors."""
    import errno

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            # A copy names its source first and its destination second (shutil's sendfile).
            written = error.filename2 or error.filename
            where = f" writing {written}" if written else ""
            return f"no space left on the device{where} ({error.strerror}); free some space (see `tapeout gc`) and run again"
        if "database or disk is full" in str(error):
            return "no space left for the tracking database (SQLite: database or disk is full); free some space and run again"
        error = error.__cause__ or error.__context__
    return None


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--home and --debug, accepted before and after the subcommand. Only the top parser
    holds the defaults: a subparser's default would overwrite a value given before the
    subcommand (argparse copies the subcommand's namespace over the top one)."""
    parser.add_argument(
        "--home", default=None if defaults else argparse.SUPPRESS,
        help="tapeout home (default: $TAPEOUT_HOME or ./.tapeout)",
    )
    parser.add_argument(
        "--debug", action="store_true", default=False if defaults else argparse.SUPPRESS, help="show tracebacks"
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    parser = argparse.ArgumentParser(
        prog="tapeout",
        description="Compile, gate, sign and version models for low-power inference chips.",
    )
    _global_options(parser, defaults=True)
    commands = parser.add_subparsers(metavar="COMMAND")

    for group in (build, compilers, trust, reproduce):
        group.add_commands(commands, common)
    calibration.add_commands(commands)  # calibrate, calib inspect|pack|fetch
    for group in (watch, diff, explain):
        group.add_commands(commands, common)
    return parser
