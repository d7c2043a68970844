"""The differential check: `tapeout diff BUNDLE_OR_ARTIFACT --against int8-ref`.

Runs a compiled artifact and a reference compiler's build of the same QDQ model on the same
samples and counts, per output, the elements that differ by 1, 2 and more than 2 LSB, with a
full histogram and the top-1 agreement. Where both runners can expose their intermediate
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

import argparse
import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from tapeout.compilers.errors import InvalidInput, TapeoutError
from tapeout.compilers.interface import CompiledArtifact, QuantizedModel, Runner, TargetProfile, TensorSpec

BUCKETS = ("exact", "1", "2", ">2")


@runtime_checkable
class TracingRunner(Protocol):
    """A Runner that can also return its intermediate tensors, keyed by graph tensor name."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def trace(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class DiffExceeded(TapeoutError):
    """An output differs from the reference by more than the allowed number of LSB."""

    exit_code = 1


@dataclass
class _Counter:
    """Accumulates |difference| in LSB over batches."""

    elements: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    top1_equal: int = 0
    top1_rows: int = 0

    def add_units(self, units: np.ndarray) -> None:
        self.elements += int(units.size)
        values, counts = np.unique(units, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            self.histogram[int(value)] = self.histogram.get(int(value), 0) + int(count)


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


@dataclass(frozen=True)
class DiffReport:
    candidate: Mapping[str, str]
    reference: Mapping[str, str]
    samples: int
    sample_set: str
    outputs: tuple[TensorDiff, ...]
    layers: tuple[TensorDiff, ...]
    layers_note: str
    first_divergent_layer: str | None
    tolerance_lsb: int

    def to_json(self) -> dict[str, object]:
        document = asdict(self)
        for group in ("outputs", "layers"):
            for entry, item in zip(document[group], getattr(self, group)):
                entry["histogram"] = {str(k): v for k, v in sorted(item.histogram.items())}
                entry["differing"] = item.differing
        return document


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


def _units(reference: np.ndarray, candidate: np.ndarray, lsb: float | None) -> tuple[np.ndarray, float]:
    difference = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    biggest = float(difference.max()) if difference.size else 0.0
    if lsb is None:
        return (difference > 0).astype(np.int64), biggest
    # Half an LSB of float noise (a float output dequantized two ways) is still the same code.
    return np.rint(difference / lsb).astype(np.int64), biggest


def _finish(name: str, counter: _Counter, lsb: float | None, source: str) -> TensorDiff:
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
    agreement = counter.top1_equal / counter.top1_rows if counter.top1_rows else None
    return TensorDiff(name, counter.elements, lsb, source, buckets, histogram, max_lsb, counter.max_abs_diff, agreement)


def _batches(arrays: Mapping[str, np.ndarray], inputs: tuple[TensorSpec, ...], count: int) -> Iterator[tuple[dict, int]]:
    """Fixed-size batches (the model's batch axis); the last is padded and its real size given."""
    batch = inputs[0].shape[0]
    for start in range(0, count, batch):
        feed = {}
        real = batch
        for spec in inputs:
            chunk = arrays[spec.name][start:start + batch]
            real = chunk.shape[0]
            if real < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
            feed[spec.name] = np.ascontiguousarray(chunk, dtype=np.float32)
        yield feed, real


def compare_runners(
    candidate: Runner,
    reference: Runner,
    arrays: Mapping[str, np.ndarray],
    inputs: tuple[TensorSpec, ...],
    count: int,
    lsb: Mapping[str, float],
    tolerance_lsb: int = 1,
) -> tuple[tuple[TensorDiff, ...], tuple[TensorDiff, ...], str, str | None]:
    """Run both on `count` samples; returns (outputs, layers, layers note, first divergent layer).

    A layer is compared when both runners trace it with the same shape and an integer dtype
    (its int8 codes). The first divergent layer is the first one, in the reference's order,
    with an element more than `tolerance_lsb` away.
    """
    tracing = isinstance(candidate, TracingRunner) and isinstance(reference, TracingRunner)
    outputs: dict[str, _Counter] = {}
    layers: dict[str, _Counter] = {}
    layer_order: list[str] = []
    for feed, real in _batches(arrays, inputs, count):
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
                    layers[name] = _Counter()
                    layer_order.append(name)
                units = np.abs(np.asarray(got).astype(np.int64) - want.astype(np.int64))[:real]
                layers[name].add_units(units)
                layers[name].max_abs_diff = max(layers[name].max_abs_diff, float(units.max(initial=0)))
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
            counter = outputs.setdefault(name, _Counter())
            units, biggest = _units(want, got, lsb.get(name))
            counter.add_units(units)
            counter.max_abs_diff = max(counter.max_abs_diff, biggest)
            if want.ndim >= 2 and want.shape[-1] > 1:
                rows_want = want.reshape(-1, want.shape[-1]).argmax(axis=1)
                rows_got = got.reshape(-1, want.shape[-1]).astype(np.float64).argmax(axis=1)
                counter.top1_equal += int((rows_want == rows_got).sum())
                counter.top1_rows += int(rows_want.size)
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


# -- what is compared -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Subject:
    artifact: CompiledArtifact
    qdq_model: Path
    float_model: Path
    sample_set: Path | None
    sample_kind: str


def _subject(path: Path, model: Path | None) -> _Subject:
    """A bundle folder (model/, compiled/, calibration/) or a compiled artifact folder."""
    from tapeout.artifacts.compiled import read_record

    if (path / "compiled").is_dir() and (path / "model").is_dir():
        artifact, _ = read_record((path / "compiled").resolve())
        qdq = model or path / "model" / "model.qdq.onnx"
        fp32 = path / "model" / "model.onnx"
        calibration = sorted(
            entry for entry in (path / "calibration").iterdir() if entry.name not in ("manifest.json", "table.json")
        ) if (path / "calibration").is_dir() else []
        sample_set = calibration[0] if calibration else None
        return _Subject(artifact, qdq, fp32 if fp32.is_file() else qdq, sample_set, "the bundle's calibration set")
    if (path / "compiler.json").is_file():
        artifact, _ = read_record(path.resolve())
        if model is None:
            raise InvalidInput(
                f"{path}: a compiled artifact folder holds no QDQ model; pass --model MODEL.qdq.onnx "
                "(or give the bundle folder)"
            )
        return _Subject(artifact, model, model, None, "")
    raise InvalidInput(f"{path}: expected a bundle folder (model/, compiled/) or a compiled folder with compiler.json")


def _default_firmware(compiler) -> str:
    from tapeout.compilers.versions import parse_version

    oldest, newest = compiler.capabilities().firmware_range
    candidates = [oldest] + ([newest] if newest else [])
    try:
        parse_version(compiler.version)
        candidates.append(compiler.version)
    except InvalidInput:
        pass
    return max(candidates, key=parse_version)


def run_diff(
    subject_path: Path,
    against: str,
    *,
    model: Path | None = None,
    sample_set: Path | None = None,
    options: Mapping[str, str] | None = None,
    firmware: str | None = None,
    lsb_overrides: Mapping[str, float] | None = None,
    limit: int | None = None,
    tolerance_lsb: int = 1,
    workdir: Path,
) -> DiffReport:
    """Build the subject's QDQ model with `against`, run both on the sample set, compare.

    Raises:
        InvalidInput: the subject, model or sample set is missing or does not fit.
        PluginError, UnsupportedOperator, CompilationFailed: from loading or compiling.
    """
    from tapeout.calibration.dataset import load_sample_set
    from tapeout.compilers.frontends import check_model
    from tapeout.compilers.registry import load_compiler

    subject = _subject(subject_path, model)
    described = check_model(subject.qdq_model)
    set_path, kind = (sample_set, "given") if sample_set is not None else (subject.sample_set, subject.sample_kind)
    if set_path is None:
        raise InvalidInput(f"{subject_path}: no sample set to run; pass --set SET (.npz or folder)")
    samples = load_sample_set(set_path, described.inputs)
    count = samples.count if limit is None else min(limit, samples.count)
    candidate_compiler = load_compiler(subject.artifact.compiler)
    candidate = candidate_compiler.load(subject.artifact)
    reference_compiler = load_compiler(against)
    target = TargetProfile(
        "diff-reference", against, firmware or _default_firmware(reference_compiler), dict(options or {})
    )
    quantized = QuantizedModel(
        subject.qdq_model, described.digest, subject.float_model, described.inputs, described.outputs
    )
    try:
        reference_artifact = reference_compiler.compile(quantized, target, workdir)
    except InvalidInput as error:
        if firmware is not None:
            raise
        raise InvalidInput(
            f"{error} (the reference was built for firmware {target.firmware_revision}, the default "
            f"for {against}: pass --firmware)"
        ) from error
    reference = reference_compiler.load(reference_artifact)
    lsb = {**output_lsb(subject.qdq_model), **dict(lsb_overrides or {})}
    outputs, layers, note, first = compare_runners(
        candidate, reference, samples.arrays(), described.inputs, count, lsb, tolerance_lsb
    )
    return DiffReport(
        candidate={
            "compiler": subject.artifact.compiler,
            "compiler_version": subject.artifact.compiler_version,
            "artifact_id": subject.artifact.artifact_id,
            "path": str(subject_path),
        },
        reference={
            "compiler": against,
            "compiler_version": reference_artifact.compiler_version,
            "artifact_id": reference_artifact.artifact_id,
            "firmware_revision": target.firmware_revision,
            "options": json.dumps(dict(reference_artifact.options), sort_keys=True),
        },
        samples=count,
        # The bundle's own set is named inside the bundle: a downloaded bundle's folder is gone
        # when the command ends.
        sample_set=f"{set_path.relative_to(subject_path) if sample_set is None else set_path} "
        f"({kind}, digest {samples.digest[:16]})",
        outputs=outputs,
        layers=layers,
        layers_note=note,
        first_divergent_layer=first,
        tolerance_lsb=tolerance_lsb,
    )


# -- command line -----------------------------------------------------------------------------


def add_commands(subparsers, common: argparse.ArgumentParser) -> None:
    diff = subparsers.add_parser(
        "diff", parents=[common], help="compare an artifact with a reference compiler, LSB by LSB"
    )
    diff.add_argument("reference", metavar="BUNDLE_OR_ARTIFACT",
                      help="bundle folder, MODEL-TARGET@VERSION/@ALIAS, or a compiled folder (with --model)")
    diff.add_argument("--against", default="int8-ref", help="reference compiler (default: int8-ref)")
    diff.add_argument("--model", type=Path, help="the QDQ model (default: the bundle's model/model.qdq.onnx)")
    diff.add_argument("--set", dest="sample_set", type=Path,
                      help="samples to run, .npz or folder (default: the bundle's calibration set)")
    diff.add_argument("--samples", type=int, help="use only the first N samples")
    diff.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reference compiler option")
    diff.add_argument("--firmware", help="firmware revision to build the reference for")
    diff.add_argument("--lsb", action="append", default=[], metavar="OUTPUT=STEP",
                      help="an output's LSB when the model does not say (float outputs)")
    diff.add_argument("--tolerance", type=int, default=1, help="LSB allowed before a layer counts as divergent")
    diff.add_argument("--fail-over", type=int, metavar="LSB",
                      help="exit 1 when any output element differs by more than LSB")
    diff.add_argument("--tracking-uri", help="MLflow tracking URI for registry references")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=diff_command)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    found = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise InvalidInput(f"{flag}: expected KEY=VALUE, found {item!r}")
        found[key] = value
    return found


