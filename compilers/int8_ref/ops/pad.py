"""PAD: constant padding of the two spatial axes of a 4-D tensor (ONNX Pad, mode constant);
the pad value is the constant's quantized value, or the input's zero point (a float 0).
Eval: kernels/pad.pxi.
"""

from __future__ import annotations

from ..kernel_abi import KernelSpec, OnnxOp
from ..program import attr

PARAMS = ("N", "C", "H", "W", "OH", "OW", "pt", "pl", "value")


def pad_rules(node):
    mode = attr(node, "mode", "constant")
    if mode != "constant":
        yield "mode", f"mode {mode} is not supported (constant only)"


def lower_pad(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    pads = attr(node, "pads")
    if pads is None:
        pads = low.const_input(node, 1, "pads").reshape(-1).tolist()
    if low.optional_input(node, 3):
        low.fail(node, "the axes input is not supported", "axes")
    value = 0
    value_name = low.optional_input(node, 2)
    if value_name:
        v = low.init.get(value_name)
        if v is None and value_name in low.wconst:
            qv, _, _, _ = low.wconst[value_name]
            value = int(qv.reshape(-1)[0])
        elif v is not None:
            value = int(v.reshape(-1)[0])
        else:
            low.fail(node, "constant_value must be a constant", "constant_value")
    else:
        value = xq.zp
    if len(shape) != 4 or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) \
            or min(pads) < 0:
        low.fail(node, "only non-negative spatial padding of 4-D tensors", "pads")
    N, C, H, W = shape
    OH, OW = H + pads[2] + pads[6], W + pads[3] + pads[7]
    low.layout(node, xq, (N, C, OH, OW), KERNEL, N=N, C=C, H=H, W=W, OH=OH, OW=OW,
               pt=pads[2], pl=pads[3], value=value)


def validate(c) -> None:
    p = c.p
    c.positive("N", "C", "H", "W", "OH", "OW")
    c.nonneg("pt", "pl")
    if p["pt"] + p["H"] > p["OH"] or p["pl"] + p["W"] > p["OW"]:
        c.fail("padded output is smaller than the input")
    c.size(c.ins[0], p["N"] * p["C"] * p["H"] * p["W"], "input")
    c.size(c.out, p["N"] * p["C"] * p["OH"] * p["OW"], "output")


def work(p) -> int:
    """The output filled with the pad value, then H rows of W copied per channel."""
    return p["N"] * p["C"] * (p["OH"] * p["OW"] + p["H"] * (p["W"] + 1))


KERNEL = KernelSpec(kind=17, name="PAD", params=PARAMS, validate=validate, work=work)
ONNX = {"Pad": OnnxOp(lower_pad, pad_rules, reads_dequantized=True)}
