"""Model front ends: turn the configured model source into one checked fp32 ONNX file.

Front ends are plugins, found through the `tapeout.frontends` entry-point group and checked
when loaded, like compilers. Three ship with tapeout: `pytorch` (a factory plus a state dict,
exported with torch.onnx's dynamo exporter, single file, no external data), `onnx` (a file as
given, its symbolic input dimensions pinned to the declared shapes) and `sklearn` (a factory returning a fitted scikit-learn estimator, exported by
skl2onnx). Every export passes through the same checks: `onnx.checker` (full), strict shape
inference, and the input/output names and shapes the pipeline declares.

A front end is a class with `name`, `source_type` (the frozen dataclass it exports from),
`material(source)` (what the export depends on: file digests and tool versions, for the
stage's cache key) and `export(source, inputs, output_names, output_path)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, runtime_checkable

from tapeout.compilers.errors import InvalidInput, PluginError, TapeoutError
from tapeout.compilers.interface import TensorSpec
from tapeout.compilers.versions import package_versions

ENTRY_POINT_GROUP = "tapeout.frontends"

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
class SklearnSource:
    """`factory` is "FILE.py:FUNCTION" returning a fitted scikit-learn estimator (or Pipeline).

    A factory rather than a pickle: the estimator is rebuilt from code under review, and
    nothing is unpickled."""

    factory_file: Path
    factory_name: str


@dataclass(frozen=True)
class ExportedModel:
    """The fp32 ONNX model every later stage starts from."""

    path: Path
    digest: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def export_model(
    source: object,
    inputs: tuple[TensorSpec, ...],
    output_names: tuple[str, ...],
    output_path: Path,
) -> ExportedModel:
    """Write the checked fp32 model to `output_path`, with the front end registered for the
    source's type.

    Raises:
        InvalidInput: no front end handles the source, a source file is missing or not what
            it claims to be, the factory cannot be imported, the weights do not fit the
            module, or the model's inputs or outputs differ from the declared ones.
        PluginError: the front end plugin is broken.
    """
    output_path.parent.mkdir(parents=True, exist_ok=True)
    frontend_for(source).export(source, inputs, output_names, output_path)
    return check_model(output_path, inputs, output_names)


def imported_model_file(source: object) -> Path | None:
    """The file a source's model is imported from, which its maker may have signed (a
    model-signing signature beside it, checked at export: tapeout.artifacts.imports): the
    ONNX file, or the PyTorch weights; None for a model built by code alone (a scikit-learn
    factory) and for sources of other front ends."""
    if isinstance(source, OnnxSource):
        return source.path
    if isinstance(source, PyTorchSource):
        return source.weights
    return None


class FrontEndError(PluginError):
    """A front end plugin could not be loaded or does not implement the interface."""

    def __init__(self, plugin: str, problem: str) -> None:
        self.plugin, self.problem = plugin, problem
        TapeoutError.__init__(self, f"front end plugin {plugin!r}: {problem}")


@runtime_checkable
class FrontEnd(Protocol):
    """A front end plugin, found through the `tapeout.frontends` entry point."""

    name: str
    source_type: type

    def material(self, source: object) -> dict[str, object]: ...

    def export(
        self, source: object, inputs: tuple[TensorSpec, ...], output_names: tuple[str, ...], output_path: Path
    ) -> None: ...


def load_frontends() -> dict[str, FrontEnd]:
    """Every registered front end, loaded and checked.

    Raises:
        FrontEndError: a front end fails to import or to instantiate, or lacks part of the
            interface (the message names it and what is wrong).
    """
    found: dict[str, FrontEnd] = {}
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            plugin_class = entry.load()
        except Exception as error:  # any import-time failure of third-party code
            raise FrontEndError(entry.name, f"cannot import {entry.value} ({type(error).__name__}: {error})") from error
        if not inspect.isclass(plugin_class):
            raise FrontEndError(entry.name, f"{entry.value} must be a class")
        try:
            frontend = plugin_class()
        except Exception as error:
            raise FrontEndError(entry.name, f"{entry.value}() failed ({type(error).__name__}: {error})") from error
        missing = [m for m in ("material", "export") if not callable(getattr(frontend, m, None))]
        if missing:
            raise FrontEndError(entry.name, f"{entry.value} lacks method(s) {missing}")
        if getattr(frontend, "name", None) != entry.name:
            raise FrontEndError(entry.name, f"registered as {entry.name!r} but calls itself {getattr(frontend, 'name', None)!r}")
        if not inspect.isclass(getattr(frontend, "source_type", None)):
            raise FrontEndError(entry.name, f"{entry.value}.source_type must be a class")
        found[entry.name] = frontend
    return found


def frontend_for(source: object) -> FrontEnd:
    """The registered front end whose `source_type` the source is.

    Raises:
        InvalidInput: none is (names the source type and the registered front ends).
    """
    frontends = load_frontends()
    for frontend in frontends.values():
        if isinstance(source, frontend.source_type):
            return frontend
    raise InvalidInput(
        f"no front end handles a {type(source).__name__} source; registered front ends "
        f"({ENTRY_POINT_GROUP}): {sorted(frontends)}"
    )


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


class OnnxFrontEnd:
    """Front end `onnx`: an ONNX file as given, checked before it is copied; symbolic input
    dimensions (a dynamic batch) are pinned to the declared input shapes."""

    name = "onnx"
    source_type = OnnxSource

    def material(self, source: OnnxSource) -> dict[str, object]:
        material: dict[str, object] = {"onnx": _file_digest(source.path), "tools": package_versions("onnx")}
        try:
            weights = external_data_files(source.path)
        except InvalidInput:
            weights = ()  # the export names the problem
        if weights:
            material["external_data"] = {path.name: _file_digest(path) for path in weights}
        return material

    def export(
        self, source: OnnxSource, inputs: tuple[TensorSpec, ...], output_names: tuple[str, ...], output_path: Path
    ) -> None:
        if not source.path.is_file():
            raise InvalidInput(f"{source.path}: ONNX model not found")
        # Check the user's file first, so that errors name it rather than our copy.
        found = check_model(source.path, output_names=output_names)
        static = all(size > 0 for spec in found.inputs for size in spec.shape)
        if static:
            check_model(source.path, inputs, output_names)
        if static and not external_data_files(source.path):
            output_path.write_bytes(source.path.read_bytes())
            return
        import onnx

        model = read_onnx_model(source.path)
        if static:  # weights in files beside the model: the copy holds them itself
            onnx.save(model, str(output_path))
            return
        # A symbolic dimension (a dynamic batch, mostly) takes the size the config declares.
        from tapeout.compilers.shapes import pin_input_shapes

        pinned = pin_input_shapes(
            model,
            {spec.name: spec.shape for spec in inputs},
            source.path,
            lambda name, shape: f"model.inputs: {{name: {name}, shape: {list(shape)}}}",
        )
        onnx.save(pinned, str(output_path))


class PyTorchFrontEnd:
    """Front end `pytorch`: a module factory plus a state dict, through torch.onnx (dynamo)."""

    name = "pytorch"
    source_type = PyTorchSource

    def material(self, source: PyTorchSource) -> dict[str, object]:
        return {
            "factory": _file_digest(source.factory_file),
            "factory_name": source.factory_name,
            "weights": _file_digest(source.weights),
            "tools": package_versions("torch", "onnxscript", "onnx"),
        }

    def export(
        self, source: PyTorchSource, inputs: tuple[TensorSpec, ...], output_names: tuple[str, ...], output_path: Path
    ) -> None:
        _export_pytorch(source, inputs, output_names, output_path)


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

    model = read_onnx_model(path)
    digest = _model_digest(path, model)
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
        digest=digest,
        opset=opset,
        inputs=tuple(declared[spec.name] for spec in graph_inputs),
        outputs=graph_outputs,
    )


def pinned_model(
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    scratch: Path,
    how_to_pin: Callable[[str, tuple[int, ...]], str],
) -> ExportedModel:
    """The model a compiler gets, checked: `path` itself when its inputs are static, else a
    copy in `scratch` with the symbolic dimensions pinned to `shapes` (by input name).
    `how_to_pin` says how the user pins an input (tapeout.compilers.shapes).

    Raises:
        InvalidInput: the model is not valid ONNX, or `pin_input_shapes` refuses the shapes (a
            symbolic dimension left unpinned is named with `how_to_pin`).
    """
    import onnx

    from tapeout.compilers.shapes import pin_input_shapes

    described = check_model(path.resolve())
    static = all(size > 0 for spec in described.inputs for size in spec.shape)
    if static and not shapes:
        return described
    pinned = pin_input_shapes(onnx.load(str(path), load_external_data=False), shapes, path, how_to_pin)
    if static:  # the shapes given are the model's own (pin_input_shapes checked them)
        return described
    onnx.save(pinned, str(scratch / path.name))
    return check_model(scratch / path.name)


# The protobuf limit of one serialised ModelProto: a model whose weights need more cannot be
# written as one file (onnx.checker's own limit, onnx/checker.py MAXIMUM_PROTOBUF).
MAXIMUM_SINGLE_FILE_BYTES = 2**31


def read_onnx_model(path: Path) -> "onnx.ModelProto":  # noqa: F821
    """An ONNX file with its weights: those in the file, and those PyTorch's exporter (and
    onnx.save with `save_as_external_data`) writes to files beside it.

    Raises:
        InvalidInput: not an ONNX model, or an external weights file that is missing, lies
            outside the model's folder, or is shorter than the tensor says (names the tensor
            and the file); a model too large for one file.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as error:
        raise InvalidInput(f"{path}: not an ONNX model ({error})") from error
    if not external_data_files(path, model):
        return model
    if sum(file.stat().st_size for file in external_data_files(path, model)) >= MAXIMUM_SINGLE_FILE_BYTES:
        raise InvalidInput(f"{path}: weights of 2 GiB or more cannot be compiled as one model file")
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{path}: external weights could not be read: {error}") from error
    for tensor in _external_tensors(model):
        raise InvalidInput(f"{path}: tensor {tensor.name!r}: external weights were not loaded")
    return model


