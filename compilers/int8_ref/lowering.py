"""Lowering: an ONNX QDQ or QOperator graph -> a static, typed op list (a `Program`).

Every tensor of the program is int8, uint8, int16, int32 or float32 with a static shape. QDQ
"islands" are fused the way ONNX Runtime fuses them at its default optimisation level
(onnxruntime/core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc):
DQ -> Conv/Gemm/MatMul -> Q becomes one integer op with per-channel requantization; DQ -> Add/Mul
-> Q a QLinearAdd/QLinearMul; Reshape/Flatten/Transpose/Squeeze/Unsqueeze/MaxPool/Resize work on
the integers directly (their DQ/Q pairs carry equal parameters); a DQ -> Q pair with different
parameters is a requantization. Graph float inputs are quantized and graph float outputs are
dequantized at the edges.

int16 activations (mixed precision, as ONNX Runtime's quantizer writes them with
`TensorQuantOverrides`) run through the ops in INT16_OPS; ONNX Runtime itself runs every node
that touches an int16 tensor as DequantizeLinear -> float op -> QuantizeLinear, so those ops
aim at one int16 LSB of it rather than bit-exactness (docs/int8-ref.md, "int16 activations").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from . import requantize as rq
from .exceptions import Incompatibility
from .opset import (MODE_FIXED, MODE_INT32, MODE_ORT, SG_DTYPE, SG_INT8, SG_INT16, SG_UINT8,
                    Kind, conv_scratch, gemm_scratch, matmul_scratch)

# Largest reduction an int32 accumulator is proven to hold (see _kernels.pyx header). Conv and
# Gemm over int16 inputs accumulate in int64 and keep the same limit (the bound there is
# 2^15 * 65535 * 255 + 2^31 < 2^40, well inside the 2^47 their requantization accepts).
MAX_REDUCTION = 32768

ONNX_DTYPES = {
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.FLOAT: "float32",
}
ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float32": 4}

# Quantized element types by the code the kernels read ("sg_in"/"sg_out" in opset.PARAMS):
# 0 uint8, 1 int8, 2 int16. 0 and 1 are the old booleans, so int8 programs are unchanged.
U8, I8, I16 = SG_UINT8, SG_INT8, SG_INT16
CODE_DTYPE = SG_DTYPE
DTYPE_CODE = {v: k for k, v in CODE_DTYPE.items()}

# Ops that take or produce int16 activations (QDQ form only: ONNX Runtime's QOperator ops are
# 8-bit). Any other op meeting an int16 tensor is reported with its node name.
INT16_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MatMul", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Add", "Mul", "Concat", "Relu", "Clip", "Reshape", "Flatten",
    "Squeeze", "Unsqueeze", "Identity", "Dropout", "Transpose", "Resize",
})

LAYOUT_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ITEMSIZE[self.dtype]


@dataclass
class Op:
    kind: Kind
    node: str  # source node name
    op_type: str  # source op type
    inputs: tuple[int, ...]
    output: int
    consts: tuple[int, ...] = ()
    ints: dict[str, int] = field(default_factory=dict)
    floats: tuple[float, ...] = ()
    scratch: int = 0  # bytes of scratch the kernel needs


@dataclass
class Program:
    """The lowered model: tensors, constants, ops in execution order, graph I/O."""

    requant: str
    tensors: list[Tensor]
    consts: list[np.ndarray]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]


@dataclass(frozen=True)
class Q:
    """A quantized activation: tensor id, scale (float32), zero point and element type code
    (U8, I8 or I16; a bool is read as uint8/int8)."""

    tid: int
    scale: float | None
    zp: int | None
    code: int


class LoweringError(Exception):
    def __init__(self, problem: Incompatibility) -> None:
        self.problem = problem
        super().__init__(str(problem))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _align(n: int, a: int = 16) -> int:
    return (n + a - 1) // a * a


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
        self.node_index = 0

    # -- helpers ---------------------------------------------------------------------------
    def fail(self, node: onnx.NodeProto, reason: str, attribute: str = "") -> None:
        raise LoweringError(Incompatibility(node.name or node.output[0], node.op_type,
                                            attribute, reason))

    def new_tensor(self, name: str, dtype: str, shape) -> int:
        shape = tuple(int(s) for s in shape)
        if any(s <= 0 for s in shape):
            raise ValueError(f"tensor {name!r} has a non-positive dimension {shape}")
        self.tensors.append(Tensor(name, dtype, shape))
        return len(self.tensors) - 1

    def const(self, arr: np.ndarray) -> int:
        self.consts.append(np.ascontiguousarray(arr))
        return len(self.consts) - 1

    def shape(self, tid: int) -> tuple[int, ...]:
        return self.tensors[tid].shape

    def emit(self, node, kind: Kind, inputs, output, consts=(), floats=(), scratch=0,
             **ints) -> None:
        self.ops.append(Op(kind, node.name or node.output[0], node.op_type, tuple(inputs),
                           output, tuple(consts), {k: int(v) for k, v in ints.items()},
                           tuple(float(f) for f in floats), int(scratch)))

    def scalar(self, node, name: str, what: str):
        if name not in self.init:
            self.fail(node, f"{what} must be a constant initializer", what)
        arr = self.init[name]
        if arr.size != 1:
            self.fail(node, f"{what} must be per-tensor (a scalar), got shape {arr.shape}", what)
        return arr.reshape(-1)[0]

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
            return self.load_const(node, name, self.init[name])  # QOperator constant operand
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
            scale, zp, code = self.qparams(qn, qn.input[1],
                                           qn.input[2] if len(qn.input) > 2 else None,
                                           allow_int16=True)
            self.check_int16(node, code, "output")
            self.done.update(fused + [cons[0]])
            qmin, qmax = rq.qrange(code)
            lo = qmin if lo_f == -math.inf else max(qmin, min(qmax, zp + math.ceil(
                np.float32(lo_f) / np.float32(scale) - 1e-6)))
            hi = qmax if hi_f == math.inf else min(qmax, max(qmin, zp + math.floor(
                np.float32(hi_f) / np.float32(scale) + 1e-6)))
            return qn.output[0], scale, zp, code, lo, hi
        if allow_propagate is not None and not fused:
            q = allow_propagate
            qmin, qmax = rq.qrange(q.code)
            return out, q.scale, q.zp, q.code, qmin, qmax
        self.fail(node, f"output {out!r} is not quantized: it must feed exactly one "
                        "QuantizeLinear", "output")

    def clip_bounds(self, node) -> tuple[float, float]:
        if node.op_type == "Relu":
            return 0.0, math.inf
        lo = _attr(node, "min", -math.inf)
        hi = _attr(node, "max", math.inf)
        if len(node.input) > 1 and node.input[1]:
            lo = float(self.const_input(node, 1, "min"))
        if len(node.input) > 2 and node.input[2]:
            hi = float(self.const_input(node, 2, "max"))
        return float(lo), float(hi)

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
            self.node_index = i
            if any(x in self.poisoned for x in node.input if x):
                self.poisoned.update(node.output)  # depends on a failed node: not reported
                continue
            done_before = set(self.done)
            try:
                handler = getattr(self, f"op_{node.op_type}", None)
                if node.domain not in ("", "ai.onnx", "com.microsoft") or handler is None:
                    self.fail(node, f"operator {node.domain + '.' if node.domain else ''}"
                                    f"{node.op_type} is not supported")
                handler(node)
            except (LoweringError, ValueError, KeyError, IndexError, TypeError) as exc:
                if not self.keep_going:
                    raise
                self.problems.append(exc.problem if isinstance(exc, LoweringError) else
                                     Incompatibility(node.name or node.output[0], node.op_type,
                                                     "", f"cannot be lowered: {exc}"))
                self.poisoned.update(node.output)
                for j in self.done - done_before:  # Q/Relu nodes fused into the failed one
                    self.poisoned.update(self.g.node[j].output)
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

    # -- constants -------------------------------------------------------------------------
    def op_Constant(self, node):
        v = _attr(node, "value")
        if v is None:
            self.fail(node, "only the 'value' form of Constant is supported", "value")
        self.init[node.output[0]] = numpy_helper.to_array(v)

    # -- edges -----------------------------------------------------------------------------
    def op_QuantizeLinear(self, node):
        x = node.input[0]
        scale, zp, code = self.qparams(node, node.input[1],
                                       node.input[2] if len(node.input) > 2 else None,
                                       allow_int16=True)
        out = node.output[0]
        if _attr(node, "saturate", 1) != 1:
            self.fail(node, "saturate=0 is not supported", "saturate")
        if code == I16 and out in self.graph_outputs:
            # int16 is for activations inside the graph (what the quantizer writes); the
            # Runner exchanges float32 (or 8-bit / int32 integers) at the graph's edges.
            self.fail(node, "an int16 graph output is not supported (graph outputs are "
                            "float32, int8, uint8 or int32)", "y_zero_point")
        if x in self.fval:
            src = self.fval[x]
            q = self.define_q(out, code, self.shape(src), scale, zp)
            qmin, qmax = rq.qrange(code)
            self.emit(node, Kind.QUANTIZE, [src], q.tid, floats=[scale],
                      n=int(np.prod(self.shape(src))), zp=zp, qmin=qmin, qmax=qmax,
                      sg_out=code)
            return
        if x in self.qval:
            self.requant_to(node, self.qval[x], out, scale, zp, code)
            return
        if x in self.init:
            arr = self.init[x].astype(np.float32)
            qmin, qmax = rq.qrange(code)
            qv = np.clip(np.rint(arr / np.float32(scale)) + zp, qmin, qmax)
            self.init[out] = qv.astype(CODE_DTYPE[code])
            return
        self.fail(node, f"input {x!r} is neither a float graph input nor a dequantized "
                        "activation", "input")

    def requant_to(self, node, src: Q, out: str, scale: float, zp: int, code: int):
        """DQ -> Q: alias when parameters match, else a requantization op (also the
        int8 <-> int16 conversions: ONNX Runtime runs that DQ and that Q as two float nodes,
        which the `ort` REQUANT kernel reproduces exactly)."""
        shape = self.shape(src.tid)
        if src.scale == scale and src.zp == zp and src.code == code:
            self.qname[out] = src
            return
        q = self.define_q(out, code, shape, scale, zp)
        qmin, qmax = rq.qrange(code)
        mult, shift = rq.quantize_multiplier(float(src.scale) / float(scale))
        self.emit(node, Kind.REQUANT, [src.tid], q.tid, floats=[src.scale, scale],
                  n=int(np.prod(shape)), zp_in=src.zp, zp_out=zp, qmin=qmin, qmax=qmax,
                  sg_in=src.code, sg_out=code, mode=self.mode, mult=mult, shift=shift)

    def op_DequantizeLinear(self, node):
        x, out = node.input[0], node.output[0]
        if x in self.init:
            q = self.init[x]
            s = np.asarray(self.const_input(node, 1, "scale"), np.float32)
            zp = (np.asarray(self.init[node.input[2]]) if len(node.input) > 2
                  and node.input[2] else np.zeros(s.shape, q.dtype))
            axis = _attr(node, "axis", 1)
            if _attr(node, "block_size", 0):
                self.fail(node, "blocked quantization is not supported", "block_size")
            self.wconst[out] = (q, s, zp, axis)
            return
        src = self.qname.get(x)
        if src is None:
            self.fail(node, f"input {x!r} is not a quantized tensor", "input")
        if self.tensors[src.tid].dtype not in ("int8", "uint8", "int16"):
            self.fail(node, f"dequantizing {self.tensors[src.tid].dtype} is not supported",
                      "input")
        scale, zp, code = self.qparams(node, node.input[1],
                                       node.input[2] if len(node.input) > 2 else None,
                                       allow_int16=True)
        if code != src.code:
            self.fail(node, "zero point type differs from the input type", "zero_point")
        q = Q(src.tid, scale, zp, code)
        self.qval[out] = q
        cons = self.consumers.get(out, [])
        if out in self.graph_outputs or any(
                self.g.node[c].op_type not in QUANT_CONSUMERS for c in cons):
            tid = self.new_tensor(out, "float32", self.shape(src.tid))
            self.fval[out] = tid
            self.emit(node, Kind.DEQUANTIZE, [src.tid], tid, floats=[scale],
                      n=int(np.prod(self.shape(src.tid))), zp=zp, sg_in=code)

    # -- compute ---------------------------------------------------------------------------
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

    def requant_consts(self, x_scale, w_scales, y_scale, n) -> tuple[int, int]:
        w_scales = np.broadcast_to(np.asarray(w_scales, np.float32), (n,))
        a, b = rq.conv_params(x_scale, w_scales, y_scale, self.requant)
        return self.const(a), self.const(b)

    def conv_geometry(self, node, H, W, kh, kw, sh, sw, dh, dw, pads):
        auto_pad = _attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, s, ek in ((H, sh, ekh), (W, sw, ekw)):
                out = -(-size // s)
                total = max(0, (out - 1) * s + ek - size)
                small = total // 2
                pads.append((total - small, small) if auto_pad == "SAME_LOWER"
                            else (small, total - small))
            pt, pb = pads[0]
            pl, pr = pads[1]
        elif auto_pad == "VALID":
            pt = pl = pb = pr = 0
        elif auto_pad in ("NOTSET", ""):
            pt, pl, pb, pr = pads
        else:
            self.fail(node, f"auto_pad {auto_pad} is not supported", "auto_pad")
        return pt, pl, pb, pr, ekh, ekw

    def op_Conv(self, node):
        xq = self.act(node, node.input[0])
        w, ws, wzp = self.weight(node, node.input[1], 0)
        self._conv(node, xq, xq.scale, xq.zp, w, ws, wzp,
                   node.input[2] if len(node.input) > 2 else None, qlinear=False)

    def op_QLinearConv(self, node):
        xq = self.act(node, node.input[0])
        xs, xzp, xsg = self.qparams(node, node.input[1], node.input[2])
        if node.input[3] not in self.init:
            self.fail(node, "weight must be a constant initializer", "w")
        w = self.init[node.input[3]]
        ws = np.asarray(self.const_input(node, 4, "w_scale"), np.float32).reshape(-1)
        wzp = np.asarray(self.const_input(node, 5, "w_zero_point")).reshape(-1).astype(np.int32)
        ys, yzp, ysg = self.qparams(node, node.input[6], node.input[7])
        b = self.init.get(node.input[8]) if len(node.input) > 8 and node.input[8] else None
        self._conv(node, Q(xq.tid, xs, xzp, xsg), xs, xzp, w, ws, wzp, None, qlinear=True,
                   bias_arr=b, out_params=(node.output[0], ys, yzp, ysg))

    def op_ConvInteger(self, node):
        xq = self.act(node, node.input[0])
        if node.input[1] not in self.init:
            self.fail(node, "weight must be a constant initializer", "w")
        w = self.init[node.input[1]]
        xzp = int(self.scalar(node, node.input[2], "x_zero_point")) if len(node.input) > 2 \
            and node.input[2] else 0
        wzp = (np.asarray(self.init[node.input[3]]).reshape(-1).astype(np.int32)
               if len(node.input) > 3 and node.input[3] else np.zeros(1, np.int32))
        self._conv(node, xq, 1.0, xzp, w, np.ones(1, np.float32), wzp, None, qlinear=True,
                   int32_out=True)

    def _conv(self, node, xq: Q, xs, xzp, w, ws, wzp, bias_name, qlinear, bias_arr=None,
              out_params=None, int32_out=False):
        xshape = self.shape(xq.tid)
        if len(xshape) != 4 or w.ndim != 4:
            self.fail(node, f"only 2-D convolution (4-D tensors) is supported, input is "
                            f"{len(xshape)}-D", "kernel_shape")
        N, C, H, W = xshape
        M, Cg, kh, kw = w.shape
        G = int(_attr(node, "group", 1))
        if C % G or M % G or Cg != C // G:
            self.fail(node, f"group={G} does not divide channels C={C}, M={M}", "group")
        ks = _attr(node, "kernel_shape")
        if ks is not None and tuple(ks) != (kh, kw):
            self.fail(node, f"kernel_shape {ks} differs from weight {w.shape}", "kernel_shape")
        sh, sw = _attr(node, "strides", [1, 1])
        dh, dw = _attr(node, "dilations", [1, 1])
        pads = _attr(node, "pads", [0, 0, 0, 0])
        pt, pl, pb, pr = pads[0], pads[1], pads[2], pads[3]
        pt, pl, pb, pr, ekh, ekw = self.conv_geometry(node, H, W, kh, kw, sh, sw, dh, dw,
                                                      (pt, pl, pb, pr))
        OH = (H + pt + pb - ekh) // sh + 1
        OW = (W + pl + pr - ekw) // sw + 1
        if OH <= 0 or OW <= 0:
            self.fail(node, "output would be empty", "pads")
        K = Cg * kh * kw
        if K > MAX_REDUCTION:
            self.fail(node, f"reduction of {K} terms can overflow int32", "kernel_shape")
        wzp = np.broadcast_to(wzp, (M,)).astype(np.int32)
        w16 = (w.astype(np.int32).reshape(M, K) - wzp[:, None]).astype(np.int16)
        wsb = np.broadcast_to(ws, (M,)).astype(np.float32)
        if int32_out:
            out_name = node.output[0]
            tid = self.new_tensor(out_name, "int32", (N, M, OH, OW))
            self.qname[out_name] = Q(tid, None, None, True)
            b = np.zeros(M, np.int32)
            c2, c3 = self.const(np.zeros(M, np.float32)), self.const(np.zeros(M, np.int32))
            mode, yzp, lo, hi, ysg = MODE_INT32, 0, 0, 0, True
        else:
            if out_params is None:
                name, ys, yzp, ysg, lo, hi = self.output_q(node, node.output[0])
            else:
                name, ys, yzp, ysg = out_params
                lo, hi = rq.qrange(ysg)
            if bias_arr is not None:
                b = np.asarray(bias_arr).astype(np.int32).reshape(-1)
            else:
                b = self.bias(node, bias_name, M, xs, wsb)
            self.same_family(node, xq.code, ysg)
            tid = self.define_q(name, ysg, (N, M, OH, OW), ys, yzp).tid
            c2, c3 = self.requant_consts(xs, wsb, ys, M)
            mode = self.mode
        scratch = conv_scratch(C * H * W, K, OH * OW, xq.code == I16)
        self.emit(node, Kind.CONV, [xq.tid], tid,
                  consts=[self.const(w16), self.const(b.astype(np.int32)), c2, c3],
                  scratch=scratch, N=N, C=C, H=H, W=W, M=M, kh=kh, kw=kw, sh=sh, sw=sw,
                  pt=pt, pl=pl, dh=dh, dw=dw, groups=G, OH=OH, OW=OW, xzp=xzp, yzp=yzp,
                  qmin=lo, qmax=hi, sg_in=xq.code, sg_out=ysg, mode=mode)

    def _fc(self, node, xq: Q, xs, xzp, wT, ws, wzp, bias, out_name_params, int32_out=False):
        """x[..., K] . wT[N, K]^T + bias -> [..., N] (weights constant)."""
        xshape = self.shape(xq.tid)
        K = xshape[-1]
        Nn = wT.shape[0]
        if wT.shape[1] != K:
            self.fail(node, f"inner dimensions differ: {xshape} vs weight {wT.shape}", "B")
        if K > MAX_REDUCTION:
            self.fail(node, f"reduction of {K} terms can overflow int32", "B")
        M = int(np.prod(xshape[:-1]))
        wzp = np.broadcast_to(wzp, (Nn,)).astype(np.int32)
        w16 = (wT.astype(np.int32) - wzp[:, None]).astype(np.int16)
        wsb = np.broadcast_to(ws, (Nn,)).astype(np.float32)
        oshape = tuple(xshape[:-1]) + (Nn,)
        if int32_out:
            tid = self.new_tensor(node.output[0], "int32", oshape)
            self.qname[node.output[0]] = Q(tid, None, None, True)
            c2, c3 = self.const(np.zeros(Nn, np.float32)), self.const(np.zeros(Nn, np.int32))
            mode, yzp, lo, hi, ysg = MODE_INT32, 0, 0, 0, True
        else:
            name, ys, yzp, ysg, lo, hi = out_name_params
            self.same_family(node, xq.code, ysg)
            tid = self.define_q(name, ysg, oshape, ys, yzp).tid
            c2, c3 = self.requant_consts(xs, wsb, ys, Nn)
            mode = self.mode
        self.emit(node, Kind.GEMM, [xq.tid], tid,
                  consts=[self.const(w16), self.const(np.asarray(bias, np.int32)), c2, c3],
                  scratch=gemm_scratch(K, Nn, xq.code == I16), M=M, K=K, N=Nn, xzp=xzp,
                  yzp=yzp, qmin=lo, qmax=hi, sg_in=xq.code, sg_out=ysg, mode=mode)

    def op_Gemm(self, node):
        if _attr(node, "transA", 0):
            self.fail(node, "transA=1 is not supported", "transA")
        if float(_attr(node, "alpha", 1.0)) != 1.0 or float(_attr(node, "beta", 1.0)) != 1.0:
            self.fail(node, "alpha and beta must be 1", "alpha")
        xq = self.act(node, node.input[0])
        if len(self.shape(xq.tid)) != 2:
            self.fail(node, "Gemm input must be 2-D", "A")
        tb = _attr(node, "transB", 0)
        w, ws, wzp = self.weight(node, node.input[1], 0 if tb else 1, "B")
        wT = w if tb else w.T
        outp = self.output_q(node, node.output[0])
        b = self.bias(node, node.input[2] if len(node.input) > 2 else None, wT.shape[0],
                      xq.scale, np.broadcast_to(ws, (wT.shape[0],)))
        if b.size == 1:
            b = np.broadcast_to(b, (wT.shape[0],))
        self._fc(node, xq, xq.scale, xq.zp, wT, ws, wzp, b, outp)

    def op_MatMul(self, node):
        a = node.input[0]
        if node.input[1] in self.wconst:
            xq = self.act(node, a)
            w, ws, wzp = self.weight(node, node.input[1], 1, "B")
            if w.ndim != 2:
                self.fail(node, "constant B must be 2-D", "B")
            outp = self.output_q(node, node.output[0])
            self._fc(node, xq, xq.scale, xq.zp, w.T, ws, wzp, np.zeros(w.shape[1], np.int32),
                     outp)
            return
        aq, bq = self.act(node, a), self.act(node, node.input[1])
        outp = self.output_q(node, node.output[0])
        if I16 in (aq.code, bq.code):
            # one input type per kernel: an 8-bit operand next to an int16 one is widened
            aq, bq = self.widen(node, aq), self.widen(node, bq)
        self._matmul(node, aq, bq, aq.scale, aq.zp, bq.scale, bq.zp, outp)

    def _matmul(self, node, aq: Q, bq: Q, as_, azp, bs, bzp, outp, int32_out=False):
        ash, bsh = self.shape(aq.tid), self.shape(bq.tid)
        if len(ash) < 2 or len(bsh) < 2:
            self.fail(node, "MatMul operands must be at least 2-D", "A")
        M, K = ash[-2], ash[-1]
        K2, Nn = bsh[-2], bsh[-1]
        if K != K2:
            self.fail(node, f"inner dimensions differ: {ash} vs {bsh}", "B")
        B = int(np.prod(ash[:-2])) if len(ash) > 2 else 1
        Bb = int(np.prod(bsh[:-2])) if len(bsh) > 2 else 1
        if Bb not in (1, B) or (Bb == B and tuple(bsh[:-2]) != tuple(ash[:-2])[-len(bsh[:-2]):]
                                and len(bsh) > 2):
            self.fail(node, f"batch broadcasting {ash} x {bsh} is not supported", "B")
        wide = aq.code == I16
        if aq.code != bq.code:
            self.fail(node, "A and B must both be int8 or both uint8", "B")
        oshape = tuple(ash[:-2]) + (M, Nn)
        if int32_out:
            tid = self.new_tensor(node.output[0], "int32", oshape)
            self.qname[node.output[0]] = Q(tid, None, None, True)
            mode, yzp, lo, hi, ysg, mult, shift, f = MODE_INT32, 0, 0, 0, True, 0, 0, 0.0
        else:
            name, ys, yzp, ysg, lo, hi = outp
            tid = self.define_q(name, ysg, oshape, ys, yzp).tid
            f = float(rq.ort_multiplier(as_, bs, ys))
            mult, shift = rq.quantize_multiplier(float(np.float32(as_)) * float(np.float32(bs))
                                                 / float(np.float32(ys)))
            mode = self.mode
        self.emit(node, Kind.MATMUL, [aq.tid, bq.tid], tid, floats=[f],
                  scratch=matmul_scratch(K, Nn, wide), B=B, M=M, K=K, N=Nn, azp=azp, bzp=bzp,
                  yzp=yzp, qmin=lo, qmax=hi, sg_in=aq.code, sg_out=ysg, mode=mode,
                  mult=mult, shift=shift, b_batch=int(Bb == B and B > 1))

    def op_QLinearMatMul(self, node):
        aq = self.act(node, node.input[0])
        as_, azp, asg = self.qparams(node, node.input[1], node.input[2])
        ys, yzp, ysg = self.qparams(node, node.input[6], node.input[7])
        lo, hi = rq.qrange(ysg)
        outp = (node.output[0], ys, yzp, ysg, lo, hi)
        if node.input[3] in self.init:
            w = self.init[node.input[3]]
            ws = np.asarray(self.const_input(node, 4, "b_scale"), np.float32).reshape(-1)
            wzp = np.asarray(self.const_input(node, 5, "b_zero_point")).reshape(-1)
            if w.ndim == 2:
                self._fc(node, Q(aq.tid, as_, azp, asg), as_, azp, w.T, ws,
                         wzp.astype(np.int32), np.zeros(w.shape[1], np.int32), outp)
                return
            if ws.size != 1:
                self.fail(node, "a batched constant B must be quantized per tensor", "b_scale")
            self.load_const(node, node.input[3], w)
        bq = self.act(node, node.input[3])
        bs, bzp, bsg = self.qparams(node, node.input[4], node.input[5])
        self._matmul(node, Q(aq.tid, as_, azp, asg), Q(bq.tid, bs, bzp, bsg), as_, azp, bs,
                     bzp, outp)

    def op_MatMulInteger(self, node):
        aq = self.act(node, node.input[0])
        azp = int(self.scalar(node, node.input[2], "a_zero_point")) if len(node.input) > 2 \
            and node.input[2] else 0
        if node.input[1] in self.init:
            w = self.init[node.input[1]]
            wzp = (np.asarray(self.init[node.input[3]]).reshape(-1).astype(np.int32)
                   if len(node.input) > 3 and node.input[3] else np.zeros(1, np.int32))
            if w.ndim == 2:
                self._fc(node, aq, 1.0, azp, w.T, np.ones(1, np.float32), wzp,
                         np.zeros(w.shape[1], np.int32), None, int32_out=True)
                return
            if wzp.size != 1:
                self.fail(node, "a batched constant B needs a scalar zero point", "b_zero_point")
            self.load_const(node, node.input[1], w)
        bq = self.act(node, node.input[1])
        bzp = int(self.scalar(node, node.input[3], "b_zero_point")) if len(node.input) > 3 \
            and node.input[3] else 0
        self._matmul(node, aq, bq, 1.0, azp, 1.0, bzp, None, int32_out=True)

    def op_QGemm(self, node):
        if _attr(node, "transA", 0) or float(_attr(node, "alpha", 1.0)) != 1.0:
            self.fail(node, "transA=1 / alpha != 1 are not supported", "alpha")
        aq = self.act(node, node.input[0])
        as_, azp, asg = self.qparams(node, node.input[1], node.input[2])
        w = self.init.get(node.input[3])
        if w is None:
            self.fail(node, "B must be a constant", "B")
        ws = np.asarray(self.const_input(node, 4, "b_scale"), np.float32).reshape(-1)
        wzp = np.asarray(self.const_input(node, 5, "b_zero_point")).reshape(-1)
        wT = w if _attr(node, "transB", 0) else w.T
        b = (np.asarray(self.init[node.input[6]]).reshape(-1) if len(node.input) > 6
             and node.input[6] else np.zeros(wT.shape[0], np.int32))
        if len(node.input) < 8 or not node.input[7]:
            self.fail(node, "float output (no y_scale) is not supported", "y_scale")
        ys, yzp, ysg = self.qparams(node, node.input[7],
                                    node.input[8] if len(node.input) > 8 else None)
        lo, hi = rq.qrange(ysg)
        self._fc(node, Q(aq.tid, as_, azp, asg), as_, azp, wT, ws, wzp.astype(np.int32),
                 np.broadcast_to(b, (wT.shape[0],)), (node.output[0], ys, yzp, ysg, lo, hi))

    # -- pooling ---------------------------------------------------------------------------
    def _pool_geometry(self, node, shape):
        if len(shape) != 4:
            self.fail(node, "only 2-D pooling (4-D tensors) is supported", "kernel_shape")
        N, C, H, W = shape
        kh, kw = _attr(node, "kernel_shape")
        sh, sw = _attr(node, "strides", [1, 1])
        dh, dw = _attr(node, "dilations", [1, 1])
        pads = _attr(node, "pads", [0, 0, 0, 0])
        pt, pl, pb, pr, ekh, ekw = self.conv_geometry(node, H, W, kh, kw, sh, sw, dh, dw,
                                                      (pads[0], pads[1], pads[2], pads[3]))
        ceil = _attr(node, "ceil_mode", 0)
        if ceil:
            OH = -(-(H + pt + pb - ekh) // sh) + 1
            OW = -(-(W + pl + pr - ekw) // sw) + 1
            if (OH - 1) * sh >= H + pt:
                OH -= 1
            if (OW - 1) * sw >= W + pl:
                OW -= 1
        else:
            OH = (H + pt + pb - ekh) // sh + 1
            OW = (W + pl + pr - ekw) // sw + 1
        return N, C, H, W, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, OH, OW

    def op_MaxPool(self, node):
        xq = self.act(node, node.input[0])
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, "the Indices output is not supported", "Indices")
        if _attr(node, "storage_order", 0):
            self.fail(node, "storage_order=1 is not supported", "storage_order")
        N, C, H, W, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, OH, OW = self._pool_geometry(
            node, self.shape(xq.tid))
        self._layout(node, xq, (N, C, OH, OW), Kind.MAXPOOL, N=N, C=C, H=H, W=W, kh=kh,
                     kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, dh=dh, dw=dw, OH=OH, OW=OW,
                     sg_in=xq.code)

    def op_AveragePool(self, node):
        self._avgpool(node, self.act(node, node.input[0]), None)

    def _qlinear_unary(self, node):
        """(X, x_scale, x_zp, y_scale, y_zp) of a com.microsoft QLinear unary op."""
        if _attr(node, "channels_last", 0):
            self.fail(node, "channels_last=1 is not supported", "channels_last")
        xq = self.act(node, node.input[0])
        xs, xzp, xsg = self.qparams(node, node.input[1], node.input[2] if len(node.input) > 2
                                    and node.input[2] else None)
        ys, yzp, ysg = self.qparams(node, node.input[3], node.input[4] if len(node.input) > 4
                                    and node.input[4] else None)
        lo, hi = rq.qrange(ysg)
        return Q(xq.tid, xs, xzp, xsg), (node.output[0], ys, yzp, ysg, lo, hi)

    def op_QLinearAveragePool(self, node):
        self._avgpool(node, *self._qlinear_unary(node))

    def op_QLinearGlobalAveragePool(self, node):
        self._gap(node, *self._qlinear_unary(node))

    def op_QLinearSigmoid(self, node):
        self._lut_op(node, SIGMOID, *self._qlinear_unary(node))

    def op_QLinearLeakyRelu(self, node):
        alpha = float(_attr(node, "alpha", 0.01))
        self._lut_op(node, lambda x: np.where(x >= 0, x, x * np.float32(alpha)),
                     *self._qlinear_unary(node))

    def op_QLinearSoftmax(self, node):
        self._softmax(node, *self._qlinear_unary(node))

    def op_QLinearConcat(self, node):
        ys, yzp, ysg = self.qparams(node, node.input[0], node.input[1])
        qs = []
        for i in range(2, len(node.input), 3):
            xq = self.act(node, node.input[i])
            xs, xzp, xsg = self.qparams(node, node.input[i + 1], node.input[i + 2])
            qs.append(Q(xq.tid, xs, xzp, xsg))
        lo, hi = rq.qrange(ysg)
        self._concat(node, qs, (node.output[0], ys, yzp, ysg, lo, hi))

    def _avgpool(self, node, xq: Q, outp):
        N, C, H, W, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, OH, OW = self._pool_geometry(
            node, self.shape(xq.tid))
        if (dh, dw) != (1, 1):
            self.fail(node, "dilations are not supported", "dilations")
        if (kh, kw) == (H, W) and (pt, pl, pb, pr) == (0, 0, 0, 0):
            # ORT QLinearAveragePool falls back to its global average pool here.
            self._gap(node, xq, outp)
            return
        qdq = outp is None  # ORT runs QDQ int8 AveragePool in its uint8 domain
        name, ys, yzp, ysg, lo, hi = outp or self.output_q(node, node.output[0])
        if xq.code == I16 and kh * kw > MAX_REDUCTION:
            self.fail(node, f"a {kh}x{kw} window of int16 values can overflow the int32 sum",
                      "kernel_shape")
        wide = I16 in (xq.code, ysg)  # ORT keeps it in float: no uint8 domain
        tid = self.define_q(name, ysg, (N, C, OH, OW), ys, yzp).tid
        mult, shift = rq.quantize_multiplier(float(xq.scale) / float(ys))
        self.emit(node, Kind.AVGPOOL, [xq.tid], tid, floats=[xq.scale, ys], N=N, C=C, H=H,
                  W=W, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, OH=OH, OW=OW,
                  count_include_pad=_attr(node, "count_include_pad", 0), xzp=xq.zp, yzp=yzp,
                  qmin=lo, qmax=hi, sg_in=xq.code, sg_out=ysg, mode=self.mode, mult=mult,
                  shift=shift, off=128 if xq.code == I8 and qdq and not wide else 0)

    def op_GlobalAveragePool(self, node):
        self._gap(node, self.act(node, node.input[0]), None)

    def _gap(self, node, xq: Q, outp):
        shape = self.shape(xq.tid)
        if len(shape) < 3:
            self.fail(node, "input must be at least 3-D", "X")
        NC, HW = shape[0] * shape[1], int(np.prod(shape[2:]))
        name, ys, yzp, ysg, lo, hi = outp or self.output_q(node, node.output[0])
        if xq.code == I16 and HW > MAX_REDUCTION:
            # |x - zp| <= 65535, so 2^15 of them still fit the kernel's int32 sum
            self.fail(node, f"an image of {HW} int16 values can overflow the int32 sum", "X")
        tid = self.define_q(name, ysg, shape[:2] + (1,) * (len(shape) - 2), ys, yzp).tid
        # ORT: scale = x_scale / (y_scale * image_size), float32 (qlgavgpool.cpp)
        f = np.float32(np.float32(xq.scale) / np.float32(np.float32(ys) * np.float32(HW)))
        mult, shift = rq.quantize_multiplier(float(xq.scale) / (float(ys) * HW))
        self.emit(node, Kind.GLOBALAVGPOOL, [xq.tid], tid, floats=[f], NC=NC, HW=HW,
                  xzp=xq.zp, yzp=yzp, qmin=lo, qmax=hi, sg_in=xq.code, sg_out=ysg,
                  mode=self.mode, mult=mult, shift=shift)

    # -- elementwise -----------------------------------------------------------------------
    def _broadcast(self, node, ash, bsh):
        out = np.broadcast_shapes(ash, bsh)
        r = len(out)
        a = (1,) * (r - len(ash)) + tuple(ash)
        b = (1,) * (r - len(bsh)) + tuple(bsh)
        groups: list[list] = []  # [pattern, size]
        for i in range(r):
            if out[i] == 1:
                continue
            pat = (a[i] != 1, b[i] != 1)
            if groups and groups[-1][0] == pat:
                groups[-1][1] *= out[i]
            else:
                groups.append([pat, out[i]])
        if len(groups) > 3:
            self.fail(node, f"broadcast of {ash} and {bsh} is too irregular", "B")
        while len(groups) < 3:
            groups.insert(0, [(True, True), 1])
        sizes = [g[1] for g in groups]

        def strides(which):
            st, acc = [0, 0, 0], 1
            for i in (2, 1, 0):
                if groups[i][0][which]:
                    st[i] = acc
                    acc *= sizes[i]
            return st

        return tuple(out), sizes, strides(0), strides(1)

    def load_const(self, node, name: str, arr: np.ndarray) -> Q:
        """Materialise a constant int8/uint8 operand in the arena (a LOAD_CONST op)."""
        if arr.dtype not in (np.int8, np.uint8):
            self.fail(node, f"constant operand type {arr.dtype} is not supported", name)
        tid = self.new_tensor(name, str(arr.dtype), arr.shape if arr.ndim else (1,))
        self.ops.append(Op(Kind.LOAD_CONST, node.name or node.output[0], node.op_type, (), tid,
                           (self.const(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)),),
                           {"nbytes": int(arr.size)}))
        q = Q(tid, None, None, arr.dtype == np.int8)
        self.qname[name] = q
        return q

    def _binary_inputs(self, node, a_name, b_name):
        qs = []
        for nm in (a_name, b_name):
            if nm in self.wconst:  # constant operand: materialise it as an arena tensor
                q, s, zp, _ = self.wconst[nm]
                if s.size != 1 or q.dtype not in (np.int8, np.uint8):
                    self.fail(node, "a constant operand must be per-tensor int8/uint8", "B")
                tid = self.new_tensor(nm, str(q.dtype), q.shape if q.ndim else (1,))
                cq = Q(tid, float(s.reshape(-1)[0]), int(zp.reshape(-1)[0]), q.dtype == np.int8)
                self.ops.append(Op(Kind.LOAD_CONST, node.name or node.output[0], node.op_type,
                                   (), tid, (self.const(q.reshape(-1).view(np.uint8)),),
                                   {"nbytes": int(q.size)}))
                qs.append(cq)
            else:
                qs.append(self.act(node, nm))
        return qs

    def op_Add(self, node):
        self._binary(node, Kind.ADD)

    def op_Mul(self, node):
        self._binary(node, Kind.MUL)

    def op_QLinearAdd(self, node):
        self._qlinear_binary(node, Kind.ADD, u8_domain=False)

    def op_QLinearMul(self, node):
        self._qlinear_binary(node, Kind.MUL)

    def _qlinear_binary(self, node, kind, **emit):
        """com.microsoft QLinearAdd/QLinearMul: a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp."""
        aq = self.act(node, node.input[0])
        bq = self.act(node, node.input[3])
        as_, azp, asg = self.qparams(node, node.input[1], node.input[2])
        bs, bzp, bsg = self.qparams(node, node.input[4], node.input[5])
        ys, yzp, ysg = self.qparams(node, node.input[6], node.input[7])
        lo, hi = rq.qrange(ysg)
        self._binary_emit(node, kind, Q(aq.tid, as_, azp, asg), Q(bq.tid, bs, bzp, bsg),
                          (node.output[0], ys, yzp, ysg, lo, hi), **emit)

    def _binary(self, node, kind):
        aq, bq = self._binary_inputs(node, node.input[0], node.input[1])
        outp = self.output_q(node, node.output[0])
        self._binary_emit(node, kind, aq, bq, outp)

    def widen(self, node, q: Q) -> Q:
        """An 8-bit activation as int16, losslessly: scale / 128, zero point 0, values
        (q - zp) * 128 in [-32640, 32640]. Dividing a float32 scale by 2^7 is exact, so
        DequantizeLinear gives the same float32 values as before (ORT's float path sees no
        difference), and the REQUANT multiplier is exactly 128 in both modes."""
        if q.code == I16:
            return q
        name = f"{self.tensors[q.tid].name}__int16"
        if name in self.qname:
            return self.qname[name]
        self.requant_to(node, q, name, float(np.float32(q.scale) / np.float32(128)), 0, I16)
        return self.qname[name]

    def _binary_emit(self, node, kind, aq: Q, bq: Q, outp, u8_domain: bool = True):
        """u8_domain: ORT converts a QDQ int8 Add to uint8 (QDQS8ToU8Transformer) on x86-64;
        an explicit QLinearAdd node runs its int8 kernel as is."""
        name, ys, yzp, ysg, lo, hi = outp
        wide = I16 in (aq.code, bq.code, ysg)
        if wide:
            # One input type per kernel: an 8-bit operand next to an int16 one is widened.
            aq, bq = self.widen(node, aq), self.widen(node, bq)
        elif not (aq.code == bq.code == ysg):
            self.fail(node, "inputs and output must all be int8 or all uint8", "B")
        oshape, sizes, sa, sb = self._broadcast(node, self.shape(aq.tid), self.shape(bq.tid))
        tid = self.define_q(name, ysg, oshape, ys, yzp).tid
        common = dict(outer=sizes[0], mid=sizes[1], inner=sizes[2], a_so=sa[0], a_sm=sa[1],
                      a_si=sa[2], b_so=sb[0], b_sm=sb[1], b_si=sb[2], azp=aq.zp, bzp=bq.zp,
                      yzp=yzp, qmin=lo, qmax=hi, sg_in=aq.code, sg_out=ysg, mode=self.mode)
        # ORT never fuses a node with an int16 tensor: it runs DQ -> float Add -> Q, which
        # the femu path reproduces exactly.
        femu = int(self.mode == MODE_ORT
                   and (wide or (u8_domain and node.name in self.ort_float)))
        fl = [float(np.float32(aq.scale)), float(np.float32(bq.scale)), float(np.float32(ys))]
        if kind == Kind.ADD:
            off = 128 if ysg == I8 and u8_domain and not femu else 0  # ORT's uint8 domain
            p = rq.add_params(aq.scale, bq.scale, ys, aq.zp + off, bq.zp + off, yzp + off,
                              left_shift=rq.ADD_LEFT_SHIFT_INT16 if wide else
                              rq.ADD_LEFT_SHIFT)
            self.emit(node, kind, [aq.tid, bq.tid], tid,
                      floats=fl if femu else p["floats"], femu=femu, **common,
                      mult_a=p["mult_a"], shift_a=p["shift_a"], mult_b=p["mult_b"],
                      shift_b=p["shift_b"], mult_y=p["mult_y"], shift_y=p["shift_y"],
                      left_shift=p["left_shift"], off=off)
        else:
            f = rq.ort_multiplier(aq.scale, bq.scale, ys)
            mult, shift = rq.quantize_multiplier(float(np.float32(aq.scale)) *
                                                 float(np.float32(bq.scale)) / float(ys))
            self.emit(node, kind, [aq.tid, bq.tid], tid, floats=fl if femu else [f],
                      femu=femu, **common, mult=mult, shift=shift)

    def op_Relu(self, node):
        self._clamp(node)

    def op_Clip(self, node):
        self._clamp(node)

    def _clamp(self, node):
        xq = self.act(node, node.input[0])
        lo_f, hi_f = self.clip_bounds(node)
        qmin, qmax = rq.qrange(xq.code)
        lo = qmin if lo_f == -math.inf else max(qmin, min(qmax, xq.zp + math.ceil(
            np.float32(lo_f) / np.float32(xq.scale) - 1e-6)))
        hi = qmax if hi_f == math.inf else min(qmax, max(qmin, xq.zp + math.floor(
            np.float32(hi_f) / np.float32(xq.scale) + 1e-6)))
        self._layout(node, xq, self.shape(xq.tid), Kind.CLAMP,
                     n=int(np.prod(self.shape(xq.tid))), lo=lo, hi=hi, sg_in=xq.code)

    def _lut_op(self, node, fn, xq: Q | None = None, outp=None):
        xq = xq or self.act(node, node.input[0])
        name, ys, yzp, ysg, lo, hi = outp or self.output_q(node, node.output[0])
        tid = self.define_q(name, ysg, self.shape(xq.tid), ys, yzp).tid
        raw = np.arange(256, dtype=np.int32)
        vals = (raw.astype(np.uint8).view(np.int8).astype(np.int32) if xq.code else raw)
        x = (vals - xq.zp).astype(np.float32) * np.float32(xq.scale)
        y = fn(x.astype(np.float32)).astype(np.float32)
        q = np.clip(np.rint(y / np.float32(ys)) + yzp, lo, hi).astype(np.int32)
        table = (q & 0xFF).astype(np.uint8)
        self.emit(node, Kind.LUT, [xq.tid], tid, consts=[self.const(table)],
                  n=int(np.prod(self.shape(xq.tid))), sg_in=xq.code)

    def op_Sigmoid(self, node):
        self._lut_op(node, SIGMOID)

    def op_Tanh(self, node):
        self._lut_op(node, lambda x: np.tanh(x.astype(np.float64)))

    def op_LeakyRelu(self, node):
        alpha = float(_attr(node, "alpha", 0.01))
        self._lut_op(node, lambda x: np.where(x >= 0, x, x * np.float32(alpha)))

    def op_Softmax(self, node):
        self._softmax(node, self.act(node, node.input[0]), None)

    def _softmax(self, node, xq: Q, outp):
        shape = self.shape(xq.tid)
        opset = _attr(node, "opset") or next(
            (o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        axis = _attr(node, "axis", -1 if opset >= 13 else 1) % len(shape)
        if axis != len(shape) - 1:
            self.fail(node, "softmax only over the last axis", "axis")
        name, ys, yzp, ysg, lo, hi = outp or self.output_q(node, node.output[0])
        if ysg != xq.code:
            self.fail(node, "input and output must both be int8 or both uint8", "y")
        tid = self.define_q(name, ysg, shape, ys, yzp).tid
        table, yscale = softmax_table(float(xq.scale), float(ys), shape[-1], xq.code,
                                      self.mode)
        self.emit(node, Kind.SOFTMAX, [xq.tid], tid, consts=[self.const(table)],
                  floats=[yscale], rows=int(np.prod(shape[:-1])), cols=shape[-1],
                  sg_in=xq.code, sg_out=ysg, yzp=yzp, qmin=lo, qmax=hi, mode=self.mode,
                  yscale_int=int(yscale), off=128 if ysg and outp is None else 0)

    # -- layout ----------------------------------------------------------------------------
    def _layout(self, node, xq: Q, oshape, kind=Kind.COPY, consts=(), **ints):
        out = self.output_q(node, node.output[0], allow_propagate=xq)
        name, scale, zp, code, lo, hi = out
        tmp_name = name if (scale, zp, code) == (xq.scale, xq.zp, xq.code) \
            else name + "__pre"
        tid = self.new_tensor(tmp_name, self.tensors[xq.tid].dtype, oshape)
        if kind == Kind.COPY:
            ints = {"nbytes": self.tensors[tid].nbytes}
        self.emit(node, kind, [xq.tid], tid, consts=consts, **ints)
        q = Q(tid, xq.scale, xq.zp, xq.code)
        if tmp_name != name:
            self.requant_to(node, q, name, scale, zp, code)
        else:
            self.qname[name] = q
        self.qval[node.output[0]] = self.qname[name]

    def op_Reshape(self, node):
        xq = self.act(node, node.input[0])
        shape = self.shape(xq.tid)
        target = [int(v) for v in self.const_input(node, 1, "shape").reshape(-1)]
        if _attr(node, "allowzero", 0) and 0 in target:
            self.fail(node, "allowzero=1 with a zero in the shape (an empty tensor)",
                      "allowzero")
        target = [shape[i] if v == 0 else v for i, v in enumerate(target)]
        if -1 in target:
            known = int(np.prod([v for v in target if v != -1]))
            target[target.index(-1)] = int(np.prod(shape)) // max(known, 1)
        if int(np.prod(target)) != int(np.prod(shape)):
            self.fail(node, f"cannot reshape {shape} to {target}", "shape")
        self._layout(node, xq, tuple(target))

    def op_Flatten(self, node):
        xq = self.act(node, node.input[0])
        shape = self.shape(xq.tid)
        axis = _attr(node, "axis", 1) % (len(shape) + 1) if shape else 0
        self._layout(node, xq, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))

    def _axes(self, node):
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const_input(node, 1, "axes").reshape(-1).tolist()
        return axes

    def op_Squeeze(self, node):
        xq = self.act(node, node.input[0])
        shape = self.shape(xq.tid)
        axes = self._axes(node)
        axes = [a % len(shape) for a in axes] if axes is not None else \
            [i for i, s in enumerate(shape) if s == 1]
        self._layout(node, xq, tuple(s for i, s in enumerate(shape) if i not in axes) or (1,))

    def op_Unsqueeze(self, node):
        xq = self.act(node, node.input[0])
        shape = list(self.shape(xq.tid))
        axes = self._axes(node)
        r = len(shape) + len(axes)
        for a in sorted(x % r for x in axes):
            shape.insert(a, 1)
        self._layout(node, xq, tuple(shape))

    def op_Identity(self, node):
        xq = self.act(node, node.input[0])
        self._layout(node, xq, self.shape(xq.tid))

    def op_Dropout(self, node):
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, "the mask output is not supported", "mask")
        xq = self.act(node, node.input[0])
        self._layout(node, xq, self.shape(xq.tid))

    def op_Transpose(self, node):
        xq = self.act(node, node.input[0])
        shape = self.shape(xq.tid)
        r = len(shape)
        if r > 6:
            self.fail(node, "more than 6 dimensions", "perm")
        perm = _attr(node, "perm", list(range(r))[::-1])
        oshape = tuple(shape[p] for p in perm)
        strides = [int(np.prod(shape[i + 1:])) for i in range(r)]
        d = [1] * (6 - r) + list(oshape)
        s = [0] * (6 - r) + [strides[p] for p in perm]
        if xq.code == I16:
            # The kernel moves bytes: an int16 tensor is a byte tensor with one more axis of
            # 2 that stays last (strides in bytes).
            if r > 5:
                self.fail(node, "an int16 transpose of more than 5 dimensions", "perm")
            d = d[1:] + [2]
            s = [2 * v for v in s[1:]] + [1]
        self._layout(node, xq, oshape, Kind.TRANSPOSE,
                     **{f"d{i}": d[i] for i in range(6)}, **{f"s{i}": s[i] for i in range(6)})

    def op_Concat(self, node):
        self._concat(node, [self.act(node, x) for x in node.input], None)

    def _concat(self, node, qs, outp):
        axis = _attr(node, "axis")
        shapes = [self.shape(q.tid) for q in qs]
        r = len(shapes[0])
        axis %= r
        for s in shapes:
            if len(s) != r or any(s[i] != shapes[0][i] for i in range(r) if i != axis):
                self.fail(node, f"input shapes {shapes} do not concatenate on axis {axis}",
                          "axis")
        oshape = list(shapes[0])
        oshape[axis] = sum(s[axis] for s in shapes)
        name, ys, yzp, ysg, lo, hi = outp or self.output_q(node, node.output[0])
        tid = self.define_q(name, ysg, tuple(oshape), ys, yzp).tid
        outer = int(np.prod(oshape[:axis]))
        inner_out = int(np.prod(oshape[axis:]))
        off = 0
        if I16 in [q.code for q in qs] + [ysg]:
            # ORT runs an int16 Concat as DQ -> float Concat -> Q: each input is Q(DQ(x))
            # with the output's parameters (a REQUANT op, exact in `ort` mode), then copied
            # into its slot; the parameters count bytes.
            size = ITEMSIZE[CODE_DTYPE[ysg]]
            for i, (q, s) in enumerate(zip(qs, shapes)):
                if (q.scale, q.zp, q.code) != (ys, yzp, ysg):
                    part = f"{name}__part{i}"
                    self.requant_to(node, q, part, ys, yzp, ysg)
                    q = self.qname[part]
                inner_in = int(np.prod(s[axis:]))
                self.emit(node, Kind.CONCAT_PART, [q.tid], tid, outer=outer,
                          inner_in=inner_in * size, inner_out=inner_out * size,
                          offset=off * size, use_lut=0)
                off += inner_in
            return
        for q, s in zip(qs, shapes):
            if q.code != ysg:
                self.fail(node, "inputs and output must all be int8 or all uint8", "inputs")
            inner_in = int(np.prod(s[axis:]))
            consts, use_lut = (), 0
            if (q.scale, q.zp) != (ys, yzp):
                # ORT QLinearConcat: per-input table of Q(DQ(x)) (QlinearBuildLookupTable).
                consts, use_lut = (self.const(self.requant_table(q, ys, yzp, ysg)),), 1
            self.emit(node, Kind.CONCAT_PART, [q.tid], tid, consts=consts, outer=outer,
                      inner_in=inner_in, inner_out=inner_out, offset=off, use_lut=use_lut)
            off += inner_in

    def requant_table(self, q: Q, ys, yzp, ysg) -> np.ndarray:
        raw = np.arange(256, dtype=np.int32)
        vals = raw.astype(np.uint8).view(np.int8).astype(np.int32) if q.code else raw
        qmin, qmax = rq.qrange(ysg)
        if self.mode == MODE_ORT:
            x = (vals - q.zp).astype(np.float32) * np.float32(q.scale)
            y = np.clip(np.rint(x / np.float32(ys)), qmin - yzp, qmax - yzp) + yzp
        else:
            m, s = rq.quantize_multiplier(float(q.scale) / float(ys))
            y = np.array([_mbqm(int(v - q.zp), m, s) for v in vals]) + yzp
            y = np.clip(y, qmin, qmax)
        return (y.astype(np.int32) & 0xFF).astype(np.uint8)

    def op_Pad(self, node):
        xq = self.act(node, node.input[0])
        shape = self.shape(xq.tid)
        mode = _attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            self.fail(node, f"mode {mode} is not supported (constant only)", "mode")
        pads = _attr(node, "pads")
        if pads is None:
            pads = self.const_input(node, 1, "pads").reshape(-1).tolist()
        if len(node.input) > 3 and node.input[3]:
            self.fail(node, "the axes input is not supported", "axes")
        value = 0
        if len(node.input) > 2 and node.input[2]:
            v = self.init.get(node.input[2])
            if v is None and node.input[2] in self.wconst:
                qv, _, _, _ = self.wconst[node.input[2]]
                value = int(qv.reshape(-1)[0])
            elif v is not None:
                value = int(v.reshape(-1)[0])
            else:
                self.fail(node, "constant_value must be a constant", "constant_value")
        else:
            value = xq.zp
        if len(shape) != 4 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            self.fail(node, "only non-negative spatial padding of 4-D tensors", "pads")
        N, C, H, W = shape
        OH, OW = H + pads[2] + pads[6], W + pads[3] + pads[7]
        self._layout(node, xq, (N, C, OH, OW), Kind.PAD, N=N, C=C, H=H, W=W, OH=OH, OW=OW,
                     pt=pads[2], pl=pads[3], value=value)

    def op_Resize(self, node):
        xq = self.act(node, node.input[0])
        shape = self.shape(xq.tid)
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "nearest":
            self.fail(node, f"mode {mode} is not supported (nearest only)", "mode")
        if len(shape) != 4:
            self.fail(node, "only 4-D inputs", "X")
        ctm = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
        nm = _attr(node, "nearest_mode", b"round_prefer_floor")
        nm = nm.decode() if isinstance(nm, bytes) else nm
        scales = sizes = None
        if len(node.input) > 2 and node.input[2] and node.input[2] in self.init \
                and self.init[node.input[2]].size:
            scales = self.init[node.input[2]].astype(np.float32).reshape(-1)
        if len(node.input) > 3 and node.input[3] and node.input[3] in self.init:
            sizes = self.init[node.input[3]].astype(np.int64).reshape(-1)
        if sizes is not None:
            oshape = tuple(int(s) for s in sizes)
            scales = np.array([o / i for o, i in zip(oshape, shape)], np.float32)
        elif scales is not None:
            oshape = tuple(int(math.floor(i * s)) for i, s in zip(shape, scales))
        else:
            self.fail(node, "scales or sizes must be constant", "scales")
        if oshape[:2] != shape[:2]:
            self.fail(node, "only spatial resizing", "scales")
        idx = []
        for o_len, i_len, s in ((oshape[2], shape[2], scales[2]), (oshape[3], shape[3], scales[3])):
            for o in range(o_len):
                if ctm == "asymmetric":
                    x = o / s
                elif ctm == "half_pixel":
                    x = (o + 0.5) / s - 0.5
                elif ctm == "pytorch_half_pixel":
                    x = (o + 0.5) / s - 0.5 if o_len > 1 else 0.0
                elif ctm == "align_corners":
                    x = o * (i_len - 1) / (o_len - 1) if o_len > 1 else 0.0
                elif ctm == "tf_half_pixel_for_nn":
                    x = (o + 0.5) / s
                else:
                    self.fail(node, f"coordinate_transformation_mode {ctm}", 
                              "coordinate_transformation_mode")
                if nm == "round_prefer_floor":
                    v = math.ceil(x - 0.5)
                elif nm == "round_prefer_ceil":
                    v = math.floor(x + 0.5)
                elif nm == "floor":
                    v = math.floor(x)
                else:
                    v = math.ceil(x)
                idx.append(min(max(int(v), 0), i_len - 1))
        W, OW = shape[3], oshape[3]
        if xq.code == I16:
            # The kernel moves bytes: an int16 row of W values is a byte row of 2W, and
            # output byte 2*ox + b comes from input byte 2*idx[ox] + b.
            cols = idx[oshape[2]:]
            idx = idx[:oshape[2]] + [2 * c + b for c in cols for b in (0, 1)]
            W, OW = 2 * W, 2 * OW
        self._layout(node, xq, oshape, Kind.RESIZE_NEAREST,
                     consts=(self.const(np.array(idx, np.int32)),), NC=shape[0] * shape[1],
                     H=shape[2], W=W, OH=oshape[2], OW=OW)


def SIGMOID(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def softmax_table(x_scale: float, y_scale: float, reduce_len: int, signed: bool, mode: int):
    """QLinearSoftmax's exp table (ORT QlinearBuildLookupTableUint32) and floor(1 / y_scale).

    exp((i - 255 + bit_shift) * x_scale) for i in 0..255, stored at uint8(i - 128) for int8
    inputs; bit_shift keeps the sum of `reduce_len` entries below the table type's maximum
    with 5 (float32, ``ort``) or 3 (uint32, ``fixed-point``) bits in reserve.
    """
    is_float = mode == MODE_ORT
    tmax = float(np.finfo(np.float32).max) if is_float else float(2 ** 32 - 1)
    bit_shift = math.log(tmax / reduce_len)
    bit_shift = max(0.0, bit_shift - (5 if is_float else 3)) / float(np.float32(x_scale))
    table = np.zeros(256, np.float32 if is_float else np.uint32)
    for i in range(256):
        v = math.exp((i - 255 + bit_shift) * float(np.float32(x_scale)))
        idx = (i - 128) & 0xFF if signed else i
        table[idx] = np.float32(v) if is_float else min(int(v), 2 ** 32 - 1)
    yscale = float(np.floor(np.float32(1.0) / np.float32(y_scale)))
    return (table if is_float else table.view(np.int32)), yscale


def _mbqm(x: int, m: int, shift: int) -> int:
    """Python model of MultiplyByQuantizedMultiplier (for tables and tests)."""
    ls, rs = (shift, 0) if shift > 0 else (0, -shift)
    x = max(-(1 << 31), min((1 << 31) - 1, x * (1 << ls)))
    if x == m == -(1 << 31):
        hi = (1 << 31) - 1
    else:
        ab = x * m
        nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
        v = ab + nudge
        hi = abs(v) >> 31
        hi = hi if v >= 0 else -hi
    if rs == 0:
        return hi
    mask = (1 << rs) - 1
    rem = hi & mask
    thr = (mask >> 1) + (1 if hi < 0 else 0)
    return (hi >> rs) + (1 if rem > thr else 0)


# Ops that read a dequantized activation as integers (no float tensor needed).
QUANT_CONSUMERS = {
    "Conv", "Gemm", "MatMul", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Concat", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
    "Transpose", "Pad", "Resize", "Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "Softmax",
    "QuantizeLinear",
}

SUPPORTED_OPS = frozenset(
    {n[3:] for n in dir(Lowering) if n.startswith("op_")} | {"QuantizeLinear", "DequantizeLinear"}
)


def lower(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
          requant: str, ort_float: frozenset[str] = frozenset()) -> Program:
    """Lower `model` to a Program. Raises LoweringError naming the first bad node.

    `ort_float`: names of nodes ONNX Runtime keeps in float (compat.ort_float_nodes); in
    `ort` mode their elementwise ops are emulated in float32 instead of as QLinear kernels.
    """
    return Lowering(model, input_shapes, requant, ort_float).run()
