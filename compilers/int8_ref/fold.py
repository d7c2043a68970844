"""Compile-time graph preparation, before the compatibility checks and the lowering, so that
nothing but data ops reaches the firmware:

1. **Shape subgraphs are folded.** Exporters write a dynamic batch or a `view(x.size(0), -1)`
   as Shape -> Gather -> Unsqueeze -> Concat -> Reshape (with Cast, ConstantOfShape, Div,
   Slice ... on the way). With the input shapes pinned, every Shape / Size of a tensor is a
   constant (ONNX shape inference), and every node whose inputs are all constants is
   evaluated once with ONNX's reference implementation (onnx.reference) and replaced by an
   initializer. QuantizeLinear / DequantizeLinear are never folded: a DequantizeLinear of an
   initializer is how a weight is recognised.
2. **A QuantizeLinear after a chain of data-movement ops is moved before it.** ONNX Runtime's
   quantizer can leave a float op's output unquantized through Reshape / Gather / Transpose
   ... up to a QuantizeLinear (ConvNeXt's head: ReduceMean -> Reshape -> Gather -> Transpose
   -> QuantizeLinear). Quantization is elementwise and these ops only move elements, so
   Q(move(f)) = move(Q(f)) exactly: a QuantizeLinear / DequantizeLinear pair with the same
   parameters is inserted right after the float op, which then has its quantized output.

Identity nodes are bypassed first (`_bypass_identities`). `prepare(model, input_shapes)` returns the model itself when there is nothing to do (so an
unchanged graph compiles to the same image byte for byte), else a rewritten copy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

NEVER_FOLDED = frozenset({"QuantizeLinear", "DequantizeLinear", "Constant"})
SHAPE_OPS = frozenset({"Shape", "Size"})
# Ops whose output elements are input elements (data input 0), moved or selected.
DATA_MOVEMENT = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                           "Gather", "Slice", "Identity", "Expand"})
MAX_PASSES = 16  # folding exposes new static shapes; real graphs settle in two or three


def prepare(model: onnx.ModelProto, input_shapes) -> onnx.ModelProto:
    """`model` with its shape subgraphs folded and QuantizeLinear moved before data movement
    (module docstring); the same object when neither applies."""
    out = _bypass_identities(model) or model
    for _ in range(MAX_PASSES):
        folded = _fold_once(out, input_shapes)
        if folded is None:
            break
        out = folded
    moved = _quantize_before_movement(out)
    return moved if moved is not None else out


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _static_shapes(model: onnx.ModelProto, input_shapes) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape that ONNX shape inference finds fully static, with the graph
    inputs pinned to `input_shapes` (a symbolic dimension without one counts as 1, as the
    compatibility report takes it)."""
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    inits = {i.name for i in pinned.graph.initializer}
    for vi in pinned.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        want = input_shapes.get(vi.name) or [d.dim_value if d.dim_value > 0 else 1 for d in dims]
        for d, v in zip(dims, want):
            d.Clear()
            d.dim_value = int(v)
    try:
        inferred = onnx.shape_inference.infer_shapes(pinned, data_prop=True)
    except Exception:  # noqa: BLE001 - no inference: nothing folds, lowering names the node
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + \
            list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    return shapes


def _shape_value(node, shape) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), np.int64)
    start = end = None
    for a in node.attribute:
        if a.name == "start":
            start = a.i
        if a.name == "end":
            end = a.i
    return np.array(shape[start:end], np.int64)


