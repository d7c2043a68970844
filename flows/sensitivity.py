"""Per-layer sensitivity of a quantized model: which layers lose the accuracy, and by how much.

A *layer* is a node of the QDQ model whose output is quantized (a QuantizeLinear →
DequantizeLinear pair follows it). The map from layer to tensors is built explicitly from the
graph, never parsed back out of tensor names: `float_tensor` is the tensor in the fp32
model, `quantized_tensor` the DequantizeLinear output that stands for it in the QDQ model.

Two metrics:

- *cheap*, for every layer: both models run on the same samples (the validation set, at most
  `samples` of them, the count recorded) with every layer's tensor added as a graph output.
  Per layer, SQNR = 10·log10(Σx² / Σ(x − x̂)²) over all samples and the mean per-sample cosine
  similarity of x̂ (QDQ) against x (fp32). Both are weighted by energy, so one huge outlier
  channel hides the loss of every other channel (its own SQNR is excellent): the ranking uses
  `channel_sqnr_db`, the median over channels (axis 1) of the per-channel SQNR. Errors
  accumulate downstream, so a layer is ranked by what it *adds*: `sqnr_drop_db` = the worst
  channel SQNR of its quantized inputs minus the channel SQNR of its output.
- *expensive*, for the worst `top_k` layers: the model is quantized again with only that
  layer kept out of int8 (`keep_out`) and its top-1 agreement with fp32 (and its accuracy,
  with labels) measured on the same samples: the gain over the all-int8 model.

Keeping a layer out of int8 means: ONNX Runtime's quantizer leaves the node in float
(`nodes_to_exclude`) *and* its output tensor is not quantized — the QuantizeLinear →
DequantizeLinear pair on it becomes an Identity — so its consumers read the fp32 value. An
outlier activation is repaired by keeping out the one layer that produces it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tapeout.calibration.table import CalibrationTable
from tapeout.compilers.interface import QuantizedModel, TensorSpec
from tapeout.compilers.measure import SQNR_CAP_DB, cosines, sqnr_db
from tapeout.flows.evaluate import validation_batches

SCHEMA = "tapeout.sensitivity/v1"
DEFAULT_SAMPLES = 200
DEFAULT_TOP_K = 3
_QDQ = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class Layer:
    """One quantized layer and the tensors that stand for its output in each model."""

    node: str
    op_type: str
    float_tensor: str  # in the fp32 model
    quantized_tensor: str  # the DequantizeLinear output in the QDQ model
    quantize_input: str  # the tensor the QuantizeLinear reads, in the QDQ model
    inputs: tuple[str, ...]  # fp32 names of its activation inputs that are quantized


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    tensor: str
    sqnr_db: float
    cosine: float
    channel_sqnr_db: float
    input_sqnr_db: float | None
    sqnr_drop_db: float
    # The expensive metric: the layer alone kept out of int8 (None where not measured).
    fp32_alone_top1_agreement: float | None = None
    fp32_alone_accuracy: float | None = None
    agreement_gain: float | None = None
    accuracy_gain: float | None = None


@dataclass(frozen=True)
class Sensitivity:
    """The whole analysis, as written to reports/sensitivity.json."""

    float_model_sha256: str
    quantized_model_sha256: str
    data_set_digest: str
    data_name: str
    samples_used: int
    samples_available: int
    top_k: int
    baseline_top1_agreement: float
    baseline_accuracy: float | None
    fp32_accuracy: float | None
    layers: tuple[LayerSensitivity, ...]
    input_sqnr_db: Mapping[str, float] = field(default_factory=dict)

    def ranked(self) -> tuple[LayerSensitivity, ...]:
        """Layers in the order the fallback tries them: those measured by the expensive
        metric first, by their agreement (then accuracy) gain; then by `sqnr_drop_db`."""
        measured = [layer for layer in self.layers if layer.agreement_gain is not None]
        rest = [layer for layer in self.layers if layer.agreement_gain is None]
        measured.sort(
            key=lambda layer: (-(layer.agreement_gain or 0.0), -(layer.accuracy_gain or 0.0), -layer.sqnr_drop_db)
        )
        return tuple(measured + rest)

    def to_document(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "float_model_sha256": self.float_model_sha256,
            "quantized_model_sha256": self.quantized_model_sha256,
            "data": {
                "name": self.data_name,
                "set_digest": self.data_set_digest,
                "samples_used": self.samples_used,
                "samples_available": self.samples_available,
            },
            "metrics": {
                "cheap": "every layer: SQNR (dB) and mean cosine of the QDQ tensor vs fp32; channel_sqnr_db: "
                "median per-channel SQNR; sqnr_drop_db = worst input channel SQNR - output channel SQNR "
                "(what the layer adds)",
                "expensive": f"the worst {self.top_k} layers by sqnr_drop_db: quantized again with only that "
                "layer kept out of int8; top-1 agreement with fp32 and accuracy, and the gain over all-int8",
            },
            "baseline": {
                "top1_agreement": self.baseline_top1_agreement,
                "accuracy": self.baseline_accuracy,
                "accuracy_fp32": self.fp32_accuracy,
            },
            "input_sqnr_db": dict(self.input_sqnr_db),
            "ranking": "expensive-metric gain first, then sqnr_drop_db, descending",
            "layers": [{"rank": rank, **asdict(layer)} for rank, layer in enumerate(self.ranked(), 1)],
        }

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_document(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> "Sensitivity":
        return cls.from_document(json.loads(Path(path).read_text()))

    @classmethod
    def from_document(cls, document: Mapping[str, object]) -> "Sensitivity":
        layers = tuple(
            LayerSensitivity(**{key: value for key, value in layer.items() if key != "rank"})
            for layer in document["layers"]
        )
        data, baseline = document["data"], document["baseline"]
        top_k = sum(layer.agreement_gain is not None for layer in layers)
        return cls(
            document["float_model_sha256"], document["quantized_model_sha256"], data["set_digest"],
            data["name"], data["samples_used"], data["samples_available"], top_k,
            baseline["top1_agreement"], baseline["accuracy"], baseline["accuracy_fp32"], layers,
            document.get("input_sqnr_db", {}),
        )


# -- the layer map ----------------------------------------------------------------------------


def quantized_layers(float_model, qdq_model) -> tuple[tuple[Layer, ...], dict[str, str]]:
    """Every quantized layer of `qdq_model` (onnx ModelProto), and the map fp32 tensor → QDQ
    tensor of every quantized activation (graph inputs included)."""
    float_tensors = {name for node in float_model.graph.node for name in node.output}
    float_tensors |= {value.name for value in float_model.graph.input}
    initializers = {tensor.name for tensor in qdq_model.graph.initializer}
    producer = {name: node for node in qdq_model.graph.node for name in node.output}
    pairs: dict[str, str] = {}  # QDQ DequantizeLinear output → fp32 tensor
    quantize_inputs: dict[str, str] = {}  # QDQ DequantizeLinear output → QuantizeLinear input
    for node in qdq_model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in initializers:
            continue
        quantize = producer.get(node.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            continue
        before = quantize.input[0]
        float_name = before if before in float_tensors else node.output[0]  # a renamed graph output
        if float_name not in float_tensors:
            continue
        pairs[node.output[0]] = float_name
        quantize_inputs[node.output[0]] = before
    layers = []
    seen: set[str] = set()
    for dequantized, float_name in pairs.items():
        origin = producer.get(quantize_inputs[dequantized])
        if origin is None or origin.op_type in _QDQ or origin.name in seen or not origin.name:
            continue
        seen.add(origin.name)
        inputs = tuple(pairs[name] for name in origin.input if name in pairs)
        layers.append(
            Layer(origin.name, origin.op_type, float_name, dequantized, quantize_inputs[dequantized], inputs)
        )
    activations = {float_name: dequantized for dequantized, float_name in pairs.items()}
    return tuple(layers), activations


# -- keeping layers out of int8 -----------------------------------------------------------------


def keep_out(
    float_model: Path,
    table: CalibrationTable,
    layers: Sequence[Layer],
    *,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    output_path: Path,
) -> QuantizedModel:
    """Quantize `float_model` with `layers` kept out of int8: each node left in float and its
    output tensor unquantized (the QuantizeLinear → DequantizeLinear pair becomes Identity)."""
    import onnx

    from tapeout.calibration.quantizer import describe_quantized, quantize

    quantize(
        float_model, table, inputs=inputs, outputs=outputs, output_path=output_path,
        nodes_to_exclude=tuple(layer.node for layer in layers),
    )
    model = onnx.load(str(output_path))
    keep = {layer.quantize_input for layer in layers} | {layer.float_tensor for layer in layers}
    quantizers = {
        node.output[0]: node for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] in keep
    }
    rewritten = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in quantizers:
            source = quantizers[node.input[0]].input[0]
            rewritten.append(
                onnx.helper.make_node("Identity", [source], [node.output[0]], name=f"{node.name}_kept_fp32")
            )
        else:
            rewritten.append(node)
    # A QuantizeLinear goes once nothing reads it any more.
    readers = {name for node in rewritten for name in node.input}
    rewritten = [
        node for node in rewritten
        if not (node.op_type == "QuantizeLinear" and node.output[0] in quantizers and node.output[0] not in readers)
    ]
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    # The removed pairs' scales and zero points: drop those nothing reads any more.
    used = {name for node in rewritten for name in node.input}
    unused = [tensor for tensor in model.graph.initializer if tensor.name not in used]
    for tensor in unused:
        model.graph.initializer.remove(tensor)
    onnx.save(model, str(output_path))
    return describe_quantized(output_path, float_model, inputs, outputs)


# -- running the models -------------------------------------------------------------------------


def _session(model, extra_outputs: Sequence[str]):
    """An ONNX Runtime session over `model` (ModelProto) with `extra_outputs` added as graph
    outputs. Optimisations are off so the QDQ model computes exactly its fake-quant semantics."""
    import onnx
    import onnxruntime

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {output.name for output in copy.graph.output}
    for name in extra_outputs:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _top1(session, samples, inputs, count, output_name: str) -> np.ndarray:
    top1 = []
    for feed, real in validation_batches(samples, inputs, count):
        (output,) = session.run([output_name], feed)
        top1.append(np.asarray(output).reshape(output.shape[0], -1).argmax(axis=1)[:real])
    return np.concatenate(top1)


class _Accumulator:
    """Σx², Σ(x−x̂)², per channel and in all, and the sum of the per-sample cosines of one
    tensor, over every sample: sums, so that memory does not grow with the samples."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.cosine_sum = 0.0
        self.samples = 0
        self.channel_signal: np.ndarray | None = None
        self.channel_noise: np.ndarray | None = None

    def add(self, exact: np.ndarray, approximate: np.ndarray, real: int) -> None:
        exact = np.asarray(exact, dtype=np.float64)[:real]
        approximate = np.asarray(approximate, dtype=np.float64)[:real]
        channels = exact.shape[1] if exact.ndim > 1 else 1
        error = (exact - approximate).reshape(real, channels, -1)
        signal = np.sum(exact.reshape(real, channels, -1) ** 2, axis=(0, 2))
        noise = np.sum(error**2, axis=(0, 2))
        if self.channel_signal is None:
            self.channel_signal, self.channel_noise = signal, noise
        else:
            self.channel_signal, self.channel_noise = self.channel_signal + signal, self.channel_noise + noise
        exact = exact.reshape(real, -1)
        approximate = approximate.reshape(real, -1)
        self.signal += float(np.sum(exact**2))
        self.noise += float(np.sum((exact - approximate) ** 2))
        self.cosine_sum += float(np.sum(cosines(exact, approximate)))
        self.samples += real

    def sqnr_db(self) -> float:
        return sqnr_db(self.signal, self.noise)

    def channel_sqnr_db(self) -> float:
        """Median over channels of each channel's SQNR (channels with no signal left out)."""
        if self.channel_signal is None:
            return SQNR_CAP_DB
        values = [
            sqnr_db(signal, noise) for signal, noise in zip(self.channel_signal, self.channel_noise) if signal > 0
        ]
        return float(np.median(values)) if values else sqnr_db(0.0, float(np.sum(self.channel_noise)))

    def cosine(self) -> float:
        return self.cosine_sum / self.samples if self.samples else 1.0


