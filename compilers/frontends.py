"""Model front ends: turn the configured model source into one checked fp32 ONNX file.

Two sources: a PyTorch factory plus a state dict (exported with torch.onnx's dynamo exporter,
single file, no external data), or an ONNX file as given. Both pass through the same checks:
`onnx.checker` (full), strict shape inference, and the input/output names and shapes the
pipeline declares.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TensorSpec

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


@dataclass(frozen=True)
class PyTorchSource:
    """`factory` is "FILE.py:FUNCTION" returning an nn.Module; `weights` a state dict file."""

    factory_file: Path
    factory_name: str
    weights: Path


@dataclass(frozen=True)
class OnnxSource:
    path: Path


@dataclass(frozen=True)
class ExportedModel:
    """The fp32 ONNX model every later stage starts from."""

    path: Path
    digest: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def export_model(
    source: PyTorchSource | OnnxSource,
    inputs: tuple[TensorSpec, ...],
    output_names: tuple[str, ...],
    output_path: Path,
) -> ExportedModel:
    """Write the checked fp32 model to `output_path`.

    Raises:
        InvalidInput: a source file is missing or not what it claims to be, the factory
            cannot be imported, the weights do not fit the module, or the model's inputs or
            outputs differ from the declared ones.
    """
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, PyTorchSource):
        _export_pytorch(source, inputs, output_names, output_path)
        return check_model(output_path, inputs, output_names)
    if not source.path.is_file():
        raise InvalidInput(f"{source.path}: ONNX model not found")
    # Check the user's file first, so that errors name it rather than our copy.
    check_model(source.path, inputs, output_names)
    output_path.write_bytes(source.path.read_bytes())
    return check_model(output_path, inputs, output_names)


def check_model(
    path: Path, inputs: tuple[TensorSpec, ...] | None = None, output_names: tuple[str, ...] = ()
) -> ExportedModel:
    """Check an ONNX file and its interface; returns it described.

    `inputs` None accepts the graph's inputs as found; `output_names` empty, its outputs.

    Raises:
        InvalidInput: not an ONNX model, checker or shape inference fails, or the graph's
            inputs/outputs differ from the declared ones (names, shapes, dtypes).
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as error:
        raise InvalidInput(f"{path}: not an ONNX model ({error})") from error
    if any(
        tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer
    ):
        raise InvalidInput(f"{path}: expected a single-file model, found external data")
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise InvalidInput(f"{path}: ONNX checker failed: {error}") from error
    initializers = {tensor.name for tensor in model.graph.initializer}
    graph_inputs = tuple(
        _spec(value) for value in model.graph.input if value.name not in initializers
    )
    found = {spec.name: spec for spec in graph_inputs}
    declared = {spec.name: spec for spec in inputs} if inputs is not None else dict(found)
    if set(declared) != set(found):
        raise InvalidInput(
            f"{path}: model inputs: expected {sorted(declared)}, found {sorted(found)}"
        )
    for name, spec in declared.items():
        if found[name].shape != spec.shape or found[name].dtype != spec.dtype:
            raise InvalidInput(
                f"{path}: input {name!r}: expected {spec.dtype}{list(spec.shape)}, "
                f"found {found[name].dtype}{list(found[name].shape)}"
            )
    graph_outputs = tuple(_spec(value) for value in model.graph.output)
    if output_names and tuple(spec.name for spec in graph_outputs) != tuple(output_names):
        raise InvalidInput(
            f"{path}: model outputs: expected {list(output_names)}, "
            f"found {[spec.name for spec in graph_outputs]}"
        )
    opset = next(
        (entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0
    )
    return ExportedModel(
        path=path,
        digest=hashlib.sha256(path.read_bytes()).hexdigest(),
        opset=opset,
        inputs=tuple(declared[spec.name] for spec in graph_inputs),
        outputs=graph_outputs,
    )


def _spec(value: "onnx.ValueInfoProto") -> TensorSpec:  # noqa: F821
    tensor_type = value.type.tensor_type
    shape = tuple(
        dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
    )
    return TensorSpec(value.name, shape, _ONNX_DTYPES.get(tensor_type.elem_type, "unknown"))


def _export_pytorch(
    source: PyTorchSource,
    inputs: tuple[TensorSpec, ...],
    output_names: tuple[str, ...],
    output_path: Path,
) -> None:
    try:
        import torch
    except ImportError as error:
        raise InvalidInput(
            "a PyTorch model source needs the torch extra: pip install 'tapeout[torch]'"
        ) from error
    module = _build_module(source)
    if not source.weights.is_file():
        raise InvalidInput(f"{source.weights}: weights file not found")
    try:
        # weights_only: a state dict is tensors; never unpickle arbitrary objects.
        state = torch.load(source.weights, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise InvalidInput(
            f"{source.weights}: not a loadable state dict ({type(error).__name__}: {error})"
        ) from error
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise InvalidInput(
            f"{source.weights}: does not fit {source.factory_name}() from "
            f"{source.factory_file.name}: {error}"
        ) from error
    module.eval()
    example = tuple(
        torch.zeros(spec.shape, dtype=getattr(torch, spec.dtype)) for spec in inputs
    )
    # The exporter reports progress on stdout (keep stdout for the command's own output) and
    # warns about torchvision ops and its own deprecations, which say nothing about this model.
    exporter_log = logging.getLogger("torch.onnx")
    previous = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            module,
            example,
            str(output_path),
            input_names=[spec.name for spec in inputs],
            output_names=list(output_names) or None,
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    exporter_log.setLevel(previous)


def _build_module(source: PyTorchSource) -> "torch.nn.Module":  # noqa: F821
    import torch

    if not source.factory_file.is_file():
        raise InvalidInput(f"{source.factory_file}: model factory file not found")
    module_name = f"tapeout_model_factory_{hashlib.sha256(str(source.factory_file).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, source.factory_file)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    factory_module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(factory_module)
    except Exception as error:
        raise InvalidInput(
            f"{source.factory_file}: importing the model factory failed "
            f"({type(error).__name__}: {error})"
        ) from error
    factory = getattr(factory_module, source.factory_name, None)
    if not callable(factory):
        raise InvalidInput(
            f"{source.factory_file}: expected a function {source.factory_name!r}, found none"
        )
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise InvalidInput(
            f"{source.factory_file}: {source.factory_name}() must return a torch.nn.Module, "
            f"found {type(module).__name__}"
        )
    return module
