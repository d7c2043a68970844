"""The error base every tapeout package raises from, and the compiler errors.

Each error carries its subject (the file, field, node or op, expected vs found) and the exit
code the command line maps it to (docs/architecture.md, "The command line"): 2 for bad input
or configuration, 1 for a failed gate or verification.
"""

from __future__ import annotations


class TapeoutError(Exception):
    """Base of every error the command line reports without a traceback."""

    exit_code = 2


class InvalidInput(TapeoutError):
    """A file, field or value the user gave is wrong: says which, expected and found."""


class UnsupportedOperator(TapeoutError):
    """A node the compiler cannot build, named by node name and op type."""

    def __init__(self, compiler: str, node: str, op_type: str, reason: str = "") -> None:
        self.compiler, self.node, self.op_type, self.reason = compiler, node, op_type, reason
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"compiler {compiler!r} cannot build node {node!r} (op {op_type}){detail}"
        )


class CompilationFailed(TapeoutError):
    """A compiler could not produce an artifact for a reason other than an operator."""


class PluginError(TapeoutError):
    """A compiler plugin could not be loaded or does not implement the interface."""

    def __init__(self, plugin: str, problem: str) -> None:
        self.plugin, self.problem = plugin, problem
        super().__init__(f"compiler plugin {plugin!r}: {problem}")
