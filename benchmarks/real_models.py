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
from dataclasses import dataclass, replace
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests"))  # the suite lives beside the tests that use it

from real_models import ARCHITECTURES, build  # noqa: E402
from real_models.build import CALIBRATION_SAMPLES, TEST_SAMPLES  # noqa: E402
from readme_section import replace_section  # noqa: E402
from real_models.measure import (  # noqa: E402
    COLUMNS,
    ETHOS_U_FLOAT_OPS,
    Column,
    compare_with_onnxruntime,
    compile_model,
    load_runner,
    p50_latency_ms,
    with_float_ops,
)

README = Path(__file__).with_name("README.md")
SECTION = "## Real-model suite"
REFERENCE = "onnxruntime"
ETHOS_U = "ethos-u"
# The NPUs the Ethos-U table estimates; the `ethos-u` column compiles for the first.
ETHOS_U_NPUS = ("ethos-u55-128", "ethos-u85-256")


@dataclass(frozen=True)
class ExactChoice:
    """The `ethos-u` column with `float_ops` (ETHOS_U_FLOAT_OPS): the LSB, how many ops the
    CPU runs, and Vela's inferences/s on the first of ETHOS_U_NPUS."""

    float_ops: str
    max_lsb: int | None
    ops_on_cpu: int
    inferences_per_second: float


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
    npu_mac_share: float | None = None  # compilers that place ops on an NPU or a host CPU
    inferences_per_second: tuple[float, ...] = ()  # Vela's estimate on each of ETHOS_U_NPUS
    exact: ExactChoice | None = None  # Ethos-U with the model's ETHOS_U_FLOAT_OPS


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
        estimates, exact = (), None
        if column.compiler == ETHOS_U:
            estimates = (artifact.report["vela_estimate"]["inferences_per_second"],) + tuple(
                _vela_inferences_per_second(model, column, npu, Path(scratch) / npu) for npu in ETHOS_U_NPUS[1:]
            )
            if model_name in ETHOS_U_FLOAT_OPS:
                exact = _exact_choice(model, column, ETHOS_U_FLOAT_OPS[model_name], Path(scratch) / "float_ops")
        return Cell(
            model_name,
            column.label,
            host_ops=tuple(column.host_ops(artifact)) if column.host_ops else None,
            max_lsb=agreement.max_lsb,
            differing=agreement.differing,
            elements=agreement.elements,
            top1_agreement=agreement.top1_agreement,
            p50_ms=p50_latency_ms(runner, model.feeds()[0]),
            npu_mac_share=artifact.report.get("npu_mac_share"),
            inferences_per_second=estimates,
            exact=exact,
        )


def _exact_choice(model, column: Column, float_ops: str, workdir: Path) -> ExactChoice:
    artifact = compile_model(model, with_float_ops(column, float_ops), workdir)
    agreement = compare_with_onnxruntime(model, load_runner(artifact))
    return ExactChoice(float_ops, agreement.max_lsb, len(artifact.report["cpu_operators"]),
                       artifact.report["vela_estimate"]["inferences_per_second"])


def _vela_inferences_per_second(model, column: Column, npu: str, workdir: Path) -> float:
    options = {**column.options, "accelerator_config": npu}
    artifact = compile_model(model, replace(column, options=options), workdir)
    return artifact.report["vela_estimate"]["inferences_per_second"]


def ethos_u_table(cells: list[Cell]) -> str:
    """The `ethos-u` column's cells with what only Ethos-U has: the NPU's share of MACs and
    Vela's inferences-per-second estimates."""
    names = [npu.removeprefix("ethos-").upper() for npu in ETHOS_U_NPUS]
    npus = " | ".join(f"{name} inferences/s (Vela estimate)" for name in names)
    exact = f"`float_ops` | max diff with them (LSB) | ops on the CPU with them | {names[0]} inferences/s with them"
    lines = [
        f"| model | converted and compiled | ops on the CPU ({names[0]}) | NPU share of MACs | "
        f"max diff (LSB) | {npus} | {exact} |",
        "|---|---|---|---:|---:|" + "---:|" * len(ETHOS_U_NPUS) + "---|---:|---:|---:|",
    ]
    for cell in cells:
        if cell.column != ETHOS_U:
            continue
        if cell.refused is not None:
            lines.append(f"| {cell.model} | no: {cell.refused} | – | – | – |" + " – |" * (len(ETHOS_U_NPUS) + 4))
            continue
        host = ", ".join(cell.host_ops or ()) or "none"
        rates = " | ".join(f"{rate:,.1f}" for rate in cell.inferences_per_second)
        choice = "– | – | – | –" if cell.exact is None else (
            f"{cell.exact.float_ops} | {cell.exact.max_lsb} | {cell.exact.ops_on_cpu} | "
            f"{cell.exact.inferences_per_second:,.1f}")
        lines.append(f"| {cell.model} | yes | {host} | {cell.npu_mac_share:.2%} | {cell.max_lsb} | {rates} | {choice} |")
    return "\n".join(lines)


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
    versions = package_versions("torch", "torchvision", "onnxruntime", "openvino", "ethos-u-vela", "ai-edge-litert")
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
            *(_ethos_u_part(cells) if any(cell.column == ETHOS_U for cell in cells) else []),
            f"Machine: {machine}.",
            "",
        ]
    )


def _ethos_u_part(cells: list[Cell]) -> list[str]:
    return [
        "**Ethos-U.** The `ethos-u` column converts the QDQ model to int8 TFLite (uint8 "
        "activations are read as int8 exactly) and lets Vela 5.2.0 place every op "
        "(`allowed_cpu_ops: \"*\"`). *ops on the CPU*: the ops Vela leaves for TensorFlow Lite "
        "Micro on the Cortex-M; *NPU share of MACs*: 1 − their MACs / all MACs "
        "(docs/ethos-u.md counts them); *max diff*: the int8 TFLite model run by LiteRT "
        "(XNNPACK kernels) against ONNX Runtime, as in the table above; *inferences/s*: "
        "Vela's performance-model estimate for the NPU program with each NPU's default system "
        "config and memory mode, not a measurement (no Ethos-U silicon or FVP here). Where the "
        "default is beyond 2 LSB, the last four columns compile again with the `float_ops` that "
        "write the ops whose int8 kernels compute otherwise than ONNX Runtime's as ONNX Runtime "
        "computes them, on the CPU (docs/ethos-u.md, \"Exact or on the NPU\"): the LSB, how many "
        "ops Vela then leaves on the CPU, and its estimate for the NPU program, which leaves "
        "those ops out.",
        "",
        ethos_u_table(cells),
        "",
    ]


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
