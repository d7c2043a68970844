"""Gate reports people read: reports/gates.md and PNG plots, beside the JSON documents.

Every number in these files is taken from the same metrics dict that is logged to MLflow
(`Gated.evaluation.metrics`), so the report and the run cannot disagree. Plots are drawn with
matplotlib's Agg backend (no display needed): the latency distribution, accuracy of each
quantization tried for the target against fp32, and per-layer sensitivity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tapeout.flows.gates import GateResult

# Units and what each metric means, as printed in gates.md.
METRIC_NOTES: dict[str, str] = {
    "accuracy": "top-1 accuracy of the compiled artifact against the labels",
    "accuracy_fp32": "top-1 accuracy of the fp32 model against the labels",
    "accuracy_drop": "accuracy_fp32 - accuracy (absolute)",
    "accuracy_drop_relative": "accuracy_drop / accuracy_fp32",
    "top1_agreement": "share of samples where the artifact's top-1 equals fp32's",
    "output_sqnr_db": "SQNR of the first output vs fp32, 10·log10(Σx²/Σ(x−x̂)²), dB",
    "output_cosine": "mean per-sample cosine of the first output vs fp32",
    "latency_p50_ms": "median latency of one batch, ms (after warm-up)",
    "latency_p95_ms": "95th percentile latency of one batch, ms",
    "latency_p99_ms": "99th percentile latency of one batch, ms",
    "warmup_ms": "first inference of a freshly loaded artifact, ms",
    "throughput_per_s": "samples per second, one thread, static batch",
    "artifact_size_bytes": "compiled files, bytes",
    "peak_memory_bytes": "peak activation memory reported by the compiler's memory plan, bytes",
    "compile_seconds": "compile time reported by the compiler, s",
    "npu_mac_share": "share of the MACs the compiler placed on the NPU (the rest run on the host CPU)",
    "energy_per_inference_uj_estimate": "ESTIMATE, µJ per sample, from the target's cost model (not measured)",
    "macs_per_inference": "multiply-accumulates per sample, as the compiler counted them (for the energy estimate)",
    "bytes_moved_per_inference": "bytes read and written per sample, as the compiler counted them (for the energy estimate)",
}


def _number(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def gates_markdown(
    *,
    title: str,
    gates: Sequence[GateResult],
    metrics: Mapping[str, float],
    validation_digest: str,
    validation_count: int,
    fallback: Mapping[str, object] | None = None,
    sensitivity: Mapping[str, object] | None = None,
    plots: Sequence[str] = (),
    notes: Mapping[str, str] | None = None,
) -> str:
    """The text of reports/gates.md."""
    verdict = "PASS" if gates and all(gate.passed for gate in gates) else "FAIL"
    lines = [
        f"# Gates: {title}",
        "",
        f"**Verdict: {verdict}**",
        "",
        f"Measured on the validation set `sha256:{validation_digest}` ({validation_count} samples). "
        "Latency: in-process, one batch, one thread, after warm-up.",
        "",
        "| gate | bound | threshold | observed | verdict | measured on |",
        "|---|---|---|---|---|---|",
    ]
    for gate in gates:
        relation = "<=" if gate.bound == "max" else ">="
        lines.append(
            f"| {gate.metric} | {relation} | {_number(gate.threshold)} | {_number(gate.observed)} | "
            f"{'pass' if gate.passed else '**FAIL**'} | validation `{validation_digest[:12]}` |"
        )
    lines += ["", "## Every measurement", "", "| metric | value | meaning |", "|---|---|---|"]
    for name in sorted(metrics):
        lines.append(f"| {name} | {_number(metrics[name])} | {METRIC_NOTES.get(name, '')} |")
    if "energy_per_inference_uj_estimate" in metrics:
        lines += [
            "",
            f"Energy per inference: **{metrics['energy_per_inference_uj_estimate']:.6g} µJ, an ESTIMATE** from the "
            "target profile's cost model (energy per MAC and per byte moved); no silicon is measured here. "
            f"Work counted from: {(notes or {}).get('energy_work_source', 'not recorded')}.",
        ]
    else:
        lines += [
            "",
            "Energy per inference: not estimated — the target profile has no `cost_model` "
            "(energy per MAC and per byte moved); no silicon is measured here.",
        ]
    if notes and "peak_memory_op" in notes:
        lines += ["", f"Peak memory ({_number(metrics.get('peak_memory_bytes'))} bytes) is at {notes['peak_memory_op']}."]
    if fallback is not None:
        lines += ["", "## Accuracy fallback", "", f"Mode: {fallback.get('mode') or 'none'} — {fallback.get('why_this_mode')}."]
        lines.append(
            f"Budget {fallback.get('budget')} re-quantizations, {fallback.get('attempts_made')} made; "
            f"verdict **{fallback.get('verdict')}**, best attempt {fallback.get('best_attempt')}."
        )
        kept = fallback.get("kept_out") or []
        if kept:
            lines += ["", "Kept out of int8:", ""]
            for item in kept:  # type: ignore[union-attr]
                lines.append(f"- `{item['node']}` in {item['representation']}: {item['why']}")
        lines += ["", "| attempt | kept out | passed | top1_agreement | accuracy_drop | error |", "|---|---|---|---|---|---|"]
        for attempt in fallback.get("attempts") or []:  # type: ignore[union-attr]
            attempt_metrics = attempt["metrics"]
            lines.append(
                f"| {attempt['attempt']} | {', '.join(attempt['kept_out']) or '(none: all int8)'} | "
                f"{'yes' if attempt['passed'] else 'no'} | {_number(attempt_metrics.get('top1_agreement'))} | "
                f"{_number(attempt_metrics.get('accuracy_drop'))} | {attempt['error'] or ''} |"
            )
    if sensitivity is not None:
        data = sensitivity["data"]  # type: ignore[index]
        lines += [
            "",
            "## Per-layer sensitivity",
            "",
            f"On {data['name']} `{str(data['set_digest'])[:12]}`, {data['samples_used']} of "  # type: ignore[index]
            f"{data['samples_available']} samples; full table in sensitivity.json.",  # type: ignore[index]
            "",
            "| rank | layer | op | SQNR dB | channel SQNR dB | adds dB | cosine | agreement gain alone in fp32 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for layer in list(sensitivity["layers"])[:10]:  # type: ignore[index]
            lines.append(
                f"| {layer['rank']} | `{layer['node']}` | {layer['op_type']} | {layer['sqnr_db']:.2f} | "
                f"{layer['channel_sqnr_db']:.2f} | {layer['sqnr_drop_db']:.2f} | {layer['cosine']:.4f} | "
                f"{_number(layer['agreement_gain'])} |"
            )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(plot).stem}]({plot})" for plot in plots]
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float):
    """A figure drawn by the Agg backend without pyplot: targets report from concurrent
    threads, and pyplot's global state is not thread-safe."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


