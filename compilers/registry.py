"""Find compiler plugins through the `tapeout.compilers` entry-point group, and check them.

Discovery and validation follow pluggy's manager (a broken plugin is named with what is
wrong with it, as pluggy's `_verify_hook` does); there is no hook machinery, since a run uses
one compiler per target.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from tapeout.compilers.errors import PluginError
from tapeout.compilers.interface import Capabilities, Compiler

ENTRY_POINT_GROUP = "tapeout.compilers"
_REQUIRED_METHODS = ("capabilities", "compile", "load")
# A build compiles its targets in parallel threads, and each loads its plugin. Two threads that
# import overlapping packages in different orders (one `pkg.sub`, whose __init__ imports
# `pkg.sub.mod`, the other `pkg.sub.mod` directly — fp16 imports the onnxruntime plugin's
# module) trip importlib's deadlock detector on Python < 3.15 (CPython gh-83065), or see a
# partially initialised module. Plugins are therefore loaded one at a time (re-entrant: a
# plugin may load another).
_IMPORTING = threading.RLock()


@dataclass(frozen=True)
class PluginStatus:
    """One registered plugin: loaded, or the reason it could not be."""

    name: str
    source: str
    compiler: Compiler | None
    problem: str | None


def registered_names() -> list[str]:
    return sorted({entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)})


def load_compiler(name: str) -> Compiler:
    """Load and validate the compiler registered as `name`.

    Raises:
        PluginError: no plugin has that name, or it fails to import, to instantiate, or to
            implement the interface (the message says which part).
    """
    matches = [entry for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.name == name]
    if not matches:
        raise PluginError(name, f"not registered; registered compilers: {registered_names()}")
    if len({entry.value for entry in matches}) > 1:
        sources = sorted(entry.value for entry in matches)
        raise PluginError(name, f"registered more than once, by {sources}")
    return _load(matches[0])


def plugin_statuses() -> list[PluginStatus]:
    """Every registered plugin with its load result; one broken plugin does not hide others."""
    statuses = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            statuses.append(PluginStatus(entry.name, entry.value, _load(entry), None))
        except PluginError as error:
            statuses.append(PluginStatus(entry.name, entry.value, None, error.problem))
    return statuses


def _load(entry: EntryPoint) -> Compiler:
    # Import, construction and capabilities() (which may import lazily) under one lock.
    with _IMPORTING:
        return _load_unlocked(entry)


def _load_unlocked(entry: EntryPoint) -> Compiler:
    try:
        plugin_class = entry.load()
    except Exception as error:  # any import-time failure of third-party code
        raise PluginError(
            entry.name, f"cannot import {entry.value} ({type(error).__name__}: {error})"
        ) from error
    if not inspect.isclass(plugin_class):
        raise PluginError(entry.name, f"{entry.value} must be a class, found {type(plugin_class).__name__}")
    try:
        compiler = plugin_class()
    except Exception as error:
        raise PluginError(
            entry.name, f"{entry.value}() failed ({type(error).__name__}: {error})"
        ) from error
    missing = [
        method for method in _REQUIRED_METHODS if not callable(getattr(compiler, method, None))
    ]
    if missing:
        raise PluginError(entry.name, f"{entry.value} lacks method(s) {missing}")
    for attribute in ("name", "version"):
        value = getattr(compiler, attribute, None)
        if not isinstance(value, str) or not value:
            raise PluginError(
                entry.name, f"{entry.value}.{attribute} must be a non-empty string, found {value!r}"
            )
    if compiler.name != entry.name:
        raise PluginError(
            entry.name, f"registered as {entry.name!r} but calls itself {compiler.name!r}"
        )
    try:
        capabilities = compiler.capabilities()
    except Exception as error:
        raise PluginError(
            entry.name, f"capabilities() failed ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(capabilities, Capabilities):
        raise PluginError(
            entry.name,
            f"capabilities() must return Capabilities, found {type(capabilities).__name__}",
        )
    return compiler
