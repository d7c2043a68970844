"""Find the range of every activation tensor by running the fp32 model on the calibration set.

The model runs batch by batch (`calibration.stream`); each batch's activations go to one
streaming observer per tensor (`calibration.observers`) and are dropped. Memory is one batch of
activations plus, per tensor, at most `bins` counts — independent of the number of samples.
The result is the calibration table the quantizer consumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from tapeout.calibration.dataset import SampleSet
from tapeout.calibration.observers import (
    METHODS,
    OPTIONS_BY_METHOD,
    Observer,
    ObserverOptions,
    check_options,
    make_observer,
    options_dict,
)
from tapeout.calibration.stream import open_stream
from tapeout.calibration.table import CalibrationTable
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TensorSpec

OBSERVER_VERSION = "v1"
DEFAULT_CHUNK = 256
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


def calibrate(
    model_path: Path,
    samples: SampleSet,
    *,
    method: str,
    batch_size: int,
    workdir: Path,
    options: ObserverOptions | None = None,
    symmetric: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    dynamic_batch: bool = True,
    threads: int | None = None,
) -> CalibrationTable:
    """Compute a calibration table for every float activation of the model at `model_path`.

    `method` is one of minmax, percentile, entropy, mse; `options` that method's options
    (defaults when None); `symmetric` overrides the options' symmetric flag (what the target
    asks for). `batch_size` is the model's own batch; when the batch axis can be made free
    (checked, see `calibration.stream`) the model runs `chunk_size` samples at a time.

    Raises:
        InvalidInput: the method is unknown or the options belong to another method, the set
            has fewer samples than one batch of the model, or the model cannot be read.
    """
    if method not in OPTIONS_BY_METHOD:
        raise InvalidInput(f"calibration method: expected one of {list(METHODS)}, found {method!r}")
    if options is None:
        options = OPTIONS_BY_METHOD[method]()
    if not isinstance(options, OPTIONS_BY_METHOD[method]):
        raise InvalidInput(
            f"calibration options: method {method!r} takes {OPTIONS_BY_METHOD[method].__name__}, "
            f"found {type(options).__name__}"
        )
    if symmetric is not None:
        options = replace(options, symmetric=symmetric)
    check_options(options)
    if batch_size < 1 or chunk_size < 1:
        raise InvalidInput(
            f"calibration: expected batch_size and chunk_size >= 1, found {batch_size}, {chunk_size}"
        )
    if samples.count < batch_size:
        raise InvalidInput(
            f"{samples.path}: expected at least one batch of {batch_size} samples, "
            f"found {samples.count}"
        )
    stream = open_stream(model_path, workdir, samples, dynamic_batch=dynamic_batch, threads=threads)
    observers: dict[str, Observer] = {name: make_observer(options) for name in stream.model.tensors()}

    def observe(activations: Mapping[str, np.ndarray]) -> None:
        for name, values in activations.items():
            try:
                observers[name].observe(values)
            except InvalidInput as error:
                raise InvalidInput(f"{model_path}: tensor {name!r}: {error}") from error

    used = stream.run(samples, chunk_size, observe)
    return CalibrationTable(
        ranges={name: observer.range() for name, observer in observers.items()},
        method=method,
        set_digest=samples.digest,
        sample_count=used,
        options={
            "observer": f"tapeout.{method}.{OBSERVER_VERSION}",
            **options_dict(options),
            "batch_size": stream.model.batch_size or chunk_size,
            "dynamic_batch": stream.dynamic,
        },
    )


def model_inputs(model_path: Path) -> tuple[TensorSpec, ...]:
    """The graph inputs of an ONNX file (initializers excluded); a symbolic batch counts as 1.

    Raises:
        InvalidInput: unreadable model, or a symbolic dimension other than the batch.
    """
    import onnx

    if not model_path.is_file():
        raise InvalidInput(f"{model_path}: ONNX model not found")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 — onnx raises DecodeError and friends
        raise InvalidInput(f"{model_path}: not a readable ONNX model ({error})") from error
    constants = {init.name for init in model.graph.initializer}
    specs = []
    for info in model.graph.input:
        if info.name in constants:
            continue
        tensor = info.type.tensor_type
        dims = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif axis == 0:
                dims.append(1)
            else:
                raise InvalidInput(
                    f"{model_path}: input {info.name!r}: axis {axis} is symbolic "
                    f"({dim.dim_param!r}); calibration needs static sample shapes"
                )
        specs.append(TensorSpec(info.name, tuple(dims), _ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type))))
    return tuple(specs)
