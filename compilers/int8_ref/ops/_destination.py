"""Where the float result of an op that ONNX Runtime runs in float goes, when it is not read by
a QuantizeLinear directly.

The exporter writes global average pooling as ReduceMean -> Reshape, and ONNX Runtime's
quantizer leaves the Reshape between the ReduceMean and its QuantizeLinear (ResNet-18), or
lets the chain end at a float graph output (SqueezeNet). Reshape, Flatten, Squeeze and
Unsqueeze keep the order of the elements, so Q(reshape(y)) == reshape(Q(y)): the op can write
its quantized result and leave the layout ops to their own lowering, or write the float graph
output itself in the chain's final shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import requantize as rq

LAYOUT_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


@dataclass(frozen=True)
class Destination:
    """`quantized`: (name, scale, zp, code, lo, hi) as Lowering.output_q returns them, or
    None for a float graph output. `name` is the tensor the op writes; `shape` its shape
    when the op writes a float graph output through a layout chain (else None); `absorbed`
    the layout nodes that chain consists of (the op's lowering marks them done)."""

    name: str
    quantized: tuple | None
    shape: tuple[int, ...] | None = None
    absorbed: tuple[int, ...] = ()


def _single_consumer(low, name: str):
    cons = low.consumers.get(name, [])
    if len(cons) != 1 or name in low.graph_outputs:
        return None
    return cons[0]


def find(low, node, out: str) -> Destination:
    """The destination of `node`'s float output `out`: a QuantizeLinear (through Relu/Clip,
    as output_q fuses them, or through layout ops), or a float graph output at the end of a
    layout chain. Refuses anything else by name."""
    first = _single_consumer(low, out)
    if first is None or low.g.node[first].op_type not in LAYOUT_OPS:
        if out in low.graph_outputs:
            return Destination(out, None)
        return Destination(out, low.output_q(node, out))
    chain, name = [], out
    while True:
        i = _single_consumer(low, name)
        if i is None or low.g.node[i].op_type not in LAYOUT_OPS:
            break
        chain.append(i)
        name = low.g.node[i].output[0]
    i = _single_consumer(low, name)
    if i is not None and low.g.node[i].op_type == "QuantizeLinear":
        qn = low.g.node[i]
        scale, zp, code = low.qparams(qn, low.input_name(qn, 1, "y_scale"),
                                      low.optional_input(qn, 2), allow_int16=True)
        low.check_int16(node, code, "output")
        lo, hi = rq.qrange(code)
        # the op writes its own output, quantized; the layout ops lower as usual
        return Destination(out, (out, scale, zp, code, lo, hi))
    if name in low.graph_outputs:
        vi = next(o for o in low.g.output if o.name == name)
        dims = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        if any(d <= 0 for d in dims):
            low.fail(node, f"the graph output {name!r} it reaches through "
                           f"{low.g.node[chain[-1]].op_type} needs a static shape", "output")
        return Destination(name, None, dims, tuple(chain))
    low.fail(node, f"output {out!r} is not quantized: it must reach one QuantizeLinear or a "
                   "graph output", "output")