def analyse(
    float_path: Path,
    quantized: QuantizedModel,
    samples,
    *,
    table: CalibrationTable | None = None,
    samples_limit: int = DEFAULT_SAMPLES,
    top_k: int = DEFAULT_TOP_K,
    data_name: str = "validation",
    workdir: Path,
) -> Sensitivity:
    """Both metrics for every layer of `quantized` on the first `samples_limit` of `samples`
    (a SampleSet; its labels, if any, give accuracy). The expensive metric needs `table` (the
    calibration table the model was quantized with); without it, or with `top_k` 0, it is
    skipped.

    Raises:
        InvalidInput: the QDQ model has no quantized layer the fp32 model also has.
    """
    import onnx

    from tapeout.compilers.errors import InvalidInput

    float_model = onnx.load(str(float_path))
    qdq_model = onnx.load(str(quantized.path))
    layers, activations = quantized_layers(float_model, qdq_model)
    if not layers:
        raise InvalidInput(f"{quantized.path}: no quantized layer found to analyse")
    inputs = quantized.inputs
    count = min(samples.count, samples_limit)
    labels = samples.labels()
    labels = labels[:count] if labels is not None else None
    output_name = float_model.graph.output[0].name
    float_names = sorted(activations)
    float_session = _session(float_model, float_names)
    qdq_session = _session(qdq_model, [activations[name] for name in float_names])
    accumulators = {name: _Accumulator() for name in float_names}
    float_top1, qdq_top1 = [], []
    for feed, real in validation_batches(samples, inputs, count):
        exact = dict(zip([output_name, *float_names], float_session.run([output_name, *float_names], feed)))
        approximate_names = [output_name, *(activations[name] for name in float_names)]
        approximate = dict(zip(approximate_names, qdq_session.run(approximate_names, feed)))
        for name in float_names:
            accumulators[name].add(exact[name], approximate[activations[name]], real)
        float_top1.append(exact[output_name].reshape(exact[output_name].shape[0], -1).argmax(axis=1)[:real])
        qdq_top1.append(approximate[output_name].reshape(approximate[output_name].shape[0], -1).argmax(axis=1)[:real])
    reference, baseline = np.concatenate(float_top1), np.concatenate(qdq_top1)
    sqnr = {name: accumulators[name].sqnr_db() for name in float_names}
    channel_sqnr = {name: accumulators[name].channel_sqnr_db() for name in float_names}

    cheap = []
    for layer in layers:
        input_sqnr = min((channel_sqnr[name] for name in layer.inputs), default=None)
        output_sqnr = channel_sqnr[layer.float_tensor]
        cheap.append(
            LayerSensitivity(
                layer.node, layer.op_type, layer.float_tensor, sqnr[layer.float_tensor],
                accumulators[layer.float_tensor].cosine(), output_sqnr, input_sqnr,
                (input_sqnr if input_sqnr is not None else SQNR_CAP_DB) - output_sqnr,
            )
        )
    cheap.sort(key=lambda item: -item.sqnr_drop_db)
    baseline_agreement = float(np.mean(baseline == reference))
    baseline_accuracy = float(np.mean(baseline == labels)) if labels is not None else None
    by_node = {layer.node: layer for layer in layers}
    results = []
    for index, item in enumerate(cheap):
        if table is not None and index < top_k:
            model = keep_out(
                float_path, table, [by_node[item.node]], inputs=quantized.inputs, outputs=quantized.outputs,
                output_path=workdir / f"alone-{index}" / "model.qdq.onnx",
            )
            session = _session(onnx.load(str(model.path)), [])
            top1 = _top1(session, samples, inputs, count, output_name)
            agreement = float(np.mean(top1 == reference))
            accuracy = float(np.mean(top1 == labels)) if labels is not None else None
            item = LayerSensitivity(
                **{**asdict(item), "fp32_alone_top1_agreement": agreement, "fp32_alone_accuracy": accuracy,
                   "agreement_gain": agreement - baseline_agreement,
                   "accuracy_gain": None if accuracy is None or baseline_accuracy is None else accuracy - baseline_accuracy}
            )
        results.append(item)
    graph_inputs = {value.name for value in float_model.graph.input}
    return Sensitivity(
        float_model_sha256=hashlib.sha256(Path(float_path).read_bytes()).hexdigest(),
        quantized_model_sha256=quantized.digest,
        data_set_digest=samples.digest,
        data_name=data_name,
        samples_used=count,
        samples_available=samples.count,
        top_k=min(top_k, len(results)) if table is not None else 0,
        baseline_top1_agreement=baseline_agreement,
        baseline_accuracy=baseline_accuracy,
        fp32_accuracy=float(np.mean(reference == labels)) if labels is not None else None,
        layers=tuple(results),
        input_sqnr_db={name: sqnr[name] for name in float_names if name in graph_inputs},
    )