# Latencies above Q3 + OUTLIER_IQRS × IQR (Tukey's "far out" fence) are drawn as marks at the
# plot's right edge instead of stretching its axis: one 43 ms call among 200 of 0.03 ms would
# otherwise squeeze every other run into the first bar.
OUTLIER_IQRS = 3.0


def latency_figure(latencies_ms: Sequence[float], title: str):
    """The latency histogram of the bulk of the runs, with p50/p95/p99 and outliers marked."""
    import numpy as np

    figure, axes = _figure(6, 3.5)
    values = np.asarray(latencies_ms, dtype=float)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    # A spread of at least a tenth of the median: identical timings make no run an outlier.
    fence = q3 + OUTLIER_IQRS * max(q3 - q1, 0.1 * median)
    bulk, outliers = values[values <= fence], values[values > fence]
    low, high = float(bulk.min()), float(bulk.max())
    pad = max(high - low, 1e-3 * max(high, 1e-9)) * 0.04
    axes.hist(bulk, bins=40, range=(low - pad, high + pad), color="#4c72b0")
    for percentile, style in ((50, "-"), (95, "--"), (99, ":")):
        mark = float(np.percentile(values, percentile))
        shown = mark <= high + pad
        axes.axvline(min(mark, high + pad), color="black", linestyle=style,
                     label=f"p{percentile} {mark:.3g} ms" + ("" if shown else " (off scale)"))
    if outliers.size:
        edge = high + pad
        axes.plot([edge] * outliers.size, [0] * outliers.size, marker="|", markersize=14, color="#c44e52",
                  linestyle="none", clip_on=False, label=f"{outliers.size} outlier(s), not to scale")
        axes.annotate(
            f"{outliers.size} run(s) slower: up to {outliers.max():.3g} ms", xy=(1.0, 0.92),
            xycoords="axes fraction", ha="right", color="#c44e52", fontsize=8,
        )
    axes.set_xlim(low - pad, high + pad * 2)
    axes.set_xlabel("latency of one batch (ms)" + (", outliers marked at the edge" if outliers.size else ""))
    axes.set_ylabel("runs")
    axes.set_title(title)
    axes.legend(fontsize=8, loc="upper left" if outliers.size else "best")
    figure.tight_layout()
    return figure


