"""`tapeout explain REF`: the per-layer sensitivity table of a bundle, ranked.

REF is a bundle folder or MODEL-TARGET@VERSION / @ALIAS. A bundle built with issue 5 carries
reports/sensitivity.json (measured on the validation set during the build) and, when the
accuracy fallback ran, reports/fallback.json; both are printed. An older bundle has neither:
the analysis is then computed from the bundle's own models, table and calibration set (the
only data a bundle holds; it has no labels, so accuracy columns stay empty) and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tapeout.compilers.errors import InvalidInput


def add_commands(subparsers, common: argparse.ArgumentParser) -> None:
    explain = subparsers.add_parser(
        "explain", parents=[common], help="per-layer int8 sensitivity of a bundle, ranked"
    )
    explain.add_argument("reference", help="bundle folder, MODEL-TARGET@VERSION or MODEL-TARGET@ALIAS")
    explain.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    explain.add_argument("--samples", type=int, default=200, help="samples when computing afresh")
    explain.add_argument("--tracking-uri", help="MLflow tracking URI (default: the home's SQLite)")
    explain.add_argument("--json", action="store_true", help="print the sensitivity document")
    explain.set_defaults(func=explain_command)


@contextlib.contextmanager
def _bundle(args: argparse.Namespace) -> Iterator[Path]:
    candidate = Path(args.reference)
    if candidate.is_dir():
        yield candidate
        return
    if candidate.exists():
        raise InvalidInput(f"{candidate}: expected a bundle folder or MODEL-TARGET@VERSION")
    import os

    from tapeout.artifacts.registry import Registry
    from tapeout.flows.environment import default_tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keeps stdout clean

    registry = Registry(args.tracking_uri or default_tracking_uri(args.home_path), args.home_path / "artifacts")
    version = registry.resolve(args.reference)
    with tempfile.TemporaryDirectory(prefix="tapeout-explain-") as scratch:
        yield registry.download_bundle(version, Path(scratch))


def _compute(bundle: Path, samples: int, workdir: Path) -> dict[str, object]:
    """Sensitivity from what an older bundle holds: its models, table and calibration set."""
    from tapeout.calibration.dataset import load_sample_set
    from tapeout.calibration.table import CalibrationTable
    from tapeout.compilers.frontends import check_model
    from tapeout.compilers.interface import QuantizedModel
    from tapeout.flows.sensitivity import analyse

    float_path = bundle / "model" / "model.onnx"
    quantized_path = bundle / "model" / "model.qdq.onnx"
    manifest_path = bundle / "calibration" / "manifest.json"
    for path in (float_path, quantized_path, manifest_path):
        if not path.exists():
            raise InvalidInput(f"{bundle}: not a tapeout bundle ({path.relative_to(bundle)} is missing)")
    manifest = json.loads(manifest_path.read_text())
    described = check_model(quantized_path)
    quantized = QuantizedModel(quantized_path, described.digest, float_path, described.inputs, described.outputs)
    data = load_sample_set(bundle / "calibration" / str(manifest["file"]), described.inputs)
    table = CalibrationTable.read(bundle / "calibration" / "table.json")
    result = analyse(
        float_path, quantized, data, table=table, samples_limit=samples, data_name="calibration",
        workdir=workdir,
    )
    return result.to_document()


def explain_command(args: argparse.Namespace) -> int:
    if args.top < 1 or args.samples < 1:
        raise InvalidInput("--top and --samples must be at least 1")
    with _bundle(args) as bundle, tempfile.TemporaryDirectory(prefix="tapeout-explain-work-") as scratch:
        report = bundle / "reports" / "sensitivity.json"
        computed = not report.exists()
        document = _compute(bundle, args.samples, Path(scratch)) if computed else json.loads(report.read_text())
        fallback_path = bundle / "reports" / "fallback.json"
        fallback = json.loads(fallback_path.read_text()) if fallback_path.exists() else None
    if args.json:
        print(json.dumps({"computed_now": computed, "sensitivity": document, "fallback": fallback}, indent=2))
        return 0
    _print(document, fallback, computed, args.top, args.reference)
    return 0


def _cell(value: object, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if digits == 3 else f"{value:.{digits}f}"
    return str(value)


def _print(document: dict, fallback: dict | None, computed: bool, top: int, reference: str) -> None:
    from rich.console import Console
    from rich.table import Table

    # Piped, rich would fit the table to 80 columns and cut layer names short: a pipe gets
    # every character (a terminal keeps its own width).
    console = Console(soft_wrap=True, file=sys.stdout, width=None if sys.stdout.isatty() else 100_000)
    data, baseline = document["data"], document["baseline"]
    source = "computed now from the bundle" if computed else "recorded in the bundle at build time"
    console.print(
        f"[bold]{reference}[/]: per-layer sensitivity ({source}) on {data['name']} "
        f"{str(data['set_digest'])[:12]}, {data['samples_used']} of {data['samples_available']} samples"
    )
    agreement = baseline["top1_agreement"]
    line = f"all-int8 model: top-1 agreement with fp32 {agreement:.4f}"
    if baseline.get("accuracy") is not None:
        line += f", accuracy {baseline['accuracy']:.4f} (fp32 {baseline['accuracy_fp32']:.4f})"
    console.print(line)
    table = Table(title="layers, most sensitive first", title_justify="left")
    for column in ("#", "layer", "op", "SQNR", "ch.SQNR", "adds", "cosine", "alone", "gain"):
        table.add_column(column, justify="left" if column in ("layer", "op") else "right")
    for layer in document["layers"][:top]:
        table.add_row(
            str(layer["rank"]), layer["node"], layer["op_type"], _cell(layer["sqnr_db"]),
            _cell(layer["channel_sqnr_db"]), _cell(layer["sqnr_drop_db"]), f"{layer['cosine']:.4f}",
            _cell(layer["fp32_alone_top1_agreement"], 4), _cell(layer["agreement_gain"], 3),
        )
    console.print(table)
    console.print(
        "SQNR (dB), cosine: the layer's output, QDQ vs fp32 (cumulative). ch.SQNR: median over channels. "
        "adds: dB the layer loses itself. alone: top-1 agreement with only that layer kept out of int8; "
        "gain: its change over all-int8."
    )
    if fallback is not None:
        kept = fallback.get("kept_out") or []
        if kept:
            console.print(f"accuracy fallback ({fallback['verdict']}): kept out of int8:")
            for item in kept:
                console.print(f"  {item['node']} in {item['representation']}: {item['why']}")
        else:
            console.print(f"accuracy fallback ({fallback['verdict']}): {fallback.get('why_this_mode')}")
