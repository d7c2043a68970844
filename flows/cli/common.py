"""What several command groups share: `--option KEY=VALUE` lists, the registry a command
talks to, and the bundle a command reads (a folder, or a registered version downloaded)."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tapeout.compilers.errors import InvalidInput


def pairs(items: list[str], flag: str, *, values_required: bool = False) -> dict[str, str]:
    """`KEY=VALUE` arguments of `flag` as a dict.

    Raises:
        InvalidInput: an item without `=` or a key (or, with `values_required`, a value).
    """
    found = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key or (values_required and not value):
            raise InvalidInput(f"{flag}: expected KEY=VALUE, found {item!r}")
        found[key] = value
    return found


def open_registry(args: argparse.Namespace):
    """The registry at `--tracking-uri`, else the home's own SQLite store."""
    from tapeout.artifacts.registry import Registry
    from tapeout.flows.environment import default_tracking_uri

    # MLflow draws download progress bars on stdout, which would corrupt --json output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = args.tracking_uri or default_tracking_uri(args.home_path)
    return Registry(uri, args.home_path / "artifacts")


def existing_registry(args: argparse.Namespace):
    """`open_registry`, but None when neither --tracking-uri is given nor the home has a
    registry yet: a command that only looks never creates one."""
    if not args.tracking_uri and not (args.home_path / "mlflow.db").is_file():
        return None
    return open_registry(args)


@contextlib.contextmanager
def bundle_for(args: argparse.Namespace, reference: str | None = None) -> Iterator[tuple[Path, object]]:
    """Yield (bundle folder, registered version or None) for `reference` (default
    `args.reference`): a folder as it is, MODEL-TARGET@VERSION or @ALIAS downloaded into a
    temporary folder that is removed afterwards."""
    text = args.reference if reference is None else reference
    candidate = Path(text)
    if candidate.is_dir():
        yield candidate, None
        return
    if candidate.exists():
        raise InvalidInput(f"{candidate}: expected a bundle folder or MODEL-TARGET@VERSION")
    registry = open_registry(args)
    version = registry.resolve(text)
    with tempfile.TemporaryDirectory(prefix="tapeout-verify-") as scratch:
        yield registry.download_bundle(version, Path(scratch)), version