def plot_latency(latencies_ms: Sequence[float], path: Path, title: str) -> Path:
    latency_figure(latencies_ms, title).savefig(path, dpi=100)
    return path


def accuracy_floor(gates: Sequence[GateResult], fp32: float | None) -> float | None:
    """The lowest accuracy the gates let pass: from `accuracy` {min}, and from `accuracy_drop`
    / `accuracy_drop_relative` {max} measured from `fp32`. None when no gate bounds accuracy."""
    floors = []
    for gate in gates:
        if gate.metric == "accuracy" and gate.bound == "min":
            floors.append(gate.threshold)
        elif fp32 is not None and gate.bound == "max" and gate.metric == "accuracy_drop":
            floors.append(fp32 - gate.threshold)
        elif fp32 is not None and gate.bound == "max" and gate.metric == "accuracy_drop_relative":
            floors.append(fp32 * (1 - gate.threshold))
    return max(floors) if floors else None


def accuracy_figure(
    entries: Sequence[tuple[str, float]], fp32: float | None, title: str,
    floors: Sequence[float | None] = (),
):
    """Bars: accuracy of each entry, with fp32 as a dashed line and each entry's gate floor
    (`floors`, from accuracy_floor) drawn over its bar; the axis is zoomed to the span of the
    bars, fp32 and the floors, so that a drop as small as the gate's range is visible."""
    figure, axes = _figure(6, 3.5)
    labels = [label for label, _ in entries]
    values = [value for _, value in entries]
    axes.bar(range(len(entries)), values, color="#55a868")
    axes.set_xticks(range(len(entries)), labels, rotation=20, ha="right", fontsize=8)
    if fp32 is not None:
        axes.axhline(fp32, color="black", linestyle="--", label=f"fp32 {fp32:.4g}")
    drawn = [(index, floor) for index, floor in enumerate(floors) if floor is not None]
    for number, (index, floor) in enumerate(drawn):
        axes.hlines(floor, index - 0.45, index + 0.45, color="#c44e52", linewidth=2,
                    label=f"gate: accuracy >= {floor:.4g}" if number == 0 or floor != drawn[0][1] else None)
    span = values + [floor for _, floor in drawn] + ([fp32] if fp32 is not None else [])
    low, high = min(span), max(span)
    margin = max((high - low) * 0.25, 0.005)
    axes.set_ylim(max(low - margin, 0.0), min(high + margin, 1.0 + margin))
    axes.set_ylabel("accuracy" + (" (axis zoomed)" if low - margin > 0 else ""))
    if fp32 is not None or drawn:
        axes.legend(loc="lower right", fontsize=8)
    axes.set_title(title)
    figure.tight_layout()
    return figure


def plot_accuracy(
    entries: Sequence[tuple[str, float]], fp32: float | None, path: Path, title: str,
    floors: Sequence[float | None] = (),
) -> Path:
    accuracy_figure(entries, fp32, title, floors).savefig(path, dpi=100)
    return path


