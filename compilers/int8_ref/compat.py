"""The compatibility report: every node int8-ref cannot build, before any work is done.

`compatibility_report(model_path)` lists each offending node with its name, op type, the
attribute at fault and why; the compiler raises IncompatibleModel listing all of them. A
`tapeout compat` command can call it directly.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from .exceptions import Incompatibility
from .fold import prepare
from .lowering import DOMAINS, Lowering
from .opset import ONNX_OPS
from .program import LoweringError


def _static_checks(node) -> list[Incompatibility]:
    """Attribute rules that do not need shapes (each op module's OnnxOp.rules): every
    violation, not just the first."""
    name, op = node.name or (node.output[0] if node.output else "?"), node.op_type
    entry = ONNX_OPS.get(op)
    if node.domain not in DOMAINS or entry is None:
        dom = f"{node.domain}." if node.domain else ""
        return [Incompatibility(name, op, "",
                                f"operator {dom}{op} is not supported by int8-ref")]
    return [Incompatibility(name, op, attribute, reason)
            for attribute, reason in entry.rules(node)]


def report_for_model(model: onnx.ModelProto, input_shapes=None,
                     requant: str = "fixed-point") -> list[Incompatibility]:
    model = prepare(model, dict(input_shapes or {}))
    problems: list[Incompatibility] = []
    for node in model.graph.node:
        problems.extend(_static_checks(node))
    if problems:
        return problems
    # A symbolic dimension (typically the batch) is analysed as 1: the target profile fixes
    # it at compile time.
    shapes = dict(input_shapes or {})
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name not in shapes and vi.name not in inits:
            dims = [d.dim_value if d.dim_value > 0 else 1
                    for d in vi.type.tensor_type.shape.dim]
            if dims:
                shapes[vi.name] = tuple(dims)
    input_shapes = shapes
    # Shape- and quantization-dependent rules: lower the graph, recording every node that
    # fails and skipping the nodes that depend on it.
    try:
        low = Lowering(model, dict(input_shapes or {}), requant, keep_going=True)
        low.run()
        problems.extend(low.problems)
    except LoweringError as exc:  # graph-level (inputs / outputs)
        problems.append(exc.problem)
    return problems


def compatibility_report(model_path, input_shapes=None) -> list[Incompatibility]:
    """Every node of the ONNX model at `model_path` that int8-ref cannot build.

    An empty list means the model compiles. Each entry names the node, its op type, the
    attribute at fault (or "") and the reason.
    """
    model = onnx.load(str(Path(model_path)))
    return report_for_model(model, input_shapes)


# Float compute ops: if one of these survives ONNX Runtime's graph optimisation, ORT runs it
# in float32 between a DequantizeLinear and a QuantizeLinear instead of a QLinear kernel.
_FLOAT_COMPUTE = {"Conv", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "Softmax", "AveragePool",
                  "GlobalAveragePool", "Concat", "LeakyRelu", "Tanh", "Relu", "Clip"}


def ort_float_nodes(model_path) -> list[str]:
    """Names of the compute nodes ONNX Runtime (default optimisation level, CPU) keeps in
    float32 instead of fusing them into QLinear kernels.

    ORT's QDQ selectors (qdq_selectors.cc, NodeGroupSelector::CheckQDQNodes) reject a node
    group when, e.g., a DequantizeLinear output feeds several nodes or a node's output is a
    graph output. For such nodes ORT computes in float (MLAS sgemm summation order, MLAS
    activation approximations), which integer kernels cannot reproduce bit for bit; `ort`
    mode is bit-exact for every other node. Returns [] when ORT fuses everything.
    """
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "optimized.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = out
        so.log_severity_level = 3
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(out)
    return [n.name for n in optimized.graph.node
            if n.op_type in _FLOAT_COMPUTE and n.domain in ("", "ai.onnx")]
