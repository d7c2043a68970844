"""One build across its targets: accuracy per target against fp32, and every verdict.

Each bundle's reports describe one target; this is the page that compares them — the
question a platform team asks first ("which targets lose accuracy, and how much?"). Written
after every target finished, into `<home>/reports/<commit>/` (replaced whole on a rebuild), and
logged to MLflow as a run `<commit>-summary` in the model's experiment (tag
`build_summary=<commit>`), with one metric per target and metric (`<target>.accuracy`, ...),
so the numbers are those the target runs logged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tapeout.flows.reports import plot_accuracy

SUMMARY_TAG = "build_summary"
# The columns of summary.md, in order, with their headers.
COLUMNS = (
    ("accuracy", "accuracy"),
    ("accuracy_drop", "drop vs fp32"),
    ("top1_agreement", "top-1 agreement"),
    ("latency_p95_ms", "latency p95 ms"),
    ("artifact_size_bytes", "size bytes"),
    ("energy_per_inference_uj_estimate", "energy µJ (ESTIMATE)"),
)

LOGGED = frozenset(key for key, _ in COLUMNS) | {"accuracy_fp32"}  # per target, in the summary run


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000 and float(value).is_integer():  # bytes, counts: every digit
        return f"{int(value):,}"
    return f"{value:.4g}"


def summary_markdown(title: str, rows: Sequence[Mapping[str, object]], fp32: float | None) -> str:
    lines = [
        f"# Build summary: {title}",
        "",
        f"fp32 reference accuracy: **{_number(fp32)}** (the same validation set for every target).",
        "Energy is an ESTIMATE from each target's cost model, not a measurement; — means not measured.",
        "",
        "| target | verdict | version | " + " | ".join(header for _, header in COLUMNS) + " |",
        "|---|---|---|" + "---:|" * len(COLUMNS),
    ]
    for row in rows:
        metrics: Mapping[str, float] = row["metrics"]  # type: ignore[assignment]
        lines.append(
            f"| {row['target']} | {row['verdict']} | {row['version'] or '—'} | "
            + " | ".join(_number(metrics.get(key)) for key, _ in COLUMNS) + " |"
        )
    lines += ["", "![accuracy per target](accuracy-per-target.png)", ""]
    return "\n".join(lines)


def write_summary(folder: Path, title: str, rows: Sequence[Mapping[str, object]]) -> dict[str, Path]:
    """Write summary.md and accuracy-per-target.png into `folder`, replacing it whole.

    `rows`: one per target, with `target`, `verdict`, `version` and `metrics`.
    """
    fp32 = next(
        (row["metrics"]["accuracy_fp32"] for row in rows if "accuracy_fp32" in row["metrics"]),  # type: ignore[index, operator]
        None,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    entries = [
        (f"{row['target']} ({row['verdict']})", float(row["metrics"]["accuracy"]))  # type: ignore[index]
        for row in rows if "accuracy" in row["metrics"]  # type: ignore[operator]
    ]
    plot_accuracy(entries, fp32, staging / "accuracy-per-target.png", f"{title}: accuracy per target vs fp32")
    (staging / "summary.md").write_text(summary_markdown(title, rows, fp32))
    # Replace the folder whole: a reader sees the old summary or the new one, never a mix.
    if folder.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
        os.replace(folder, retired / folder.name)
        os.replace(staging, folder)
        shutil.rmtree(retired, ignore_errors=True)
    else:
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


def summarize(title: str, commit: str, outcomes: Sequence, registry, folder: Path) -> tuple[dict[str, Path], str]:
    """Rows from the build's outcomes — a target registered before this build contributes the
    metrics its run logged — then the files and the MLflow run. Returns (files, run id)."""
    rows = []
    for outcome in outcomes:
        metrics = dict(outcome.metrics)
        if not metrics and outcome.version is not None:
            metrics = registry.version_metrics(outcome.registered_model, outcome.version)
        rows.append({"target": outcome.target, "verdict": outcome.verdict, "version": outcome.version, "metrics": metrics})
    files = write_summary(folder, title, rows)
    return files, log_summary(registry, title, commit, folder, rows)