def plot_sensitivity(document: Mapping[str, object], path: Path, title: str) -> Path:
    """Horizontal bars per layer (ranked): median channel SQNR and what the layer adds."""
    layers = list(document["layers"])[:20]  # type: ignore[index]
    figure, axes = _figure(7, 0.35 * len(layers) + 1.5)
    names = [f"{layer['rank']}. {layer['node']}" for layer in layers]
    positions = range(len(layers))
    axes.barh([p + 0.2 for p in positions], [layer["channel_sqnr_db"] for layer in layers], height=0.4,
              label="median channel SQNR (dB)", color="#4c72b0")
    axes.barh([p - 0.2 for p in positions], [layer["sqnr_drop_db"] for layer in layers], height=0.4,
              label="SQNR the layer loses (dB)", color="#c44e52")
    axes.set_yticks(list(positions), names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("dB")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def accuracy_entries(
    metrics: Mapping[str, float], fallback: Mapping[str, object] | None, representation: str = "int8"
) -> list[tuple[str, float]]:
    """The bars of accuracy.png: every fallback attempt, else the target's own artifact,
    labelled with what its layers run in (`representation`: int8, fp16, fp32)."""
    entries: list[tuple[str, float]] = []
    if fallback is not None:
        for attempt in fallback.get("attempts") or []:  # type: ignore[union-attr]
            if "accuracy" in attempt["metrics"]:
                kept = attempt["kept_out"]
                label = attempt["representation"] if not kept else f"{len(kept)} {attempt['representation']}: " + ",".join(kept)
                entries.append((label[:28], attempt["metrics"]["accuracy"]))
    elif "accuracy" in metrics:
        entries.append((f"{representation} (this target)", metrics["accuracy"]))
    return entries


def write_reports(
    folder: Path,
    *,
    title: str,
    gated,
    sensitivity: Mapping[str, object] | None = None,
    fallback: Mapping[str, object] | None = None,
    representation: str = "int8",
) -> dict[str, Path]:
    """Write gates.md and the plots (and sensitivity.json / fallback.json when given) into
    `folder`; returns file name → path of everything written. `representation` is what the
    target's artifact computes in (int8, fp16, fp32), for the accuracy plot's label."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    evaluation = gated.evaluation
    written: dict[str, Path] = {}
    plots: list[str] = []
    latencies = tuple(getattr(evaluation, "latencies_ms", ()) or ())
    if latencies:
        written["latency.png"] = plot_latency(latencies, folder / "latency.png", f"{title}: latency")
        plots.append("latency.png")
    metrics = evaluation.metrics
    entries = accuracy_entries(metrics, fallback, representation)
    if entries:
        fp32 = metrics.get("accuracy_fp32")
        floor = accuracy_floor(gated.gates, fp32)
        written["accuracy.png"] = plot_accuracy(
            entries, fp32, folder / "accuracy.png", f"{title}: accuracy vs fp32", [floor] * len(entries)
        )
        plots.append("accuracy.png")
    if sensitivity is not None:
        written["sensitivity.json"] = folder / "sensitivity.json"
        (folder / "sensitivity.json").write_text(json.dumps(sensitivity, indent=2, sort_keys=True) + "\n")
        written["sensitivity.png"] = plot_sensitivity(sensitivity, folder / "sensitivity.png", f"{title}: per-layer sensitivity")
        plots.append("sensitivity.png")
    if fallback is not None:
        written["fallback.json"] = folder / "fallback.json"
        (folder / "fallback.json").write_text(json.dumps(fallback, indent=2, sort_keys=True) + "\n")
    (folder / "gates.md").write_text(
        gates_markdown(
            title=title, gates=gated.gates, metrics=metrics, validation_digest=evaluation.validation_digest,
            validation_count=evaluation.validation_count, fallback=fallback, sensitivity=sensitivity, plots=plots,
            notes=gated.notes,
        )
    )
    written["gates.md"] = folder / "gates.md"
    return written


def target_reports(folder: Path, title: str, gated, sensitivity, fallback, representation: str = "int8") -> dict[str, Path]:
    """The pipeline's hook: every human-readable report of one target, written to `folder`."""
    return write_reports(
        folder, title=title, gated=gated, sensitivity=sensitivity, fallback=fallback, representation=representation
    )


def fallback_note(fallback: Mapping[str, object] | None) -> str:
    """One sentence for the run's verdict line about the accuracy fallback."""
    if fallback is None:
        return ""
    kept = [item["node"] for item in fallback.get("kept_out") or []]  # type: ignore[union-attr]
    made = fallback.get("attempts_made")
    if fallback.get("verdict") == "pass":
        return f" (accuracy fallback: kept {', '.join(kept)} in {fallback.get('mode')}, {made} attempt(s))"
    if not made:
        return f"; accuracy fallback not possible: {fallback.get('why_this_mode')}"
    best = fallback.get("best_attempt")
    return f"; accuracy fallback: {made} attempt(s), none passed; numbers are attempt {best}'s" + (
        f" ({', '.join(kept)} in {fallback.get('mode')})" if kept else " (all int8)"
    )
