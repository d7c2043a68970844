"""What a pipeline names must exist before anything runs: its files, and for every target the
compiler plugin, its options and a firmware revision inside the plugin's range.

`load_pipeline` checks the file's own shape; `check(pipeline)` checks it against this machine,
so that a misspelled compiler or a missing calibration set is one `error:` line naming the
config field (exit 2) before any export, compile or registration — never a build of the other
targets.
"""

from __future__ import annotations

import difflib

from tapeout.compilers.errors import PluginError
from tapeout.compilers.versions import parse_version
from tapeout.flows.config import ConfigError, Pipeline, TargetConfig, _option_text


def check(pipeline: Pipeline) -> None:
    """Raises: ConfigError naming the file, line and field of the first problem found."""
    check_files(pipeline)
    for index, target in enumerate(pipeline.config.targets):
        check_target(pipeline, index, target)


def check_files(pipeline: Pipeline) -> None:
    """Every file or folder the config names exists (the sample sets may be folders)."""
    for field, path in pipeline.input_files().items():
        if field == "pipeline" or path.exists():
            continue
        if field.endswith(".set") or path.is_file():
            expected = "a sample set (.npz file or folder)"
        else:
            expected = "a file"
        raise _error(pipeline, field, f"expected {expected} at {path}, found nothing there")


def check_target(pipeline: Pipeline, index: int, target: TargetConfig) -> None:
    """The target's compiler is installed and loads, takes every option given with an
    allowed value, and can build for the target's firmware revision."""
    from tapeout.compilers.registry import load_compiler, registered_names

    where = f"targets[{index}]"
    installed = registered_names()
    if target.compiler not in installed:
        raise _error(
            pipeline, f"{where}.compiler",
            f"no compiler plugin named {target.compiler!r}{_suggestion(target.compiler, installed)}; "
            f"installed: {', '.join(installed)} (tapeout compilers)",
        )
    try:
        capabilities = load_compiler(target.compiler).capabilities()
    except PluginError as error:
        raise _error(pipeline, f"{where}.compiler", f"{target.compiler!r} does not load: {error.problem}") from None
    known = capabilities.options
    for name, value in target.options.items():
        if name not in known:
            raise _error(
                pipeline, f"{where}.options.{name}",
                f"not an option of compiler {target.compiler!r}{_suggestion(name, known)}; "
                f"its options: {', '.join(sorted(known)) or 'none'}",
            )
        allowed, text = known[name], _option_text(value)
        if allowed and text not in allowed:
            raise _error(
                pipeline, f"{where}.options.{name}",
                f"expected one of {list(allowed)}, found {text!r}{_suggestion(text, allowed)}",
            )
    oldest, newest = capabilities.firmware_range
    revision = parse_version(target.firmware_revision, "firmware_revision")
    too_old = revision < parse_version(oldest, "firmware_range")
    too_new = newest is not None and revision > parse_version(newest, "firmware_range")
    if too_old or too_new:
        supported = f"{oldest} or newer" if newest is None else (
            oldest if oldest == newest else f"{oldest} to {newest}"
        )
        raise _error(
            pipeline, f"{where}.firmware_revision",
            f"compiler {target.compiler!r} builds for firmware {supported}, found {target.firmware_revision!r}",
        )


def _suggestion(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _error(pipeline: Pipeline, field: str, message: str) -> ConfigError:
    return ConfigError(pipeline.path, pipeline.line_of(field), field, message)
