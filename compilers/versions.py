"""Versions: dotted revisions (parse, compare) and the installed versions of packages."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

from tapeout.compilers.errors import InvalidInput

_VERSION = re.compile(r"^\d+(\.\d+){0,3}$")


def parse_version(text: str, what: str = "version") -> tuple[int, ...]:
    """'1.32.0' → (1, 32, 0), padded to 4 parts so '1.2' == '1.2.0'.

    Raises:
        InvalidInput: `text` is not 1 to 4 dot-separated non-negative integers.
    """
    if not isinstance(text, str) or not _VERSION.match(text):
        raise InvalidInput(f"{what}: expected a version like 1.0.0, found {text!r}")
    parts = tuple(int(part) for part in text.split("."))
    return parts + (0,) * (4 - len(parts))


def at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def package_versions(*packages: str) -> dict[str, str]:
    """Installed version of each distribution, or "not installed"."""
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