def external_data_files(path: Path, model: "onnx.ModelProto | None" = None) -> tuple[Path, ...]:  # noqa: F821
    """The files beside `path` that hold its external weights, checked to exist inside the
    model's folder (a location such as `../../etc/passwd` or an absolute path is refused).

    Raises:
        InvalidInput: a location outside the folder, or a file that does not exist.
    """
    import onnx

    if model is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - not a model: read_onnx_model names the problem
            return ()
    folder = path.resolve().parent
    files: dict[Path, None] = {}
    for tensor in _external_tensors(model):
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        resolved = (folder / location).resolve()
        if not location or Path(location).is_absolute() or folder not in resolved.parents:
            raise InvalidInput(
                f"{path}: tensor {tensor.name!r}: external weights must lie in the model's folder, "
                f"found location {location!r}"
            )
        if not resolved.is_file():
            raise InvalidInput(f"{path}: tensor {tensor.name!r}: external weights file {location!r} not found")
        files[resolved] = None
    return tuple(files)


def _external_tensors(model: "onnx.ModelProto"):  # noqa: F821
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    return [
        tensor for tensor in _get_all_tensors(model)
        if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL
    ]


def _model_digest(path: Path, loaded: "onnx.ModelProto") -> str:  # noqa: F821
    """The file's sha256; with external weights, that of the model `loaded` with them in."""
    if not external_data_files(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(loaded.SerializeToString(deterministic=True)).hexdigest()


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
    _drop_machine_paths(output_path)


# The dynamo exporter records, on every node, the Python stack that made it
# (torch/onnx/_internal/exporter/_core.py, `_set_node_metadata`): the factory module's and
# torch's own files by absolute path. The model would then depend on where it was checked out
# and where torch is installed, and two builds of one commit in two folders would differ.
_MACHINE_PATH_METADATA = "pkg.torch.onnx.stack_trace"


def _drop_machine_paths(path: Path) -> None:
    """Remove the exporter's per-node stack traces (every graph, subgraph and function)."""
    import onnx

    model = onnx.load(str(path))
    graphs = [model.graph, *(function for function in model.functions)]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            kept = [entry for entry in node.metadata_props if entry.key != _MACHINE_PATH_METADATA]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    onnx.save(model, str(path))


def _build_module(source: PyTorchSource) -> "torch.nn.Module":  # noqa: F821
    import torch

    module = _call_factory(source.factory_file, source.factory_name)
    if not isinstance(module, torch.nn.Module):
        raise InvalidInput(
            f"{source.factory_file}: {source.factory_name}() must return a torch.nn.Module, "
            f"found {type(module).__name__}"
        )
    return module


def _call_factory(factory_file: Path, factory_name: str) -> object:
    """Import `factory_file` as a module of its own and call `factory_name()`.

    Raises:
        InvalidInput: the file is missing, fails to import, or has no such function.
    """
    if not factory_file.is_file():
        raise InvalidInput(f"{factory_file}: model factory file not found")
    # Named by its content, not its path: the exporter records the module's name in the model
    # (each node's class hierarchy), which must not depend on where the file was checked out.
    module_name = f"tapeout_model_factory_{_file_digest(factory_file)[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, factory_file)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    factory_module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(factory_module)
    except Exception as error:
        raise InvalidInput(
            f"{factory_file}: importing the model factory failed "
            f"({type(error).__name__}: {error})"
        ) from error
    factory = getattr(factory_module, factory_name, None)
    if not callable(factory):
        raise InvalidInput(
            f"{factory_file}: expected a function {factory_name!r}, found none"
        )
    return factory()


class SklearnFrontEnd:
    """Front end `sklearn`: a fitted scikit-learn estimator, exported by skl2onnx.

    The graph gets the declared input (one float32 tensor, fixed batch: [B, features]) and
    keeps only the declared outputs; with none declared, a classifier keeps `probabilities`
    (the scores the gates take the top-1 of), anything else all its outputs. Classifiers are
    exported without ZipMap, so probabilities are a plain tensor. Nodes and initializers the
    kept outputs do not need are dropped, so a classifier's label branch (ArgMax,
    ArrayFeatureExtractor) does not reach the quantizer or the compilers.
    """

    name = "sklearn"
    source_type = SklearnSource
    TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

    def material(self, source: SklearnSource) -> dict[str, object]:
        return {
            "factory": _file_digest(source.factory_file),
            "factory_name": source.factory_name,
            "tools": package_versions("scikit-learn", "skl2onnx", "onnx"),
        }

    def export(
        self, source: SklearnSource, inputs: tuple[TensorSpec, ...], output_names: tuple[str, ...], output_path: Path
    ) -> None:
        try:
            import onnx
            from skl2onnx import to_onnx
            from skl2onnx.common.data_types import FloatTensorType
            from sklearn.base import is_classifier
        except ImportError as error:
            raise InvalidInput(
                "a scikit-learn model source needs the sklearn extra: pip install 'tapeout[sklearn]'"
            ) from error
        if len(inputs) != 1 or inputs[0].dtype != "float32" or len(inputs[0].shape) != 2:
            raise InvalidInput(
                "a scikit-learn model takes one float32 input of shape [batch, features], found "
                f"{[f'{spec.name}: {spec.dtype}{list(spec.shape)}' for spec in inputs]}"
            )
        estimator = _call_factory(source.factory_file, source.factory_name)
        if not hasattr(estimator, "predict"):
            raise InvalidInput(
                f"{source.factory_file}: {source.factory_name}() must return a fitted scikit-learn "
                f"estimator, found {type(estimator).__name__}"
            )
        final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
        options = {id(final): {"zipmap": False}} if is_classifier(final) else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = to_onnx(
                    estimator,
                    initial_types=[(inputs[0].name, FloatTensorType(list(inputs[0].shape)))],
                    target_opset=self.TARGET_OPSET,
                    options=options,
                )
            except Exception as error:  # skl2onnx raises RuntimeError, NotImplementedError, ...
                raise InvalidInput(
                    f"{source.factory_file}: skl2onnx cannot export {type(estimator).__name__} "
                    f"({type(error).__name__}: {error})"
                ) from error
        available = [output.name for output in model.graph.output]
        wanted = list(output_names)
        if not wanted:
            wanted = ["probabilities"] if is_classifier(final) and "probabilities" in available else available
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise InvalidInput(
                f"{source.factory_file}: {type(estimator).__name__} outputs: expected {wanted}, "
                f"skl2onnx produces {available}"
            )
        _keep_outputs(model, wanted)
        _drop_noop_casts(model)
        model.producer_name, model.producer_version = "tapeout-sklearn", package_versions("skl2onnx")["skl2onnx"]
        onnx.save(model, str(output_path))


def _drop_noop_casts(model: "onnx.ModelProto") -> None:  # noqa: F821
    """Remove Casts to the type their input already has (skl2onnx starts MLPs with a
    float -> float Cast), rewiring their readers to the Cast's input. Integer-only compilers
    have no Cast, and it does nothing here."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    types.update({tensor.name: tensor.data_type for tensor in model.graph.initializer})
    outputs = {output.name for output in model.graph.output}
    replaced: dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = replaced.get(name, name)
        target = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
        if (
            target is not None and node.domain in ("", "ai.onnx") and types.get(node.input[0]) == target
            and node.output[0] not in outputs
        ):
            replaced[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    if replaced:
        copies = []
        for node in kept:
            copy = type(node)()
            copy.CopyFrom(node)
            copies.append(copy)
        del model.graph.node[:]
        model.graph.node.extend(copies)


def _keep_outputs(model: "onnx.ModelProto", wanted: list[str]) -> None:  # noqa: F821
    """Keep only `wanted` graph outputs (in that order) and what they depend on."""
    graph = model.graph
    by_name = {output.name: output for output in graph.output}
    kept_outputs = [by_name[name] for name in wanted]
    needed = set(wanted)
    kept_nodes = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept_nodes.append(node)
            needed.update(name for name in node.input if name)
    kept_nodes.reverse()
    kept_initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    domains = {node.domain for node in kept_nodes}
    kept_opsets = [entry for entry in model.opset_import if entry.domain in ("", "ai.onnx") or entry.domain in domains]
    for field, values in (
        (graph.output, kept_outputs), (graph.node, kept_nodes), (graph.initializer, kept_initializers),
        (model.opset_import, kept_opsets),
    ):
        copies = [type(value)() for value in values]
        for copy, value in zip(copies, values):
            copy.CopyFrom(value)
        del field[:]
        field.extend(copies)
    kept_values = [value for value in graph.value_info if value.name in needed]
    copies = []
    for value in kept_values:
        copy = type(value)()
        copy.CopyFrom(value)
        copies.append(copy)
    del graph.value_info[:]
    graph.value_info.extend(copies)
