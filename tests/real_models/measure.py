"""Compile a suite model with one compiler configuration and measure it against ONNX Runtime.

A `Column` is one compiler configuration (the tests' parameter and the benchmark table's
column); `COLUMNS` lists the suite's. To add a compiler, add a `Column`: its activation type
picks the QDQ model it compiles (`build(name, column.activations)`), and `host_ops` says how to
read, from its artifact's report, the ops it leaves to a host CPU.

The reference is ONNX Runtime's CPU session on the same QDQ model the compiler was given.
Differences are counted in LSB of each output: the scale of the DequantizeLinear that
produces it (ONNX DequantizeLinear y = (q - zero_point) * scale, so one step of q is `scale`),
as `tapeout diff` counts them (`tapeout.compilers.diff.compare_runners`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from real_models.build import RealModel


@dataclass(frozen=True)
class Column:
    """One compiler configuration. `host_ops(artifact)` returns the ops the compiler left to a
    host CPU, from its report; None where the compiler does not report them."""

    label: str
    compiler: str
    firmware: str
    options: Mapping[str, str] = field(default_factory=dict)
    activations: str = "uint8"
    host_ops: Callable[["CompiledArtifact"], Sequence[str]] | None = None  # noqa: F821

    def target(self) -> "TargetProfile":  # noqa: F821
        from tapeout.compilers.interface import TargetProfile

        return TargetProfile(f"suite-{self.label.replace(' ', '-')}", self.compiler, self.firmware, dict(self.options))


def _nothing_left(artifact) -> Sequence[str]:
    """int8-ref builds every node of a model into its program or refuses the model."""
    return ()


def _left_on_cpu(artifact) -> Sequence[str]:
    """The TFLite ops Vela left for the Cortex-M CPU, each with its count ("MEAN×10")."""
    counts: dict[str, int] = {}
    for op in artifact.report["cpu_operators"]:
        counts[op["op"]] = counts.get(op["op"], 0) + 1
    return tuple(f"{op}×{count}" if count > 1 else op for op, count in counts.items())


COLUMNS: dict[str, Column] = {
    column.label: column
    for column in (
        # ONNX Runtime's own CPU build, one thread: the latency every other column is divided by.
        # At `extended` ONNX Runtime fuses the QDQ pairs into its integer kernels (QLinearConv,
        # ...), as its default session does; at the plugin's default `basic` they run in float.
        Column("onnxruntime", "onnxruntime", "1.32.0", {"graph_optimization_level": "extended", "threads": "1"}),
        Column("int8-ref", "int8-ref", "2.0.0", {"requant": "fixed-point"}, host_ops=_nothing_left),
        Column("int8-ref ort", "int8-ref", "2.0.0", {"requant": "ort"}, host_ops=_nothing_left),
        Column("openvino", "openvino", "2026.4.1", {"threads": "1"}),
        # Vela places every op, NPU or CPU (any may fall back); the Runner (what is compared and
        # timed) is the int8 TFLite model on the host CPU through LiteRT, not the NPU.
        Column("ethos-u", "ethos-u", "25.08", {"accelerator_config": "ethos-u55-128", "allowed_cpu_ops": "*"},
               host_ops=_left_on_cpu),
    )
}


# The `float_ops` (docs/ethos-u.md, "Exact or on the NPU") that bring a model's Ethos-U TFLite
# within 2 LSB of ONNX Runtime where the default, every op int8 on the NPU, is not: the op
# whose int8 kernel computes otherwise than ONNX Runtime's, written as ONNX Runtime computes it.
ETHOS_U_FLOAT_OPS = {
    "mobilenet_v3_small": "HARD_SWISH",
    "efficientnet_b0": "LOGISTIC,MUL",
    "regnet_x_400mf": "ADD",
    "mnasnet0_5": "ADD",
}


def with_float_ops(column: Column, float_ops: str) -> Column:
    """`column` (the `ethos-u` one) with its `float_ops` option set."""
    from dataclasses import replace

    return replace(column, options={**column.options, "float_ops": float_ops})


@dataclass(frozen=True)
class Agreement:
    """How far a compiled model's output is from ONNX Runtime's over the test inputs.

    `max_lsb` None: the output has no per-tensor quantization step. `top1_agreement` None:
    the output is not class scores."""

    max_lsb: int | None
    differing: int
    elements: int
    top1_agreement: float | None


class OnnxRuntimeReference:
    """ONNX Runtime's CPU session on a QDQ model (default optimisations, one thread)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._names = [output.name for output in self._session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self._session.run(self._names, dict(inputs))))


def compile_model(model: RealModel, column: Column, workdir: Path) -> "CompiledArtifact":  # noqa: F821
    """Compile `model` (built with `column.activations`) for `column`.

    Raises:
        whatever the compiler raises: UnsupportedOperator for an op it refuses, ...
    """
    from tapeout.compilers.registry import load_compiler

    if model.activations != column.activations:
        raise ValueError(f"{column.label} takes {column.activations} activations, found {model.activations}")
    return load_compiler(column.compiler).compile(model.quantized, column.target(), workdir)


def load_runner(artifact) -> "Runner":  # noqa: F821
    from tapeout.compilers.registry import load_compiler

    return load_compiler(artifact.compiler).load(artifact)


def output_steps(qdq_path: Path) -> dict[str, float]:
    """Each output's LSB: the per-tensor scale of the DequantizeLinear that produces it or,
    where ONNX Runtime's quantizer left the last ops in float (SqueezeNet ends in a float
    ReduceMean and Reshape), of the nearest DequantizeLinear up the chain of first inputs."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(qdq_path), load_external_data=False).graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    steps = {}
    for output in graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type != "DequantizeLinear" and node.input:
            node = producers.get(node.input[0])
        scale = constants.get(node.input[1]) if node is not None else None
        if scale is not None and scale.size == 1:
            steps[output.name] = float(scale.reshape(()))
    return steps


def compare_with_onnxruntime(model: RealModel, runner) -> Agreement:
    """Run `runner` and ONNX Runtime on the model's test inputs; compare the single output."""
    from tapeout.compilers.diff import compare_runners

    outputs, _, _, _ = compare_runners(
        runner,
        OnnxRuntimeReference(model.qdq_path),
        [{spec.name: model.test_inputs for spec in model.quantized.inputs}],
        model.quantized.inputs,
        len(model.test_inputs),
        output_steps(model.qdq_path),
    )
    (output,) = outputs
    return Agreement(
        max_lsb=output.max_lsb,
        differing=output.differing,
        elements=output.elements,
        top1_agreement=output.top1_agreement if model.architecture.classifier else None,
    )


def p50_latency_ms(runner, feed: Mapping[str, np.ndarray], budget_seconds: float = 1.0) -> float:
    """Median single-call latency: two warm-up calls, then calls until `budget_seconds` have
    passed (at least 5, at most 200)."""
    for _ in range(2):
        runner.run(feed)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < 5 or (len(timings) < 200 and time.perf_counter() - started < budget_seconds):
        start = time.perf_counter()
        runner.run(feed)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1e3)