def _evaluate(model: onnx.ModelProto, node, values: list[np.ndarray]) -> list[np.ndarray] | None:
    """The outputs of `node` on constant inputs by ONNX's reference implementation, or None
    when it has none for this node."""
    from onnx.reference import ReferenceEvaluator

    names = [x for x in node.input if x]
    inputs = [helper.make_tensor_value_info(x, helper.np_dtype_to_tensor_dtype(v.dtype),
                                            v.shape) for x, v in zip(names, values)]
    outputs = [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    try:
        ref = ReferenceEvaluator(helper.make_model(graph, opset_imports=model.opset_import))
        return [np.asarray(v) for v in ref.run(None, dict(zip(names, values)))]
    except Exception:  # noqa: BLE001 - not foldable here: the lowering names the node
        return None


def _fold_once(model: onnx.ModelProto, input_shapes) -> onnx.ModelProto | None:
    """One folding pass; None when nothing folds."""
    g = model.graph
    known = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:  # Constant nodes: their values are known (lowering keeps them)
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            known[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    has_shape_ops = any(n.op_type in SHAPE_OPS for n in g.node)
    shapes = _static_shapes(model, input_shapes) if has_shape_ops else {}
    folded: dict[int, list[np.ndarray]] = {}
    for i, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLDED:
            continue
        if node.op_type in SHAPE_OPS:
            shape = shapes.get(node.input[0])
            if shape is None:
                continue
            values = [_shape_value(node, shape)]
        else:
            ins = [x for x in node.input if x]
            if not ins or any(x not in known for x in ins):
                continue
            values = _evaluate(model, node, [known[x] for x in ins])
            if values is None:
                continue
        folded[i] = values
        known.update(zip(node.output, values))
    if not folded:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [_copy(n) for i, n in enumerate(g.node) if i not in folded]
    used = {x for n in kept for x in n.input} | {o.name for o in out.graph.output}
    # Constant nodes only the folded nodes read are gone with them
    kept = [n for n in kept if n.op_type != "Constant" or any(o in used for o in n.output)]
    new_inits = [numpy_helper.from_array(np.asarray(v), name)
                 for i in folded for name, v in zip(g.node[i].output, folded[i])
                 if name in used]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(new_inits)
    return out


def _bypass_identities(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The graph with each Identity's consumers reading its input instead (the TorchScript
    exporter routes shared weights and biases through Identity nodes, which would hide a
    DequantizeLinear of a constant from the op that needs it); None when there is none.
    An Identity that writes a graph output stays."""
    g = model.graph
    outputs = {o.name for o in g.output}
    alias = {n.output[0]: n.input[0] for n in g.node
             if n.op_type == "Identity" and n.domain in ("", "ai.onnx")
             and n.output[0] not in outputs}
    if not alias:
        return None

    def source(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for n in g.node:
        if n.output and n.output[0] in alias and n.op_type == "Identity":
            continue
        n = _copy(n)
        for i, x in enumerate(n.input):
            n.input[i] = source(x)
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _copy(node) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _quantize_before_movement(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Insert Q/DQ pairs after float ops whose output reaches a QuantizeLinear only through
    data movement (module docstring); None when there is none."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    outputs = {o.name for o in g.output}
    inserts = []  # (float tensor, first mover, QuantizeLinear)
    for q in g.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 2:
            continue
        t, first = q.input[0], None
        node = producer.get(t)
        while (node is not None and node.op_type in DATA_MOVEMENT
               and len(consumers.get(t, [])) == 1 and t not in outputs):
            first, t = node, node.input[0]
            node = producer.get(t)
        if (first is None or node is None or node.op_type in ("DequantizeLinear", "Constant")
                or len(consumers.get(t, [])) != 1 or t in outputs):
            continue
        inserts.append((t, first, q))
    if not inserts:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [_copy(n) for n in g.node]
    for t, first, q in inserts:
        qname, dname = f"{t}_QuantizeLinear_moved", f"{t}_DequantizeLinear_moved"
        params = list(q.input[1:])
        pair = [helper.make_node("QuantizeLinear", [t] + params, [qname],
                                 name=f"{q.name or q.output[0]}_before_{first.name or t}"),
                helper.make_node("DequantizeLinear", [qname] + params, [dname],
                                 name=f"{q.name or q.output[0]}_dq_before_{first.name or t}")]
        for a in q.attribute:
            if a.name == "axis":
                pair[0].attribute.append(a)
                pair[1].attribute.append(a)
        at = next(i for i, n in enumerate(nodes) if list(n.output) == list(first.output))
        nodes[at].input[0] = dname
        nodes[at:at] = pair
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