def diff_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.commands import _bundle_for

    if args.samples is not None and args.samples < 1:
        raise InvalidInput(f"--samples: expected at least 1, found {args.samples}")
    lsb = {}
    for name, text in _pairs(args.lsb, "--lsb").items():
        try:
            lsb[name] = float(text)
        except ValueError:
            raise InvalidInput(f"--lsb {name}: expected a number, found {text!r}") from None
    candidate = Path(args.reference)
    # A compiled folder is used as it is; a bundle folder or registry reference via the registry helper.
    opened = contextlib.nullcontext((candidate, None)) if (candidate / "compiler.json").is_file() else _bundle_for(args)
    with opened as (path, _):
        with tempfile.TemporaryDirectory(prefix="tapeout-diff-") as scratch:
            report = run_diff(
                Path(path), args.against, model=args.model, sample_set=args.sample_set,
                options=_pairs(args.option, "--option"), firmware=args.firmware, lsb_overrides=lsb,
                limit=args.samples, tolerance_lsb=args.tolerance, workdir=Path(scratch),
            )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print(report)
    if args.fail_over is not None:
        worst = [o for o in report.outputs if o.max_lsb is not None and o.max_lsb > args.fail_over]
        if worst:
            raise DiffExceeded(
                "; ".join(f"output {o.name!r}: expected at most {args.fail_over} LSB from {args.against}, "
                          f"found {o.max_lsb} LSB" for o in worst)
            )
    return 0


