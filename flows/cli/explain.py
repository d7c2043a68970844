"""`tapeout explain REF`: the per-layer sensitivity table of a bundle, ranked
(tapeout.flows.explain). REF is a bundle folder or MODEL-TARGET@VERSION / @ALIAS.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tapeout.compilers.errors import InvalidInput
from tapeout.flows.cli.common import bundle_for


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


def explain_command(args: argparse.Namespace) -> int:
    if args.top < 1 or args.samples < 1:
        raise InvalidInput("--top and --samples must be at least 1")
    from tapeout.flows.explain import explain_bundle

    with bundle_for(args) as (bundle, _), tempfile.TemporaryDirectory(prefix="tapeout-explain-work-") as scratch:
        explained = explain_bundle(bundle, args.samples, Path(scratch))
    if args.json:
        print(json.dumps(
            {"computed_now": explained.computed_now, "sensitivity": explained.sensitivity,
             "fallback": explained.fallback}, indent=2,
        ))
        return 0
    _print(explained.sensitivity, explained.fallback, explained.computed_now, args.top, args.reference)
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
