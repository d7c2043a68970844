"""The real-model suite through every compiler: compiles?, host ops, LSB, top-1, latency.

    .venv/bin/python benchmarks/real_models.py [--models a,b] [--columns a,b] [--write-readme]

For every model of the suite (tests/real_models: torchvision 0.28.0 networks, a small ViT and
the MLPerf Tiny reference networks, seeded random weights, quantized by ONNX Runtime's
`quantize_static`) and every compiler configuration (`real_models.measure.COLUMNS`), in one
run: does it compile (else the first op it refuses), the ops it leaves to a host CPU where it
reports them, the largest difference of its output from ONNX Runtime's on the same QDQ model
in LSB of the output, top-1 agreement with ONNX Runtime, the p50 latency of one call at batch
1, and that latency divided by ONNX Runtime int8's (the `onnxruntime` column, one thread,
ONNX Runtime's integer kernels) on the same model in the same run.

Adding a compiler is adding a `Column` to `real_models.measure.COLUMNS`.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests"))  # the suite lives beside the tests that use it

from real_models import ARCHITECTURES, build  # noqa: E402
from real_models.build import CALIBRATION_SAMPLES, TEST_SAMPLES  # noqa: E402
from readme_section import replace_section  # noqa: E402
from real_models.measure import (  # noqa: E402
    COLUMNS,
    Column,
    compare_with_onnxruntime,
    compile_model,
    load_runner,
    p50_latency_ms,
)

README = Path(__file__).with_name("README.md")
SECTION = "## Real-model suite"
REFERENCE = "onnxruntime"


@dataclass(frozen=True)
class Cell:
    """One (model, column) measurement; `refused` says why it did not compile."""

    model: str
    column: str
    refused: str | None = None
    host_ops: tuple[str, ...] | None = None
    max_lsb: int | None = None
    differing: int = 0
    elements: int = 0
    top1_agreement: float | None = None
    p50_ms: float | None = None


def measure(model_name: str, column: Column) -> Cell:
    from tapeout.compilers.errors import TapeoutError, UnsupportedOperator

    model = build(model_name, column.activations)
    with tempfile.TemporaryDirectory(prefix="tapeout-suite-") as scratch:
        try:
            artifact = compile_model(model, column, Path(scratch))
        except UnsupportedOperator as error:
            return Cell(model_name, column.label, refused=f"refuses {error.op_type}")
        except TapeoutError as error:
            return Cell(model_name, column.label, refused=f"{type(error).__name__}: {str(error).splitlines()[0]}")
        runner = load_runner(artifact)
        agreement = compare_with_onnxruntime(model, runner)
        return Cell(
            model_name,
            column.label,
            host_ops=tuple(column.host_ops(artifact)) if column.host_ops else None,
            max_lsb=agreement.max_lsb,
            differing=agreement.differing,
            elements=agreement.elements,
            top1_agreement=agreement.top1_agreement,
            p50_ms=p50_latency_ms(runner, model.feeds()[0]),
        )


def table(cells: list[Cell]) -> tuple[str, list[str]]:
    """The markdown table and the footnotes holding each compile failure's message."""
    reference = {cell.model: cell.p50_ms for cell in cells if cell.column == REFERENCE}
    lines = [
        "| model | compiler | compiles | ops on a host CPU | max diff (LSB) | elements off | top-1 agreement | p50 (ms) | × ORT int8 |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for cell in cells:
        if cell.refused is not None:
            if cell.refused.startswith("refuses "):
                verdict = f"no: {cell.refused}"
            else:
                notes.append(cell.refused)
                verdict = f"no [{len(notes)}]"
            lines.append(f"| {cell.model} | {cell.column} | {verdict} | – | – | – | – | – | – |")
            continue
        host = "–" if cell.host_ops is None else (", ".join(cell.host_ops) or "none")
        lsb = "–" if cell.max_lsb is None else str(cell.max_lsb)
        top1 = "–" if cell.top1_agreement is None else f"{cell.top1_agreement:.2f}"
        base = reference.get(cell.model)
        ratio = f"{cell.p50_ms / base:.2f}×" if base else "–"
        lines.append(
            f"| {cell.model} | {cell.column} | yes | {host} | {lsb} | {cell.differing}/{cell.elements} | {top1} | "
            f"{cell.p50_ms:.3g} | {ratio} |"
        )
    return "\n".join(lines), notes


def report(cells: list[Cell], columns: list[Column]) -> str:
    from tapeout.compilers.versions import package_versions

    rows, notes = table(cells)
    versions = package_versions("torch", "torchvision", "onnxruntime", "openvino")
    settings = "; ".join(
        f"`{column.label}`: {column.compiler} {', '.join(f'{k}={v}' for k, v in column.options.items()) or 'defaults'}, "
        f"{column.activations} activations"
        for column in columns
    )
    machine = (
        f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs shared with other work "
        f"(load average {os.getloadavg()[0]:.1f} when measured), Python {platform.python_version()}, "
        + ", ".join(f"{name} {version}" for name, version in versions.items())
    )
    return "\n".join(
        [
            SECTION,
            "",
            "`.venv/bin/python benchmarks/real_models.py --write-readme` regenerates this section: every "
            "model of the real-model suite (`tests/real_models`: torchvision 0.28.0 architectures, a "
            "4-layer ViT-Ti/16, the MLPerf Tiny v0.5 reference networks; seeded random weights with "
            "measured BatchNorm statistics; exported by tapeout's PyTorch front end; quantized by ONNX "
            "Runtime's `quantize_static`, QDQ, per-channel int8 weights, MinMax on "
            f"{CALIBRATION_SAMPLES} random calibration samples) through every compiler configuration, "
            "all measured in one run.",
            "",
            f"Columns: {settings}. *max diff* is the largest |output − ONNX Runtime's output| over "
            f"{TEST_SAMPLES} random test inputs, in LSB of the output (its DequantizeLinear scale); "
            "ONNX Runtime here is its CPU session with default optimisations on the same QDQ model. "
            "*top-1 agreement* is with that session's argmax (– for the autoencoder, whose output is "
            "not class scores). *p50* is the median of single calls at batch 1 on one thread; "
            "*× ORT int8* divides it by the `onnxruntime` row of the same model. *ops on a host CPU*: "
            "– where the compiler does not report them; int8-ref runs every node or refuses the "
            "model. With random weights the ImageNet networks' 1000 logits lie close together, so "
            "top-1 flips with a few LSB of difference.",
            "",
            rows,
            "",
            *[f"[{index}] {note}" for index, note in enumerate(notes, 1)],
            *([""] if notes else []),
            f"Machine: {machine}.",
            "",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated (default: all {len(ARCHITECTURES)})")
    parser.add_argument("--columns", help=f"comma-separated (default: {','.join(COLUMNS)})")
    parser.add_argument("--write-readme", action="store_true", help=f"replace the '{SECTION}' section of --readme")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    models = args.models.split(",") if args.models else list(ARCHITECTURES)
    labels = args.columns.split(",") if args.columns else list(COLUMNS)
    unknown = [name for name in models if name not in ARCHITECTURES] + [label for label in labels if label not in COLUMNS]
    if unknown:
        parser.error(f"unknown model(s) or column(s) {unknown}; models {list(ARCHITECTURES)}, columns {list(COLUMNS)}")
    if REFERENCE in labels:  # measured first, so every other column's ratio has its base
        labels.remove(REFERENCE)
        labels.insert(0, REFERENCE)
    logging.getLogger().setLevel(logging.ERROR)  # ONNX Runtime's quantizer advises pre-processing, per model
    columns = [COLUMNS[label] for label in labels]
    cells = []
    for name in models:
        for column in columns:
            cells.append(measure(name, column))
            print(cells[-1], file=sys.stderr, flush=True)
    text = report(cells, columns)
    print(text)
    if args.write_readme:
        replace_section(args.readme, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