def _print(report: DiffReport) -> None:
    c, r = report.candidate, report.reference
    print(f"candidate  {c['compiler']} {c['compiler_version']} ({c['artifact_id']})")
    print(f"reference  {r['compiler']} {r['compiler_version']} ({r['artifact_id']}), firmware {r['firmware_revision']}")
    print(f"samples    {report.samples} from {report.sample_set}")
    header = f"{'':<34}{'elements':>9}{'exact':>9}{'1 LSB':>8}{'2 LSB':>8}{'>2 LSB':>8}{'max':>6}  top-1"
    print("\noutputs" + header[7:])
    for item in report.outputs:
        print(_row(item))
        if item.lsb is not None:
            print(f"{'':<4}LSB {item.lsb:.6g} ({item.lsb_source}); histogram |diff| in LSB: "
                  + ", ".join(f"{k}: {v}" for k, v in item.histogram.items()))
    print(f"\nlayers: {report.layers_note}")
    if report.layers:
        print("layer" + header[5:])
        for item in report.layers:
            print(_row(item))
        if report.first_divergent_layer:
            print(f"\nfirst layer off by more than {report.tolerance_lsb} LSB: {report.first_divergent_layer}")
        else:
            print(f"\nno layer is off by more than {report.tolerance_lsb} LSB")


def _row(item: TensorDiff) -> str:
    name = item.name if len(item.name) <= 33 else "…" + item.name[-32:]
    b = item.buckets
    top1 = "" if item.top1_agreement is None else f"{item.top1_agreement:.4f}"
    if "1" not in b:
        return f"{name:<34}{item.elements:>9}{b['exact']:>9}{'differing ' + str(b['differing']):>24}{'':>6}  {top1}"
    return (f"{name:<34}{item.elements:>9}{b['exact']:>9}{b['1']:>8}{b['2']:>8}{b['>2']:>8}"
            f"{item.max_lsb:>6}  {top1}")