def layers_by_node(float_path: Path, quantized_path: Path) -> dict[str, Layer]:
    import onnx

    layers, _ = quantized_layers(onnx.load(str(float_path)), onnx.load(str(quantized_path)))
    return {layer.node: layer for layer in layers}


# -- the pipeline's stage ----------------------------------------------------------------------


def sensitivity_stage(
    float_path: Path,
    table: CalibrationTable,
    table_path: Path,
    quantized: QuantizedModel,
    validation,
    *,
    samples: int,
    top_k: int,
    cache: Path,
    progress=lambda message: None,
    label: str = "per-layer sensitivity",
) -> dict[str, object] | None:
    """The analysis as a JSON document, computed once per (quantized model, table, validation
    set, settings) and kept under `cache/<key>/sensitivity.json`. A report, not a gate: when
    the model cannot be analysed the build goes on without it (None) and says why. `progress`
    gets `label`, with "(cached)" when the document is reused."""
    from tapeout.artifacts.digest import file_digest

    key = hashlib.sha256(
        json.dumps(
            [SCHEMA, quantized.digest, file_digest(table_path), validation.digest, samples, top_k]
        ).encode()
    ).hexdigest()[:32]
    folder = cache / key
    report = folder / "sensitivity.json"
    if report.exists():
        progress(f"{label} (cached)")
        return json.loads(report.read_text())
    progress(label)
    try:
        result = analyse(
            float_path, quantized, validation, table=table, samples_limit=samples, top_k=top_k,
            workdir=folder / "work",
        )
    except Exception as error:  # noqa: BLE001 - a report must not break the build
        progress(f"sensitivity analysis skipped: {error}")
        return None
    partial = folder / f".sensitivity.{uuid.uuid4().hex}.json"
    result.write(partial)
    partial.replace(report)
    return result.to_document()
