"""The compatibility report: every node int8-ref cannot build, before any work is done.

`compatibility_report(model_path)` lists each offending node with its name, op type, the
attribute at fault and why; the compiler raises IncompatibleModel listing all of them. A
`tapeout compat` command can call it directly.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from .exceptions import Incompatibility
from .lowering import SUPPORTED_OPS, Lowering, LoweringError


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _static_checks(node) -> list[Incompatibility]:
    """Attribute rules that do not need shapes: every violation, not just the first."""
    out = []
    name, op = node.name or (node.output[0] if node.output else "?"), node.op_type

    def bad(attr, why):
        out.append(Incompatibility(name, op, attr, why))

    if node.domain not in ("", "ai.onnx", "com.microsoft") or op not in SUPPORTED_OPS:
        dom = f"{node.domain}." if node.domain else ""
        bad("", f"operator {dom}{op} is not supported by int8-ref")
        return out
    if op in ("Conv", "QLinearConv", "ConvInteger", "MaxPool", "AveragePool"):
        ks = _attr(node, "kernel_shape")
        if ks is not None and len(ks) != 2:
            bad("kernel_shape", f"{len(ks)}-D kernels are not supported (2-D only)")
        ap = _attr(node, "auto_pad", b"NOTSET")
        ap = ap.decode() if isinstance(ap, bytes) else ap
        if ap not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER", ""):
            bad("auto_pad", f"auto_pad {ap} is not supported")
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        bad("Indices", "the Indices output is not supported")
    if op == "AveragePool":
        d = _attr(node, "dilations")
        if d is not None and any(v != 1 for v in d):
            bad("dilations", "dilated average pooling is not supported")
    if op == "Gemm":
        if _attr(node, "transA", 0):
            bad("transA", "transA=1 is not supported")
        if float(_attr(node, "alpha", 1.0)) != 1.0:
            bad("alpha", "alpha must be 1")
        if float(_attr(node, "beta", 1.0)) != 1.0:
            bad("beta", "beta must be 1")
    if op == "Pad":
        m = _attr(node, "mode", b"constant")
        m = m.decode() if isinstance(m, bytes) else m
        if m != "constant":
            bad("mode", f"mode {m} is not supported (constant only)")
    if op == "Resize":
        m = _attr(node, "mode", b"nearest")
        m = m.decode() if isinstance(m, bytes) else m
        if m != "nearest":
            bad("mode", f"mode {m} is not supported (nearest only)")
    if op == "Dropout" and len(node.output) > 1 and node.output[1]:
        bad("mask", "the mask output is not supported")
    if op == "Softmax" and _attr(node, "axis", -1) not in (-1,):
        pass  # checked with shapes during lowering
    return out


def report_for_model(model: onnx.ModelProto, input_shapes=None,
                     requant: str = "fixed-point") -> list[Incompatibility]:
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
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        problems.append(Incompatibility("<graph>", "", "", f"cannot be lowered: {exc}"))
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
