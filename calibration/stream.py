"""Run the fp32 model over a sample set and hand every float activation to a callback, batch by batch.

One augmented copy of the model (written into the caller's work directory) has every float
activation as a graph output; `ActivationModel.outputs` maps each tensor name to its output
index explicitly. Each batch's outputs go to the callback and are dropped, so memory is one
batch of activations, whatever the number of samples.

A model exported with a fixed batch (the example's `image` is [1, 1, 16, 16]) is run faster
with a larger one: the augmented copy makes the batch axis symbolic and lets Reshape carry the
batch dimension through. That rewrite is only used after it was checked on real
samples to give the same activations as the original model, sample by sample; otherwise the
model runs in chunks of its own batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tapeout.calibration.dataset import SampleSet
from tapeout.compilers.errors import InvalidInput

FLOAT_TYPES = {1: "float32", 10: "float16"}  # onnx.TensorProto.FLOAT, FLOAT16
BATCH_SYMBOL = "tapeout_batch"
CHECK_SAMPLES = 4  # samples compared between the dynamic-batch copy and the original model
CHECK_RTOL, CHECK_ATOL = 1e-5, 1e-6


@dataclass(frozen=True)
class ActivationModel:
    """An augmented model and how to read it.

    `outputs`: tensor name → index in the session's outputs (never parsed from names).
    `from_inputs`: observed tensors that are graph inputs, read from the feed instead.
    `batch_size`: samples per run; None when the batch axis is free.
    """

    path: Path
    outputs: Mapping[str, int]
    from_inputs: tuple[str, ...]
    input_names: tuple[str, ...]
    batch_size: int | None

    def tensors(self) -> tuple[str, ...]:
        return tuple(sorted((*self.outputs, *self.from_inputs)))


def float_activations(model) -> tuple[list[str], dict[str, int]]:
    """Names of the float tensors that nodes read or write, initializers excluded, in graph order
    (as ONNX Runtime's `select_tensors_to_calibrate` finds them), and every tensor's elem type."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        info.name: info.type.tensor_type.elem_type
        for info in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
        if info.type.HasField("tensor_type")
    }
    constants = {init.name for init in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            if name and name not in constants and types.get(name) in FLOAT_TYPES and name not in names:
                names.append(name)
    return names, types


def build_activation_model(model_path: Path, workdir: Path, *, dynamic_batch: bool) -> ActivationModel:
    """Write `workdir/activations.onnx` (or `activations.fixed.onnx`) and describe it.

    Raises:
        InvalidInput: the model cannot be read, or it has no float activation to observe.
    """
    import onnx

    try:
        model = onnx.load(str(model_path))
    except Exception as error:  # onnx raises DecodeError, OSError, ...
        raise InvalidInput(f"{model_path}: not a readable ONNX model ({error})") from error
    observed, elem_types = float_activations(model)
    if not observed:
        raise InvalidInput(f"{model_path}: no float activation to calibrate")
    constants = {init.name for init in model.graph.initializer}
    graph_inputs = [info.name for info in model.graph.input if info.name not in constants]
    batch = _fixed_batch(model, graph_inputs)
    if dynamic_batch:
        _make_batch_symbolic(model, graph_inputs, batch)
    outputs: dict[str, int] = {info.name: index for index, info in enumerate(model.graph.output)}
    if dynamic_batch:
        del model.graph.value_info[:]  # recorded shapes hold the old fixed batch
        for info in model.graph.output:
            info.type.tensor_type.ClearField("shape")
    for name in observed:
        if name in graph_inputs or name in outputs:
            continue
        outputs[name] = len(model.graph.output)
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_types[name], None))
    observed_set = set(observed)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ("activations.onnx" if dynamic_batch else "activations.fixed.onnx")
    onnx.save(model, str(path))
    return ActivationModel(
        path=path,
        outputs={name: index for name, index in outputs.items() if name in observed_set},
        from_inputs=tuple(name for name in graph_inputs if name in observed_set),
        input_names=tuple(graph_inputs),
        batch_size=None if dynamic_batch else batch,
    )


def _fixed_batch(model, graph_inputs: list[str]) -> int | None:
    """The fixed first dimension shared by every graph input, or None when it is symbolic.

    Raises:
        InvalidInput: the inputs disagree (the first axis of every input is the sample axis).
    """
    batches: dict[str, int | None] = {}
    for info in model.graph.input:
        if info.name in graph_inputs:
            dims = info.type.tensor_type.shape.dim
            batches[info.name] = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    if len(set(batches.values())) > 1:
        raise InvalidInput(
            f"model inputs disagree on the batch axis (axis 0): {batches}; calibration feeds "
            "samples along axis 0 of every input"
        )
    return next(iter(batches.values()), None)


