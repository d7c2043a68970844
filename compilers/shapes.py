"""Pinning a model's symbolic input dimensions to static sizes.

Nearly every exported model has a symbolic batch (`[N, 1, 28, 28]`), while the compilers plan
memory and kernels for static shapes. `pin_input_shapes` fixes every symbolic (or non-positive)
dimension of the graph inputs from the shapes the user gave, checks the given shapes against
the dimensions the model already fixes, and propagates the sizes through the graph by ONNX
shape inference. The ONNX front end pins from the pipeline config's `model.inputs` shapes and
`tapeout compile --shape NAME=D0,D1,...` pins before any compiler runs, so every compiler sees
the same static model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tapeout.compilers.errors import InvalidInput


def pin_input_shapes(
    model: "onnx.ModelProto",  # noqa: F821
    shapes: Mapping[str, tuple[int, ...]],
    source: Path | str,
    how_to_pin: Callable[[str, tuple[int, ...]], str],
) -> "onnx.ModelProto":  # noqa: F821
    """A copy of `model` whose graph inputs have the static `shapes` (by input name).

    Inputs not named in `shapes` must already be static. Every symbolic dimension named by
    `dim_param` takes its pinned size wherever the graph uses that name (outputs and
    intermediate values too); the rest is filled in by ONNX shape inference. `source` names the
    model in errors, and `how_to_pin(input, example_shape)` says how the user pins an input
    (e.g. "--shape x=1,1,28,28"), for the error about one left symbolic.

    Raises:
        InvalidInput: `shapes` names an input the model does not have, gives a shape of the
            wrong rank or one that differs from a dimension the model fixes (names the input,
            the dimension index, expected and found), leaves a symbolic dimension unpinned
            (names it and how to pin it), or the pinned sizes do not fit the graph.
    """
    import onnx

    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = {
        value.name: list(value.type.tensor_type.shape.dim)
        for value in model.graph.input
        if value.name not in initializers
    }
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise InvalidInput(f"{source}: no input named {unknown[0]!r} to pin; the model's inputs are {sorted(inputs)}")
    sizes: dict[str, int] = {}  # dim_param -> its pinned size
    for name, dims in inputs.items():
        fixed = [_static_size(dim) for dim in dims]
        given = shapes.get(name)
        if given is None:
            if None in fixed:
                index = fixed.index(None)
                dim = dims[index]
                label = repr(dim.dim_param) if dim.dim_param else (
                    f"size {dim.dim_value}" if dim.HasField("dim_value") else "no size"
                )
                example = tuple(1 if size is None else size for size in fixed)
                raise InvalidInput(
                    f"{source}: input {name!r} dimension {index} is symbolic ({label}); "
                    f"pin it with {how_to_pin(name, example)}"
                )
            continue
        if len(given) != len(dims):
            shown = ", ".join("?" if size is None else str(size) for size in fixed)
            raise InvalidInput(
                f"{source}: input {name!r}: expected {len(dims)} dimensions [{shown}], "
                f"found {len(given)} in {list(given)}"
            )
        for index, (dim, static, pinned) in enumerate(zip(dims, fixed, given)):
            if pinned < 1:
                raise InvalidInput(f"{source}: input {name!r} dimension {index}: expected a size of at least 1, found {pinned}")
            if static is not None and static != pinned:
                raise InvalidInput(
                    f"{source}: input {name!r} dimension {index}: the model fixes it at {static}, "
                    f"found {pinned} in {list(given)}"
                )
            if static is None and dim.dim_param and sizes.setdefault(dim.dim_param, pinned) != pinned:
                raise InvalidInput(
                    f"{source}: input {name!r} dimension {index} is {dim.dim_param!r}, pinned to "
                    f"{sizes[dim.dim_param]} elsewhere, found {pinned}"
                )
    pinned_model = onnx.ModelProto()
    pinned_model.CopyFrom(model)
    graph = pinned_model.graph
    for value in graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, shapes.get(value.name, ())):
            dim.Clear()
            dim.dim_value = size
    for value in [*graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in sizes:
                size = sizes[dim.dim_param]
                dim.Clear()
                dim.dim_value = size
    try:
        return onnx.shape_inference.infer_shapes(pinned_model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise InvalidInput(f"{source}: the pinned shapes {dict(shapes)} do not fit the graph: {error}") from error


def _static_size(dim: "onnx.TensorShapeProto.Dimension") -> int | None:  # noqa: F821
    """The dimension's size, or None where it is symbolic, unknown or not positive."""
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
