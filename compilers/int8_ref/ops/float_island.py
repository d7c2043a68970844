"""Float islands: elementwise float ops between a DequantizeLinear and a QuantizeLinear, run
as table lookups.

ONNX Runtime fuses only a few unary ops into QLinear kernels; every other elementwise op in a
QDQ graph (HardSigmoid, HardSwish, Erf, Gelu, Sqrt, Tanh, Div or Pow by a constant, a Mul or
Add by a float constant, x * sigmoid(x) written as a Mul of x with its own Sigmoid ...) it
runs in float32 between the DequantizeLinear of its input and the QuantizeLinear of its
result. When such a group of nodes reads one 8-bit activation x (through one or more
DequantizeLinear nodes) and otherwise only constants, each of its quantized results is a
function of x's code alone — of the code and the channel when a constant varies along some
axes — so int8-ref computes it as a 256-entry table per channel with ONNX Runtime's own
arithmetic (ops/_ort_tables.py: an ORT session of the same nodes over all 256 codes) and the
firmware looks it up: `LUT` (one table) or `LUT_CHANNELS` (one per channel). Bit-exact with
ORT by construction, in both requantization modes.

The island is found from its first node in graph order: it grows over the consumers of what
it computes, and over the producers of an operand it still lacks, as long as every node is
elementwise and reads only the activation, constants and island values; each value leaving
the island must go to exactly one QuantizeLinear. Anything else — a second activation, a
value read in float outside the island, a float graph output, a constant that would broadcast
the activation to a larger shape — is refused naming the node.

The ops registered here lower only as islands. Add, Mul, Sub, Div and Sum have integer
kernels for two activations; `claims` hands them to the island when they read one activation
and a float constant or do not end at a QuantizeLinear. Eval: kernels/lut.pxi,
kernels/lut_channels.pxi.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper, shape_inference

from ..kernel_abi import OnnxOp
from ..program import I16, Q
from . import _ort_tables, lut, lut_channels, reducemean
from .constant import constant_value

# Elementwise ONNX ops an island may contain (NumPy broadcasting of constant operands).
UNARY = ("Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Celu", "Cos",
         "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish",
         "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Round", "Selu", "Sigmoid", "Sign",
         "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Swish", "Tan", "Tanh",
         "ThresholdedRelu", "Cast", "CastLike", "Not")
OTHERS = ("Pow", "Min", "Max", "Mean", "Mod", "PRelu", "Where", "Less", "LessOrEqual",
          "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Xor", "BitShift")
# Ops with a kernel of their own elsewhere that may also be island members.
SHARED = ("Add", "Sub", "Mul", "Div", "Sum", "Relu", "Clip", "Identity")
ELEMENTWISE = frozenset(UNARY + OTHERS + SHARED)
# Never the start of an island: they work on the integers (CLAMP, COPY) and keep the input's
# quantization, so what reads them still reads a dequantized activation.
NEVER_FIRST = frozenset({"Relu", "Clip", "Identity"})

MAX_CHANNELS = 4096  # LUT_CHANNELS tables: at most 1 MiB of constants per op


@dataclass
class Island:
    """What an island reads and computes: its node indices in graph order, the names of the
    DequantizeLinear outputs of its activation, its constant operands by name (initializers,
    Constant nodes' values, DequantizeLinear of an initializer: their shapes decide the
    tables), the initializers and constant-making nodes its model needs, and its exits:
    each float value read outside the island, with the indices of the nodes that read it."""

    nodes: list[int] = field(default_factory=list)
    dequantized: set[str] = field(default_factory=set)
    operands: dict[str, np.ndarray] = field(default_factory=dict)  # constant operands
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    constant_nodes: list[int] = field(default_factory=list)  # DQ of initializers, Constant
    exits: list[tuple[str, list[int]]] = field(default_factory=list)


@dataclass(frozen=True)
class Exit:
    """One table the island emits: the tensor it writes, the QuantizeLinear node it stands
    for (None for a float value read in float), and that tensor's type code (FLOAT for a
    float graph output) and quantization."""

    name: str
    quantizer: int | None
    code: int
    scale: float = 1.0
    zp: int = 0


FLOAT = -1  # an Exit's code for a float32 graph output
IN_FLOAT = (FLOAT, I16, reducemean.WIDE)  # exits ORT reads in float (not through a Q)


class _NotAnIsland(Exception):
    pass


def _producers(low) -> dict[str, int]:
    return {o: i for i, n in enumerate(low.g.node) for o in n.output if o}


def _constant(low, name: str, producers: dict[str, int]):
    """(value, index of the node that makes it or None) of a constant operand, else None."""
    if name in low.init:
        return low.init[name], None
    i = producers.get(name)
    if i is None:
        return None
    node = low.g.node[i]
    if node.op_type == "Constant" and constant_value(node) is not None:
        return constant_value(node), i
    if node.op_type == "DequantizeLinear" and node.input[0] in low.init:
        return low.init[node.input[0]], i  # its shape is what matters; ORT dequantizes it
    return None


def _activation(low, name: str) -> Q | None:
    return low.qval.get(name)


def _same(a: Q, b: Q) -> bool:
    return (a.tid, a.scale, a.zp, a.code) == (b.tid, b.scale, b.zp, b.code)


def source_of(low, node) -> Q | None:
    """The one dequantized activation `node` reads, None when it reads none or several."""
    found = None
    for name in node.input:
        q = _activation(low, name) if name else None
        if q is None:
            continue
        if found is not None and not _same(found, q):
            return None
        found = q
    return found


def claims(low, node) -> bool:
    """Whether `node`, an op with an integer kernel of its own, is the start of a float
    island instead: it reads one activation and, besides it, a float constant, or it does
    not end at a QuantizeLinear (x * sigmoid(x) with the Sigmoid's output in float)."""
    if node.op_type not in SHARED or node.op_type in NEVER_FIRST:
        return False
    src = source_of(low, node)
    if src is None:
        return False
    producers = _producers(low)
    for name in node.input:
        if not name or _activation(low, name) is not None:
            continue
        value = _constant(low, name, producers)
        if value is None:
            return True  # an operand computed in float from the activation
        arr, made_by = value
        if made_by is None or low.g.node[made_by].op_type == "Constant":
            return True  # a float constant: ORT runs the node in float
        if name in low.wconst and np.size(low.wconst[name][1]) > 1:
            return True  # a per-channel quantized constant: no per-tensor LOAD_CONST
    out = node.output[0]
    cons = low.consumers.get(out, [])
    if out in low.graph_outputs or len(cons) != 1:
        return True
    nxt = low.g.node[cons[0]]
    if nxt.op_type in ("Relu", "Clip"):
        cons = low.consumers.get(nxt.output[0], [])
        if nxt.output[0] in low.graph_outputs or len(cons) != 1:
            return True
        nxt = low.g.node[cons[0]]
    return nxt.op_type != "QuantizeLinear"


def find(low, head_index: int) -> Island:
    """The island that starts at node `head_index`. Raises _NotAnIsland(reason)."""
    g = low.g
    head = g.node[head_index]
    src = source_of(low, head)
    if src is None:
        raise _NotAnIsland("it must read exactly one quantized activation (through "
                           "DequantizeLinear) and otherwise constants")
    isl = Island()
    producers = _producers(low)
    members: set[int] = set()
    produced: set[str] = set()

    def operand_ready(name: str, depth: int = 0) -> bool:
        if not name or name in produced:
            return True
        q = _activation(low, name)
        if q is not None:
            if not _same(q, src):
                return False
            isl.dequantized.add(name)
            return True
        value = _constant(low, name, producers)
        if value is not None:
            arr, made_by = value
            isl.operands[name] = arr
            if made_by is None:
                isl.initializers[name] = arr
            elif made_by not in isl.constant_nodes:
                isl.constant_nodes.append(made_by)
                for inp in g.node[made_by].input:
                    if inp in low.init:
                        isl.initializers[inp] = low.init[inp]
            return True
        # computed in float by an elementwise node not yet in the island: take it in
        i = producers.get(name)
        if i is None or depth > 64 or i in low.done or not admissible(i, depth + 1):
            return False
        add(i)
        return True

    def admissible(i: int, depth: int = 0) -> bool:
        n = g.node[i]
        return (n.op_type in ELEMENTWISE and n.domain in ("", "ai.onnx")
                and all(operand_ready(x, depth) for x in n.input))

    def add(i: int) -> None:
        members.add(i)
        produced.update(o for o in g.node[i].output if o)

    if not admissible(head_index):
        raise _NotAnIsland("it must read exactly one quantized activation (through "
                           "DequantizeLinear) and otherwise constants")
    add(head_index)
    grown = True
    while grown:
        grown = False
        for name in sorted(produced):
            for c in low.consumers.get(name, []):
                if c in members or g.node[c].op_type not in ELEMENTWISE:
                    continue
                if admissible(c):
                    add(c)
                    grown = True
    isl.nodes = sorted(members)
    for name in sorted(produced):
        outside = [c for c in low.consumers.get(name, []) if c not in members]
        if outside or name in low.graph_outputs:
            isl.exits.append((name, outside))
    if not isl.exits:
        raise _NotAnIsland("none of its values is used")
    return isl


def _varying(low, node, isl: Island, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The island input's shape for the table run: the activation's axes along which a
    constant operand varies at full size, the others 1 (right-aligned, as NumPy broadcasts).
    A constant that would broadcast the activation to a larger shape is refused."""
    r = len(shape)
    varying = [1] * r
    for name, arr in sorted(isl.operands.items()):
        s = np.shape(arr)
        if len(s) > r:
            if int(np.prod(s)) == 1:
                continue
            low.fail(node, f"constant {name!r} of shape {s} broadcasts the activation "
                           f"{shape} to a larger shape (more axes)", "input")
        for k, size in enumerate(s):
            axis = r - len(s) + k
            if size == 1:
                continue
            if size != shape[axis]:
                low.fail(node, f"constant {name!r} of shape {s} broadcasts the activation "
                               f"{shape} to a larger shape", "input")
            varying[axis] = size
    return tuple(varying)


def lower_island(low, node) -> None:
    index = _producers(low)[node.output[0]]
    try:
        isl = find(low, index)
    except _NotAnIsland as exc:
        low.fail(node, f"{node.op_type} runs in float between DequantizeLinear and "
                       f"QuantizeLinear; int8-ref builds it as a lookup table, but {exc}")
    xq = low.act(node, next(iter(sorted(isl.dequantized))))
    if xq.code == I16:
        low.fail(node, "a float island on an int16 activation has no 256-entry table", "input")
    shape = low.shape(xq.tid)
    varying = _varying(low, node, isl, shape)
    channels = int(np.prod(varying))
    if channels > MAX_CHANNELS:
        low.fail(node, f"its constants vary over {channels} positions (at most "
                       f"{MAX_CHANNELS} tables)", "input")
    outer, inner = _fold(low, node, shape, varying)
    n = int(np.prod(shape))
    # the island as its own model: the codes -> DequantizeLinear -> the nodes -> each
    # exit's QuantizeLinear
    nodes = [helper.make_node("DequantizeLinear", [_ort_tables.INPUT, "int8ref_x_scale",
                                                   "int8ref_x_zero_point"], [name])
             for name in sorted(isl.dequantized)]
    inits = dict(isl.initializers)
    inits["int8ref_x_scale"] = np.array(xq.scale, np.float32)
    inits["int8ref_x_zero_point"] = np.array(xq.zp, _ort_tables.CODE_TYPES[xq.code][1])
    nodes += [low.g.node[i] for i in sorted(isl.constant_nodes)]
    nodes += [low.g.node[i] for i in isl.nodes]
    outputs: list[Exit] = []
    for name, readers in isl.exits:
        quantizers = [i for i in readers if low.g.node[i].op_type == "QuantizeLinear"]
        for qi in quantizers:
            qn = low.g.node[qi]
            scale, zp, code = low.qparams(qn, low.input_name(qn, 1, "y_scale"),
                                          low.optional_input(qn, 2), allow_int16=True)
            if code == I16:
                low.fail(qn, "an int16 QuantizeLinear after a float island is not supported",
                         "y_zero_point")
            for inp in qn.input[1:]:
                if inp:
                    inits[inp] = low.init[inp]
            nodes.append(qn)
            outputs.append(Exit(qn.output[0], qi, code, scale, zp))
        others = [low.g.node[i].op_type for i in readers if i not in quantizers]
        if name in low.graph_outputs:
            outputs.append(Exit(name, None, FLOAT))
        elif others and all(op == "ReduceMean" for op in others):
            outputs.append(Exit(name, None, reducemean.WIDE))
        elif others:
            outputs.append(Exit(name, None, I16))
    model = _ort_tables.island_model(
        low.model, nodes, inits, xq.code, varying,
        [(e.name, TensorProto.FLOAT if e.code in IN_FLOAT else
          _ort_tables.CODE_TYPES[e.code][0]) for e in outputs])
    _check_float_exits(low, node, model, [e.name for e in outputs if e.code in IN_FLOAT])
    try:
        tables = _ort_tables.run(model, xq.code, varying)
    except Exception as exc:  # noqa: BLE001 - ORT's refusal of the island is the reason
        low.fail(node, f"ONNX Runtime cannot run the float island it starts: "
                       f"{str(exc).splitlines()[0][:300]}")
    low.done.update(isl.nodes)
    low.done.update(e.quantizer for e in outputs if e.quantizer is not None)
    for e, table in zip(outputs, tables):
        if e.code == FLOAT:
            tid = low.new_tensor(e.name, "float32", shape)
            low.fval[e.name] = tid
            entries = table.astype(np.float32)
        elif e.code in (I16, reducemean.WIDE):
            # read in float by other ops: an int16 activation as ORT's quantizer would make
            # it (symmetric, zero point 0), or, for a ReduceMean, int32 with 24 bits (as
            # many as a float32 holds) so that the mean sees ORT's float values
            largest = float(np.abs(np.nan_to_num(table.astype(np.float32), posinf=0.0,
                                                 neginf=0.0)).max())
            top = 32767 if e.code == I16 else 1 << 24
            scale = float(np.float32(largest / top)) if largest > 0 else 1.0
            entries = np.clip(np.rint(np.nan_to_num(table.astype(np.float64)) / scale),
                              -top - 1, top)
            if e.code == I16:
                entries = entries.astype(np.int16)
                tid = low.define_q(e.name, I16, shape, scale, 0).tid
            else:
                entries = entries.astype(np.int32)
                tid = low.new_tensor(e.name, "int32", shape)
                low.qname[e.name] = Q(tid, scale, 0, reducemean.WIDE)
        else:
            tid = low.define_q(e.name, e.code, shape, e.scale, e.zp).tid
            entries = table
        if channels == 1 and e.code not in IN_FLOAT:
            low.emit(node, lut.KERNEL, [xq.tid], tid,
                     consts=[low.const(entries[0].view(np.uint8))], n=n, sg_in=xq.code)
        else:
            low.emit(node, lut_channels.KERNEL, [xq.tid], tid,
                     consts=[low.const(np.ascontiguousarray(entries).view(np.uint8).reshape(-1))],
                     outer=outer, channels=channels, inner=inner,
                     out_bytes=entries.dtype.itemsize)


def _check_float_exits(low, node, model, names: list[str]) -> None:
    """A value read outside the island in float must be float (not a Less's bool)."""
    if not names:
        return
    probe = onnx_copy(model)
    del probe.graph.output[:]
    inferred = shape_inference.infer_shapes(probe)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    for name in names:
        elem = types.get(name, TensorProto.FLOAT)
        if elem != TensorProto.FLOAT:
            low.fail(node, f"its value {name!r} of type "
                           f"{TensorProto.DataType.Name(elem).lower()} is read outside it; "
                           "only float values can leave a float island", "output")


def onnx_copy(model):
    out = type(model)()
    out.CopyFrom(model)
    return out


def _fold(low, node, shape, varying) -> tuple[int, int]:
    """(outer, inner) around the varying axes, which must be adjacent (size-1 axes of the
    activation aside)."""
    axes = [i for i, v in enumerate(varying) if v > 1]
    if not axes:
        return int(np.prod(shape)), 1
    between = [i for i in range(axes[0], axes[-1] + 1) if varying[i] == 1 and shape[i] > 1]
    if between:
        low.fail(node, f"its constants vary along axes {axes} of {shape}, which are not "
                       "adjacent", "input")
    return int(np.prod(shape[:axes[0]])), int(np.prod(shape[axes[-1] + 1:]))


ONNX = {op: OnnxOp(lower_island, reads_dequantized=True) for op in UNARY + OTHERS}