def _make_batch_symbolic(model, graph_inputs: list[str], batch: int | None) -> None:
    """Batch axis of inputs → a symbol; a Reshape target that fixes it → -1 (or 0, "copy")."""
    from onnx import numpy_helper

    for info in model.graph.input:
        if info.name in graph_inputs and info.type.tensor_type.shape.dim:
            dim = info.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = BATCH_SYMBOL
    if batch is None:
        return
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        allow_zero = any(attr.name == "allowzero" and attr.i == 1 for attr in node.attribute)
        shape = numpy_helper.to_array(initializers[node.input[1]]).copy()
        if shape.ndim == 1 and shape.size and shape[0] == batch:
            if -1 not in shape:
                shape[0] = -1  # inferred from the other (fixed) dimensions
            elif not allow_zero:
                shape[0] = 0  # copied from the input's first dimension
            else:
                continue
            # A copy, in case the same constant feeds other nodes.
            name = f"{node.input[1]}__tapeout_batch"
            if name not in initializers:
                initializers[name] = numpy_helper.from_array(shape, name)
                model.graph.initializer.append(initializers[name])
            node.input[1] = name


def _session(path: Path, threads: int | None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class ActivationStream:
    """A loaded augmented model; `run` streams a sample set through it."""

    model: ActivationModel
    session: object
    dynamic: bool

    def run(
        self,
        samples: SampleSet,
        chunk_size: int,
        callback: Callable[[Mapping[str, np.ndarray]], None],
    ) -> int:
        """Feed every sample; returns how many were used (a fixed batch > 1 drops a short tail)."""
        model = self.model
        step = chunk_size if model.batch_size is None else model.batch_size
        names = list(model.outputs)
        output_names = [info.name for info in self.session.get_outputs()]
        wanted = [output_names[model.outputs[name]] for name in names]
        used = 0
        for batch in _rebatch(samples, step, exact=model.batch_size is not None):
            activations = dict(zip(names, self.session.run(wanted, batch)))
            for name in model.from_inputs:
                activations[name] = batch[name]
            callback(activations)
            used += next(iter(batch.values())).shape[0]
        return used


def open_stream(
    model_path: Path,
    workdir: Path,
    samples: SampleSet,
    *,
    dynamic_batch: bool = True,
    threads: int | None = None,
) -> ActivationStream:
    """Build the augmented model; use the dynamic-batch copy only if it reproduces the
    original model on the set's first samples (compared tensor by tensor).

    Raises:
        InvalidInput: the model cannot be read or has nothing to observe.
    """
    fixed = build_activation_model(model_path, workdir, dynamic_batch=False)
    if not dynamic_batch:
        return ActivationStream(fixed, _session(fixed.path, threads), False)
    candidate = build_activation_model(model_path, workdir, dynamic_batch=True)
    if fixed.batch_size is None:  # the batch axis is already free
        return ActivationStream(candidate, _session(candidate.path, threads), True)
    batch = fixed.batch_size
    probe = next(samples.batches(CHECK_SAMPLES * batch))
    count = next(iter(probe.values())).shape[0] // batch * batch
    fixed_session = _session(fixed.path, threads)
    if count >= 2 * batch:
        try:
            dynamic_session = _session(candidate.path, threads)
            feed = {name: np.ascontiguousarray(array[:count]) for name, array in probe.items()}
            together = dynamic_session.run(None, feed)
            alone = [
                fixed_session.run(None, {name: array[s : s + batch] for name, array in feed.items()})
                for s in range(0, count, batch)
            ]
            if _same(candidate, fixed, together, alone):
                return ActivationStream(candidate, dynamic_session, True)
        except Exception:  # noqa: BLE001 — the rewrite does not fit this model: run it as exported
            pass
    return ActivationStream(fixed, fixed_session, False)


def _rebatch(samples: SampleSet, step: int, *, exact: bool) -> Iterator[dict[str, np.ndarray]]:
    for batch in samples.batches(step):
        if exact and next(iter(batch.values())).shape[0] != step:
            continue
        yield {name: np.ascontiguousarray(array) for name, array in batch.items()}


def _same(candidate: ActivationModel, fixed: ActivationModel, together, alone) -> bool:
    for name, index in candidate.outputs.items():
        if name not in fixed.outputs:
            return False
        expected = np.concatenate([run[fixed.outputs[name]] for run in alone])
        got = together[index]
        if got.shape != expected.shape or not np.allclose(got, expected, CHECK_RTOL, CHECK_ATOL):
            return False
    return True
