"""Gates: each metric's threshold, the observed value, and the verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from tapeout.compilers.errors import TapeoutError
from tapeout.flows.config import Threshold


@dataclass(frozen=True)
class GateResult:
    metric: str
    bound: str  # "max" or "min"
    threshold: float
    observed: float | None
    passed: bool

    def describe(self) -> str:
        if self.observed is None:
            return f"{self.metric}: not measured (needs {self.bound} {self.threshold})"
        relation = "<=" if self.bound == "max" else ">="
        verdict = "pass" if self.passed else "FAIL"
        margin = abs(self.observed - self.threshold)
        by = "" if self.passed else f", off by {margin:.6g}"
        return f"{self.metric}: {self.observed:.6g} {relation} {self.threshold:.6g}? {verdict}{by}"


class GateFailed(TapeoutError):
    """One or more gates failed: the run is recorded, nothing is registered."""

    exit_code = 1

    def __init__(self, target: str, failures: list[GateResult]) -> None:
        self.target, self.failures = target, failures
        super().__init__(
            f"target {target!r}: gate(s) failed: " + "; ".join(f.describe() for f in failures)
        )


def check_gates(thresholds: Mapping[str, Threshold], metrics: Mapping[str, float]) -> tuple[GateResult, ...]:
    """Compare each configured gate with its metric; a metric that was not measured fails."""
    results = []
    for metric, threshold in sorted(thresholds.items()):
        bound = "max" if threshold.max is not None else "min"
        limit = threshold.max if threshold.max is not None else threshold.min
        assert limit is not None  # Threshold guarantees exactly one bound
        observed = metrics.get(metric)
        if observed is None:
            passed = False
        elif bound == "max":
            passed = observed <= limit
        else:
            passed = observed >= limit
        results.append(GateResult(metric, bound, float(limit), observed, passed))
    return tuple(results)


def gates_report(
    results: tuple[GateResult, ...], validation_digest: str, notes: Mapping[str, str] | None = None
) -> dict[str, object]:
    """The document written to reports/gates.json. `notes` say where derived metrics came
    from (e.g. energy_work_source)."""
    document: dict[str, object] = {
        "verdict": "pass" if all(result.passed for result in results) else "fail",
        "validation_set_digest": validation_digest,
        "gates": [asdict(result) for result in results],
    }
    if notes:
        document["notes"] = dict(notes)
    return document
