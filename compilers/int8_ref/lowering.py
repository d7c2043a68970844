"""Lowering: an ONNX QDQ or QOperator graph -> a static, typed op list (a `Program`).

This module is the context every op module lowers through: the graph, the tensors and
constants made so far, and the helpers that read quantization parameters, find the
QuantizeLinear after a node and emit ops. What each ONNX op becomes lives in its own module
under ops/ (opset.py lists them); the driver here walks the graph in order and hands each node
to the `lower` function its op module registered.

Every tensor of the program is int8, uint8, int16, int32 or float32 with a static shape. QDQ
"islands" are fused the way ONNX Runtime fuses them at its default optimisation level
(onnxruntime/core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc):
DQ -> Conv/Gemm/MatMul -> Q becomes one integer op with per-channel requantization; DQ -> Add/Mul
-> Q a QLinearAdd/QLinearMul; Reshape/Flatten/Transpose/Squeeze/Unsqueeze/MaxPool/Resize work on
the integers directly (their DQ/Q pairs carry equal parameters); a DQ -> Q pair with different
parameters is a requantization. Graph float inputs are quantized and graph float outputs are
dequantized at the edges.

int16 activations (mixed precision, as ONNX Runtime's quantizer writes them with
`TensorQuantOverrides`) run through the ONNX ops registered with `int16=True`; ONNX Runtime
itself runs every node that touches an int16 tensor as DequantizeLinear -> float op ->
QuantizeLinear, so those ops aim at one int16 LSB of it rather than bit-exactness
(docs/int8-ref.md, "int16 activations").

Refusals: a lowering refuses what it does not build by raising LoweringError (through
`fail`); nothing else is caught, so an exception of another type is a bug in int8-ref and
surfaces as one instead of being reported as an unsupported model.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from . import requantize as rq
from .exceptions import Incompatibility
from .fold import prepare
from .kernel_abi import MODE_FIXED, MODE_ORT, KernelSpec
from .opset import INT16_OPS, ONNX_OPS, READS_DEQUANTIZED, Kind
from .ops import float_island, load_const, requant
from .program import (CODE_DTYPE, DTYPE_CODE, I16, ONNX_DTYPES, LoweringError, Op, Program, Q,
                      Tensor, attr)

DOMAINS = ("", "ai.onnx", "com.microsoft")


class Lowering:
    """One pass over a topologically sorted graph. Raises LoweringError on the first problem."""

    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
                 requant: str, ort_float: frozenset[str] = frozenset(),
                 keep_going: bool = False) -> None:
        self.ort_float = ort_float  # nodes ONNX Runtime runs in float (ort mode emulates)
        # keep_going: record a failing node, skip what depends on it, carry on (the
        # compatibility report wants every independent problem, not the first).
        self.keep_going = keep_going
        self.problems: list[Incompatibility] = []
        self.poisoned: set[str] = set()
        self.model = model
        self.g = model.graph
        self.requant = requant
        self.mode = MODE_ORT if requant == "ort" else MODE_FIXED
        self.input_shapes = input_shapes
        self.tensors: list[Tensor] = []
        self.consts: list[np.ndarray] = []
        self.ops: list[Op] = []
        self.init: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        self.qname: dict[str, Q] = {}  # quantized tensor by its ONNX name
        self.qval: dict[str, Q] = {}  # float name (DQ output) -> quantized tensor behind it
        self.wconst: dict[str, tuple] = {}  # DQ of an initializer: (q, scale, zp, axis)
        self.fval: dict[str, int] = {}  # float32 tensors (graph inputs, edge dequantize)
        self.done: set[int] = set()  # indices of nodes fused into an earlier op
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.g.node):
            for x in n.input:
                self.consumers.setdefault(x, []).append(i)
        self.graph_outputs = [o.name for o in self.g.output]
        self.node: onnx.NodeProto | None = None  # the node being lowered

    # -- refusals --------------------------------------------------------------------------
    def fail(self, node: onnx.NodeProto, reason: str, attribute: str = "") -> None:
        raise LoweringError(Incompatibility(node.name or node.output[0], node.op_type,
                                            attribute, reason))

    # -- tensors, constants, ops -----------------------------------------------------------
    def new_tensor(self, name: str, dtype: str, shape) -> int:
        shape = tuple(int(s) for s in shape)
        if any(s <= 0 for s in shape):
            reason = f"tensor {name!r} has a non-positive dimension {shape}"
            if self.node is None:
                raise LoweringError(Incompatibility(name, "graph input", "shape", reason))
            self.fail(self.node, reason)
        self.tensors.append(Tensor(name, dtype, shape))
        return len(self.tensors) - 1

    def const(self, arr: np.ndarray) -> int:
        self.consts.append(np.ascontiguousarray(arr))
        return len(self.consts) - 1

    def shape(self, tid: int) -> tuple[int, ...]:
        return self.tensors[tid].shape

    def emit(self, node, kernel: KernelSpec, inputs, output, consts=(), floats=(), scratch=0,
             **ints) -> None:
        """Append one op of `kernel`. `ints` are its parameters by name, all of them;
        `consts` its constant ids in the kernel's slot order."""
        if set(ints) != set(kernel.params):  # a bug in the op module, not a model problem
            raise TypeError(f"{kernel.name}: missing parameters "
                            f"{sorted(set(kernel.params) - set(ints))}, unknown "
                            f"{sorted(set(ints) - set(kernel.params))}")
        lo, hi = kernel.const_range
        if not lo <= len(consts) <= hi or len(floats) > len(kernel.floats):
            raise TypeError(f"{kernel.name}: {len(consts)} constants, {len(floats)} floats")
        self.ops.append(Op(Kind(kernel.kind), node.name or node.output[0], node.op_type,
                           tuple(inputs), output, tuple(consts),
                           {k: int(v) for k, v in ints.items()},
                           tuple(float(f) for f in floats), int(scratch)))

    # -- reading the graph -----------------------------------------------------------------
    def scalar(self, node, name: str, what: str):
        if name not in self.init:
            self.fail(node, f"{what} must be a constant initializer", what)
        arr = self.init[name]
        if arr.size != 1:
            self.fail(node, f"{what} must be per-tensor (a scalar), got shape {arr.shape}", what)
        return arr.reshape(-1)[0]

    def input_name(self, node, i: int, what: str) -> str:
        """The name of `node`'s input `i`, which the op requires."""
        if len(node.input) <= i or not node.input[i]:
            self.fail(node, f"the required input {what} is missing", what)
        return node.input[i]

    def optional_input(self, node, i: int) -> str | None:
        return node.input[i] if len(node.input) > i and node.input[i] else None

    def qparams(self, node, s_name: str, zp_name: str | None, default_dtype="uint8",
                allow_int16: bool = False):
        """(scale, zero point, type code) of a per-tensor quantization. int16 only where the
        caller handles it (QDQ QuantizeLinear / DequantizeLinear and the Q after an op)."""
        scale = self.scalar(node, s_name, "scale")
        if self.init[s_name].dtype != np.float32:
            self.fail(node, f"scale type {self.init[s_name].dtype} is not supported "
                            "(float32 only)", "scale")
        scale = float(np.float32(scale))
        if zp_name:
            zpv = self.scalar(node, zp_name, "zero_point")
            dtype = str(self.init[zp_name].dtype)
            zp = int(zpv)
        else:
            dtype, zp = default_dtype, 0
        allowed = ("int8", "uint8", "int16") if allow_int16 else ("int8", "uint8")
        if dtype not in allowed:
            self.fail(node, f"quantized type {dtype} is not supported ({'/'.join(allowed)} "
                            "only)", "zero_point")
        if not scale > 0 or not math.isfinite(scale):
            self.fail(node, f"scale must be positive and finite, got {scale}", "scale")
        return scale, zp, DTYPE_CODE[dtype]

    def qlinear_unary(self, node):
        """(X, (name, y_scale, y_zp, code, lo, hi)) of a com.microsoft QLinear unary op:
        X, x_scale, x_zero_point, y_scale, y_zero_point."""
        if attr(node, "channels_last", 0):
            self.fail(node, "channels_last=1 is not supported", "channels_last")
        xq = self.act(node, node.input[0])
        xs, xzp, xsg = self.qparams(node, self.input_name(node, 1, "X_scale"),
                                    self.optional_input(node, 2))
        ys, yzp, ysg = self.qparams(node, self.input_name(node, 3, "Y_scale"),
                                    self.optional_input(node, 4))
        lo, hi = rq.qrange(ysg)
        return Q(xq.tid, xs, xzp, xsg), (node.output[0], ys, yzp, ysg, lo, hi)

    def check_int16(self, node, q_code: int, what: str) -> None:
        """Refuse an int16 tensor at an op that has no int16 kernel, naming node and op."""
        if q_code == I16 and node.op_type not in INT16_OPS:
            self.fail(node, f"int16 {what} is not supported by {node.op_type} (int16 "
                            f"activations run through {', '.join(sorted(INT16_OPS))})", what)

    def act(self, node, name: str) -> Q:
        """The quantized activation feeding `node` through input `name`."""
        q = self.qval.get(name) or self.qname.get(name)
        if q is not None:
            self.check_int16(node, q.code, "input")
            return q
        if name in self.init and self.init[name].dtype in (np.int8, np.uint8):
            # a QOperator constant operand
            return load_const.load_initializer(self, node, name, self.init[name])
        if name in self.wconst:
            # the DequantizeLinear of a constant (a class token, a constant operand)
            self.qval[name] = load_const.load_dequantized(self, node, name)
            return self.qval[name]
        if name in self.fval:
            self.fail(node, f"input {name!r} is float (no QuantizeLinear/DequantizeLinear "
                            "pair around it)", "input")
        self.fail(node, f"input {name!r} is not a quantized activation", "input")

    def output_q(self, node, out: str, allow_propagate: Q | None = None):
        """Where `node`'s float output goes: the one QuantizeLinear that consumes it.

        Returns (name, scale, zp, code, lo, hi): the quantized tensor's name, its parameters
        and the clamp range (narrowed by a fused Relu/Clip between the op and the Q).
        Marks the fused nodes done. With `allow_propagate`, an op that has no Q after it
        keeps its input's parameters (ORT's QDQ propagation for layout ops).
        """
        cons = self.consumers.get(out, [])
        lo_f, hi_f = -math.inf, math.inf
        name = out
        fused: list[int] = []
        if len(cons) == 1 and out not in self.graph_outputs:
            nxt = self.g.node[cons[0]]
            if nxt.op_type in ("Relu", "Clip"):
                lo_f, hi_f = self.clip_bounds(nxt)
                fused.append(cons[0])
                name = nxt.output[0]
                cons = self.consumers.get(name, [])
        if (len(cons) == 1 and name not in self.graph_outputs
                and self.g.node[cons[0]].op_type == "QuantizeLinear"):
            qn = self.g.node[cons[0]]
            scale, zp, code = self.qparams(qn, self.input_name(qn, 1, "y_scale"),
                                           self.optional_input(qn, 2), allow_int16=True)
            self.check_int16(node, code, "output")
            self.done.update(fused + [cons[0]])
            lo, hi = self.clamp_range(code, scale, zp, lo_f, hi_f)
            return qn.output[0], scale, zp, code, lo, hi
        if allow_propagate is not None and not fused:
            q = allow_propagate
            qmin, qmax = rq.qrange(q.code)
            return out, q.scale, q.zp, q.code, qmin, qmax
        self.fail(node, f"output {out!r} is not quantized: it must feed exactly one "
                        "QuantizeLinear", "output")

    @staticmethod
    def clamp_range(code: int, scale: float, zp: int, lo_f: float, hi_f: float):
        """The quantized range of a float clamp [lo_f, hi_f] (Relu / Clip) at (scale, zp)."""
        qmin, qmax = rq.qrange(code)
        lo = qmin if lo_f == -math.inf else max(qmin, min(qmax, zp + math.ceil(
            np.float32(lo_f) / np.float32(scale) - 1e-6)))
        hi = qmax if hi_f == math.inf else min(qmax, max(qmin, zp + math.floor(
            np.float32(hi_f) / np.float32(scale) + 1e-6)))
        return lo, hi

    def clip_bounds(self, node) -> tuple[float, float]:
        if node.op_type == "Relu":
            return 0.0, math.inf
        lo = attr(node, "min", -math.inf)
        hi = attr(node, "max", math.inf)
        if self.optional_input(node, 1):
            lo = float(self.const_input(node, 1, "min"))
        if self.optional_input(node, 2):
            hi = float(self.const_input(node, 2, "max"))
        return float(lo), float(hi)

    def needs_float(self, name: str) -> bool:
        """Whether the DequantizeLinear output `name` needs a float tensor: a graph output,
        or read by an op that does not read the integers behind it."""
        return name in self.graph_outputs or any(
            self.g.node[c].op_type not in READS_DEQUANTIZED
            for c in self.consumers.get(name, []))

    def const_input(self, node, i: int, what: str) -> np.ndarray:
        if len(node.input) <= i or node.input[i] not in self.init:
            self.fail(node, f"{what} must be a constant initializer", what)
        return self.init[node.input[i]]

    def same_family(self, node, x_code: int, y_code: int) -> None:
        """int8 with int8 and uint8 with uint8 (ORT's QLinear kernels); any mix once int16 is
        involved (the int16 kernels load and store each side by its own type)."""
        if x_code != y_code and I16 not in (x_code, y_code):
            self.fail(node, "input and output must both be int8 or both uint8", "y")

    def define_q(self, name: str, code: int, shape, scale, zp) -> Q:
        tid = self.new_tensor(name, CODE_DTYPE[int(code)], shape)
        q = Q(tid, scale, zp, int(code))
        self.qname[name] = q
        return q

    # -- weights ---------------------------------------------------------------------------
    def weight(self, node, name: str, axis_expected: int, what="weight"):
        """(int values, per-channel scales, zero points) of a DQ'd initializer."""
        if name in self.wconst:
            q, s, zp, axis = self.wconst[name]
            if q.dtype not in (np.int8, np.uint8):
                self.fail(node, f"{what} type {q.dtype} is not supported", what)
            if s.size > 1 and (axis % q.ndim) != axis_expected:
                self.fail(node, f"{what} is quantized along axis {axis}, expected "
                                f"{axis_expected}", what)
            return q, s.reshape(-1), zp.reshape(-1).astype(np.int32)
        self.fail(node, f"{what} {name!r} must be a constant DequantizeLinear of int8/uint8",
                  what)

    def bias(self, node, name: str | None, n: int, x_scale: float, w_scales) -> np.ndarray:
        if not name:
            return np.zeros(n, np.int32)
        if name in self.wconst:
            q, s, zp, _ = self.wconst[name]
            if q.dtype != np.int32:
                self.fail(node, f"bias must be int32, got {q.dtype}", "bias")
            return (q.astype(np.int64) - zp.astype(np.int64)).astype(np.int32).reshape(-1)
        if name in self.init:  # float bias: quantize with x_scale * w_scale
            b = self.init[name].astype(np.float32).reshape(-1)
            bs = np.float32(x_scale) * np.asarray(w_scales, np.float32)
            return np.rint(b / bs).astype(np.int32)
        self.fail(node, "bias must be a constant", "bias")

    def requant_consts(self, node, x_scale, w_scales, y_scale, n,
                       pad=lambda v: v) -> tuple[int, int]:
        """Constant ids of the per-channel requantization arrays (requantize.conv_params),
        through `pad` (a kernel that reads whole blocks of channels pads them)."""
        w_scales = np.broadcast_to(np.asarray(w_scales, np.float32), (n,))
        if self.mode == MODE_FIXED and np.any(w_scales < 0):
            self.fail(node, "a negative weight scale has no fixed-point multiplier", "scale")
        a, b = rq.conv_params(x_scale, w_scales, y_scale, self.requant)
        return self.const(pad(a)), self.const(pad(b))

    # -- ops that keep their input's quantization -------------------------------------------
    def layout(self, node, xq: Q, oshape, kernel: KernelSpec, consts=(), out: str = "",
               scratch: int = 0, **ints) -> None:
        """Emit an op that moves or selects integers (its output has the input's scale and
        zero point) into `node`'s output `out` (the first by default); a QuantizeLinear
        after it with other parameters becomes a REQUANT."""
        out = out or node.output[0]
        name, scale, zp, code, lo, hi = self.output_q(node, out, allow_propagate=xq)
        tmp_name = name if (scale, zp, code) == (xq.scale, xq.zp, xq.code) \
            else name + "__pre"
        tid = self.new_tensor(tmp_name, self.tensors[xq.tid].dtype, oshape)
        self.emit(node, kernel, [xq.tid], tid, consts=consts, scratch=scratch, **ints)
        q = Q(tid, xq.scale, xq.zp, xq.code)
        if tmp_name != name:
            requant.requant_to(self, node, q, name, scale, zp, code)
        else:
            self.qname[name] = q
        self.qval[out] = self.qname[name]

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> Program:
        inputs, outputs = [], []
        for vi in self.g.input:
            if vi.name in self.init:
                continue
            et = vi.type.tensor_type.elem_type
            dtype = ONNX_DTYPES.get(et)
            shape = self.input_shapes.get(vi.name)
            if shape is None:
                dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
                if not dims or any(d <= 0 for d in dims):
                    raise LoweringError(Incompatibility(
                        vi.name, "graph input", "shape",
                        "needs a static shape (give it in the target's input shapes)"))
                shape = tuple(dims)
            if dtype is None:
                raise LoweringError(Incompatibility(vi.name, "graph input", "dtype",
                                                    f"element type {et} is not supported"))
            tid = self.new_tensor(vi.name, dtype, shape)
            inputs.append(tid)
            if dtype == "float32":
                self.fval[vi.name] = tid
            elif dtype in ("int8", "uint8"):
                self.qname[vi.name] = Q(tid, None, None, dtype == "int8")
            else:
                self.qname[vi.name] = Q(tid, None, None, False)
        for i, node in enumerate(self.g.node):
            if i in self.done:
                continue
            if any(x in self.poisoned for x in node.input if x):
                self.poisoned.update(node.output)  # depends on a failed node: not reported
                continue
            done_before = set(self.done)
            self.node = node
            try:
                onnx_op = ONNX_OPS.get(node.op_type)
                if node.domain not in DOMAINS or onnx_op is None:
                    self.fail(node, f"operator {node.domain + '.' if node.domain else ''}"
                                    f"{node.op_type} is not supported")
                for attribute, reason in onnx_op.rules(node):
                    self.fail(node, reason, attribute)
                if float_island.claims(self, node):
                    float_island.lower_island(self, node)
                else:
                    onnx_op.lower(self, node)
            except LoweringError as exc:
                if not self.keep_going:
                    raise
                self.problems.append(exc.problem)
                self.poisoned.update(node.output)
                for j in self.done - done_before:  # Q/Relu nodes fused into the failed one
                    self.poisoned.update(self.g.node[j].output)
        self.node = None
        if self.problems:
            return Program(self.requant, self.tensors, self.consts, self.ops, inputs, outputs)
        for o in self.g.output:
            if o.name in self.fval:
                outputs.append(self.fval[o.name])
            elif o.name in self.qname:
                outputs.append(self.qname[o.name].tid)
            elif o.name in self.qval:
                outputs.append(self.qval[o.name].tid)
            else:
                raise LoweringError(Incompatibility(o.name, "graph output", "",
                                                    "is not produced by a supported op"))
        for t, n in ((inputs, "input"), (outputs, "output")):
            names = [self.tensors[x].name for x in t]
            if len(set(t)) != len(t):
                raise LoweringError(Incompatibility(names[0], f"graph {n}", "",
                                                    "the same tensor appears twice"))
        # name graph outputs by their ONNX names
        for o, tid in zip(self.g.output, outputs):
            self.tensors[tid].name = o.name
        return Program(self.requant, self.tensors, self.consts, self.ops, inputs, outputs)


def lower(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
          requant: str, ort_float: frozenset[str] = frozenset()) -> Program:
    """Lower `model` to a Program. Raises LoweringError naming the first bad node.

    `ort_float`: names of nodes ONNX Runtime keeps in float (compat.ort_float_nodes); in
    `ort` mode their elementwise ops are emulated in float32 instead of as QLinear kernels.
    Shape subgraphs are folded first (fold.prepare).
    """
    return Lowering(prepare(model, input_shapes), input_shapes, requant, ort_float).run()
