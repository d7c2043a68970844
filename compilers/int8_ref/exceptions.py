"""The errors int8-ref raises, each carrying its subject."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import CompilationFailed, TapeoutError, UnsupportedOperator


@dataclass(frozen=True)
class Incompatibility:
    """One node the compiler cannot build: which node, which attribute, and why."""

    node: str
    op_type: str
    attribute: str
    reason: str

    def __str__(self) -> str:
        attr = f" [{self.attribute}]" if self.attribute else ""
        return f"{self.node!r} ({self.op_type}){attr}: {self.reason}"


class IncompatibleModel(UnsupportedOperator):
    """The compatibility report found nodes int8-ref cannot build; the message lists all."""

    def __init__(self, compiler: str, problems: Sequence[Incompatibility]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0]
        super().__init__(compiler, first.node, first.op_type, first.reason)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        msg = (f"compiler {compiler!r} cannot build {len(self.problems)} node(s):\n{lines}")
        self.args = (msg,)

    def __str__(self) -> str:
        return self.args[0]


class MemoryBudgetExceeded(CompilationFailed):
    """The static memory plan does not fit the target's budget; names the op where it overflows."""

    def __init__(self, node: str, op_type: str, needed: int, budget: int) -> None:
        self.node, self.op_type, self.needed, self.budget = node, op_type, needed, budget
        super().__init__(
            f"memory budget exceeded at node {node!r} (op {op_type}): needs {needed} bytes "
            f"live, budget is {budget} bytes"
        )


class ArtifactRejected(TapeoutError):
    """The firmware refuses an artifact: malformed, truncated, corrupted or unsupported."""

    exit_code = 2

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"artifact {path}: {problem}")


class FirmwareTooOld(ArtifactRejected):
    """The artifact needs a newer firmware revision than the runtime has."""

    def __init__(self, path: str, required: str, available: str) -> None:
        self.required, self.available = required, available
        super().__init__(
            path, f"needs firmware revision >= {required}, this runtime is revision {available}"
        )
