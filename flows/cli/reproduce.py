"""`tapeout reproduce REF`: rebuild a version from its recorded inputs and compare it, file by
file, with the signed bundle (tapeout.flows.reproduce).

Exit 1 when a file differs or the build cannot be rebuilt (the reason named), 2 for bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from tapeout.compilers.errors import InvalidInput
from tapeout.flows import environment
from tapeout.flows.cli.common import bundle_for


def add_commands(subparsers, common: argparse.ArgumentParser) -> None:
    reproduce = subparsers.add_parser(
        "reproduce", parents=[common],
        help="rebuild a version from its recorded commit, config and toolchain and compare it with the bundle",
    )
    reproduce.add_argument("reference", help="MODEL-TARGET@VERSION, @ALIAS, or a pulled bundle folder")
    reproduce.add_argument(
        "--repository", type=Path, metavar="DIR",
        help="a clone of the source repository (default: the folder the provenance names)",
    )
    reproduce.add_argument(
        "--keep", type=Path, metavar="DIR", help="rebuild in DIR (new or empty) and keep it (default: a temporary folder)"
    )
    reproduce.add_argument("--policy", type=Path, help="trust policy YAML (default: <home>/trust-policy.yaml, else the home's key)")
    reproduce.add_argument("--public-key", type=Path, help="trust exactly this EC public key")
    reproduce.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<home>/mlflow.db)")
    reproduce.add_argument("--json", action="store_true", help="print one JSON object")
    reproduce.set_defaults(func=reproduce_command)


def reproduce_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.policy import policy_for
    from tapeout.artifacts.promotion import check_served_as
    from tapeout.flows.reproduce import reproduce

    if not args.debug:
        environment.quiet_prefect_logging()
    if args.keep is not None and args.keep.exists() and (not args.keep.is_dir() or any(args.keep.iterdir())):
        raise InvalidInput(f"--keep {args.keep}: expected a new or empty folder")
    policy = policy_for(args.home_path, args.policy, args.public_key)

    def say(message: str) -> None:
        sys.stderr.write(f"· {message}\n")
        sys.stderr.flush()

    with bundle_for(args) as (bundle, version):
        # Only a bundle whose signature holds is worth rebuilding: its files' digests are then
        # the signed ones, and its provenance is what the builder signed.
        verified = policy.verify(bundle, version.name if version else None)
        if version is not None:
            check_served_as(bundle, version)
        what = f"{version.name} version {version.version}" if version else str(bundle)
        say(f"verified {what}: {verified.files} files signed by {verified.signer}")
        scratch = (
            contextlib.nullcontext(str(args.keep)) if args.keep
            else tempfile.TemporaryDirectory(prefix="tapeout-reproduce-")
        )
        with scratch as folder, contextlib.redirect_stdout(sys.stderr):
            result = reproduce(bundle, Path(folder), args.repository, progress=say)
    different = [item for item in result.files if not item.identical]
    if args.json:
        print(json.dumps({
            "reproduced": result.identical, "bundle": what, "signer": verified.signer,
            "recorded": asdict(result.recorded), "pipeline_file": result.pipeline_file,
            "files": [{**asdict(item), "identical": item.identical} for item in result.files],
            "not_obtained": list(result.not_obtained),
        }, indent=2))
    else:
        for item in result.files:
            print(item.describe())
        for line in result.not_obtained:
            print(f"not as recorded: {line}")
        source = f"commit {result.recorded.commit[:12]} ({result.pipeline_file}, target {result.recorded.target})"
        if result.identical:
            print(f"reproduced {what} from {source}: all {len(result.files)} files identical to the signed bundle")
        else:
            print(
                f"NOT REPRODUCED: {what} from {source}: {len(different)} of {len(result.files)} files differ: "
                + ", ".join(item.path for item in different)
            )
    return 0 if result.identical else 1
