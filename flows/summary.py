"""One build across its targets: every gate of every target, accuracy against fp32, and
every verdict.

Each bundle's reports describe one target; this is the page that compares them — the
question a platform team asks first ("which targets lose accuracy, and how much, and which
gate stopped which target?"). Written after every target finished, into its own folder
`<home>/reports/<commit>/<build>/` (a later build of the same commit writes another), and
logged to MLflow as a run `<commit>-summary` in the model's experiment (tag
`build_summary=<commit>`), with one metric per target and metric (`<target>.accuracy`, ...),
so the numbers are those the target runs logged.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tapeout.flows.gates import GateResult, check_gates
from tapeout.flows.reports import accuracy_floor, plot_accuracy

SUMMARY_TAG = "build_summary"
# The measurement columns of summary.md, in order, with their headers.
COLUMNS = (
    ("accuracy", "accuracy"),
    ("accuracy_drop", "drop vs fp32"),
    ("top1_agreement", "top-1 agreement"),
    ("output_sqnr_db", "output SQNR dB"),
    ("latency_p95_ms", "latency p95 ms"),
    ("artifact_size_bytes", "size bytes"),
    ("peak_memory_bytes", "peak memory bytes"),
    ("energy_per_inference_uj_estimate", "energy µJ (ESTIMATE)"),
)

LOGGED = frozenset(key for key, _ in COLUMNS) | {"accuracy_fp32"}  # per target, in the summary run


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000 and float(value).is_integer():  # bytes, counts: every digit
        return f"{int(value):,}"
    return f"{value:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(title: str, rows: Sequence[Mapping[str, object]], fp32: float | None) -> str:
    """`rows`: one per target with `target`, `verdict`, `version`, `metrics`, `gates` (its
    GateResults) and `message`."""
    lines = [
        f"# Build summary: {title}",
        "",
        f"fp32 reference accuracy: **{_number(fp32)}** (the same validation set for every target).",
        "",
        "| target | verdict | version | failed gates, or why nothing was built |",
        "|---|---|---|---|",
    ]
    for row in rows:
        gates: Sequence[GateResult] = row["gates"]  # type: ignore[assignment]
        failed = [gate.describe() for gate in gates if not gate.passed]
        why = "; ".join(failed) if failed else (str(row["message"]) if row["verdict"] == "error" else "—")
        lines.append(f"| {row['target']} | {row['verdict']} | {row['version'] or '—'} | {_cell(why)} |")
    lines += [
        "",
        "## Every gate",
        "",
        "| target | gate | bound | threshold | observed | verdict |",
        "|---|---|---|---:|---:|---|",
    ]
    for row in rows:
        for gate in row["gates"]:  # type: ignore[attr-defined]
            relation = "<=" if gate.bound == "max" else ">="
            lines.append(
                f"| {row['target']} | {gate.metric} | {relation} | {_number(gate.threshold)} | "
                f"{_number(gate.observed)} | {'pass' if gate.passed else '**FAIL**'} |"
            )
    lines += [
        "",
        "## Measurements",
        "",
        "Energy is an ESTIMATE from each target's cost model, not a measurement; — means not measured.",
        "",
        "| target | " + " | ".join(header for _, header in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for row in rows:
        metrics: Mapping[str, float] = row["metrics"]  # type: ignore[assignment]
        lines.append(f"| {row['target']} | " + " | ".join(_number(metrics.get(key)) for key, _ in COLUMNS) + " |")
    lines += ["", "![accuracy per target](accuracy-per-target.png)", ""]
    return "\n".join(lines)


def write_summary(folder: Path, title: str, rows: Sequence[Mapping[str, object]]) -> dict[str, Path]:
    """Write summary.md and accuracy-per-target.png into `folder`, a new folder: a reader sees
    the whole summary or none of it.

    `rows`: one per target, as summary_markdown takes them.
    """
    fp32 = next(
        (row["metrics"]["accuracy_fp32"] for row in rows if "accuracy_fp32" in row["metrics"]),  # type: ignore[index, operator]
        None,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    plotted = [row for row in rows if "accuracy" in row["metrics"]]  # type: ignore[operator]
    plot_accuracy(
        [(f"{row['target']} ({row['verdict']})", float(row["metrics"]["accuracy"])) for row in plotted],  # type: ignore[index]
        fp32, staging / "accuracy-per-target.png", f"{title}: accuracy per target vs fp32",
        [accuracy_floor(row["gates"], fp32) for row in plotted],  # type: ignore[arg-type]
    )
    (staging / "summary.md").write_text(summary_markdown(title, rows, fp32))
    os.replace(staging, folder)
    return {name: folder / name for name in ("summary.md", "accuracy-per-target.png")}


def log_summary(registry, experiment: str, commit: str, folder: Path, rows: Sequence[Mapping[str, object]]) -> str:
    """The summary as an MLflow run: its files, and every target's numbers as metrics."""
    # Not tagged `commit`: that tag finds a commit's target runs, one per target.
    run_id = registry.start_run(experiment, f"{commit[:12]}-summary", {SUMMARY_TAG: commit})
    try:
        metrics = {
            f"{row['target']}.{key}": float(value)
            for row in rows
            for key, value in row["metrics"].items()  # type: ignore[union-attr]
            if key in LOGGED
        }
        registry.log(run_id, metrics=metrics, tags={f"{row['target']}.verdict": str(row["verdict"]) for row in rows})
        registry.log_directory(run_id, folder, "summary")
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    registry.end_run(run_id, "FINISHED")
    return run_id


def summarize(
    title: str, commit: str, outcomes: Sequence, registry, folder: Path, thresholds: Mapping[str, Mapping]
) -> tuple[dict[str, Path], str]:
    """Rows from the build's outcomes — a target registered before this build contributes the
    metrics its run logged, gated again with `thresholds` (target name → its gates) — then the
    files and the MLflow run. Returns (files, run id)."""
    rows = []
    for outcome in outcomes:
        metrics = dict(outcome.metrics)
        if not metrics and outcome.version is not None:
            metrics = registry.version_metrics(outcome.registered_model, outcome.version)
        gates = outcome.gates or (check_gates(thresholds.get(outcome.target, {}), metrics) if metrics else ())
        rows.append({
            "target": outcome.target, "verdict": outcome.verdict, "version": outcome.version,
            "metrics": metrics, "gates": tuple(gates), "message": outcome.message,
        })
    files = write_summary(folder, title, rows)
    return files, log_summary(registry, title, commit, folder, rows)
