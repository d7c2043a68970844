"""Comparing two runners of the same QDQ model, LSB by LSB (what `tapeout diff` reports; the
command's side, building the reference and choosing the samples, is tapeout.flows.diff).

Runs a candidate and a reference runner on the same samples and counts, per output, the
elements that differ by 1, 2 and more than 2 LSB, with a full histogram and the top-1
agreement. Where both runners can expose their intermediate
int8 tensors (an optional `trace(inputs) -> dict[str, ndarray]` method beside `run`, keyed by
the QDQ graph's tensor names, e.g. `relu_QuantizeLinear_Output`), the same counts are given
per layer, in execution order, and the first layer that differs by more than the tolerance is
named: the layer to look at when a vendor compiler miscompiles one.

The LSB of an output is its quantization step: the scale of the DequantizeLinear that
produces it in the QDQ model (ONNX DequantizeLinear: y = (q - zero_point) * scale, so one
step of q is `scale` in y). Intermediate int8 tensors are compared as integer codes, where one
LSB is one code. An output without a per-tensor scale (a float output) is compared in units of
`--lsb NAME=VALUE` if given, else reported without LSB buckets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import Runner, TensorSpec
from tapeout.compilers.measure import LsbHistogram, padded_batches

BUCKETS = ("exact", "1", "2", ">2")


@runtime_checkable
class TracingRunner(Protocol):
    """A Runner that can also return its intermediate tensors, keyed by graph tensor name."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def trace(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class TensorDiff:
    """One output or one layer: how many elements differ by how many LSB.

    `histogram` maps |difference| in LSB (0 = exact) to a count; `buckets` groups it as
    exact / 1 / 2 / >2. `lsb` is the step one unit stands for (None: compared as raw
    values, no buckets). `top1_agreement` is the share of rows (last axis) whose argmax
    agrees, for outputs with more than one class.
    """

    name: str
    elements: int
    lsb: float | None
    lsb_source: str
    buckets: Mapping[str, int]
    histogram: Mapping[int, int]
    max_lsb: int | None
    max_abs_diff: float
    top1_agreement: float | None = None

    @property
    def differing(self) -> int:
        return self.elements - int(self.buckets.get("exact", 0))


def output_lsb(qdq_model: Path) -> dict[str, float]:
    """Each graph output's quantization step: the scalar scale of the DequantizeLinear that
    produces it. Outputs produced otherwise (or with per-channel scales) are left out."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_model), load_external_data=False)
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producers = {name: node for node in model.graph.node for name in node.output}
    steps = {}
    for output in model.graph.output:
        node = producers.get(output.name)
        if node is None or node.op_type != "DequantizeLinear":
            continue
        scale = constants.get(node.input[1])
        if scale is not None and scale.size == 1:
            steps[output.name] = float(scale.reshape(()))
    return steps


def _finish(name: str, counter: LsbHistogram, lsb: float | None, source: str) -> TensorDiff:
    histogram = dict(sorted(counter.histogram.items()))
    if lsb is None and source != "integer codes":
        buckets = {"exact": histogram.get(0, 0), "differing": counter.elements - histogram.get(0, 0)}
        max_lsb = None
    else:
        buckets = {
            "exact": histogram.get(0, 0),
            "1": histogram.get(1, 0),
            "2": histogram.get(2, 0),
            ">2": sum(count for value, count in histogram.items() if value > 2),
        }
        max_lsb = max(histogram) if histogram else 0
    return TensorDiff(
        name, counter.elements, lsb, source, buckets, histogram, max_lsb, counter.max_abs_diff, counter.top1_agreement
    )


def compare_runners(
    candidate: Runner,
    reference: Runner,
    chunks: Iterable[Mapping[str, np.ndarray]],
    inputs: tuple[TensorSpec, ...],
    count: int,
    lsb: Mapping[str, float],
    tolerance_lsb: int = 1,
) -> tuple[tuple[TensorDiff, ...], tuple[TensorDiff, ...], str, str | None]:
    """Run both on the first `count` samples of `chunks` (arrays keyed by input name, read one
    chunk after the other: `[arrays]` for samples in memory, `SampleSet.chunks()` for a set on
    disk); returns (outputs, layers, layers note, first divergent layer). What is kept is
    counts, never outputs, so memory does not grow with `count`.

    A layer is compared when both runners trace it with the same shape and an integer dtype
    (its int8 codes). The first divergent layer is the first one, in the reference's order,
    with an element more than `tolerance_lsb` away.
    """
    tracing = isinstance(candidate, TracingRunner) and isinstance(reference, TracingRunner)
    outputs: dict[str, LsbHistogram] = {}
    layers: dict[str, LsbHistogram] = {}
    layer_order: list[str] = []
    for feed, real in padded_batches(chunks, inputs, count):
        if tracing:
            got_trace = candidate.trace(feed)  # type: ignore[union-attr]
            want_trace = reference.trace(feed)  # type: ignore[union-attr]
            for name, want in want_trace.items():
                got = got_trace.get(name)
                if got is None or got.shape != want.shape:
                    continue
                if want.dtype.kind not in "iu" or np.asarray(got).dtype.kind not in "iu":
                    continue
                if name not in layers:
                    layers[name] = LsbHistogram()
                    layer_order.append(name)
                layers[name].add_units(np.abs(np.asarray(got).astype(np.int64) - want.astype(np.int64))[:real])
        got_outputs = candidate.run(feed)
        want_outputs = reference.run(feed)
        missing = sorted(set(want_outputs) - set(got_outputs))
        if missing:
            raise InvalidInput(f"the candidate returned no output(s) {missing}; it returned {sorted(got_outputs)}")
        for name, want in want_outputs.items():
            want = np.asarray(want)[:real]
            got = np.asarray(got_outputs[name])[:real]
            if got.shape != want.shape:
                raise InvalidInput(f"output {name!r}: reference shape {list(want.shape)}, candidate {list(got.shape)}")
            outputs.setdefault(name, LsbHistogram()).add(want, got, lsb.get(name))
    output_diffs = tuple(
        _finish(name, counter, lsb.get(name), "output DequantizeLinear scale" if name in lsb else "none: raw values")
        for name, counter in outputs.items()
    )
    layer_diffs = tuple(_finish(name, layers[name], None, "integer codes") for name in layer_order)
    if not tracing:
        which = [label for label, runner in (("candidate", candidate), ("reference", reference))
                 if not isinstance(runner, TracingRunner)]
        note = f"per-layer comparison unavailable: the {' and '.join(which)} runner exposes no intermediates (trace)"
    elif not layer_diffs:
        note = "both runners trace, but they share no integer tensor of the same name and shape"
    else:
        note = f"{len(layer_diffs)} int8 tensors compared as integer codes, in the reference's execution order"
    first = next((d.name for d in layer_diffs if (d.max_lsb or 0) > tolerance_lsb), None)
    return output_diffs, layer_diffs, note, first
