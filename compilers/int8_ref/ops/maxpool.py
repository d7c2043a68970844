"""MAXPOOL: 2-D max pooling on the integers (ONNX MaxPool in a QDQ island: the DQ and Q
around it carry the same parameters, so the maximum of the integers is the quantized maximum);
pads, strides, dilations, ceil_mode. Eval: kernels/maxpool.pxi.
"""

from __future__ import annotations

from ..kernel_abi import MAX_WINDOW, KernelSpec, OnnxOp
from ..program import I16, attr
from ._window import pool_geometry, window_rules

PARAMS = ("N", "C", "H", "W", "kh", "kw", "sh", "sw", "pt", "pl", "dh", "dw", "OH", "OW",
          "sg_in")


def maxpool_rules(node):
    yield from window_rules(node)
    if len(node.output) > 1 and node.output[1]:
        yield "Indices", "the Indices output is not supported"


def lower_maxpool(low, node) -> None:
    xq = low.act(node, node.input[0])
    if attr(node, "storage_order", 0):
        low.fail(node, "storage_order=1 is not supported", "storage_order")
    N, C, H, W, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, OH, OW = pool_geometry(
        low, node, low.shape(xq.tid))
    low.layout(node, xq, (N, C, OH, OW), KERNEL, scratch=row_scratch(OW, sw, kw, dw, W, pl),
               N=N, C=C, H=H, W=W, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, dh=dh, dw=dw,
               OH=OH, OW=OW, sg_in=xq.code)


def row_scratch(OW: int, sw: int, kw: int, dw: int, W: int, pl: int) -> int:
    """The 8-bit kernel's row buffer (i8r_maxpool_scratch, kernels/i8r_eltwise.h)."""
    from .._kernels import maxpool_scratch_bytes

    return maxpool_scratch_bytes(OW, sw, kw, dw, W, pl)


def validate(c) -> None:
    p = c.p
    c.positive("N", "C", "H", "W", "kh", "kw", "sh", "sw", "dh", "dw", "OH", "OW")
    c.nonneg("pt", "pl")
    c.type_codes("sg_in")
    c.qtype(c.ins[0], "sg_in", "input")
    c.size(c.ins[0], p["N"] * p["C"] * p["H"] * p["W"] * c.itemsize("sg_in"), "input")
    c.qtype(c.out, "sg_in", "output")
    c.size(c.out, p["N"] * p["C"] * p["OH"] * p["OW"] * c.itemsize("sg_in"), "output")
    c.window("kh", "kw", MAX_WINDOW, "the firmware's largest pooling window")
    if p["sg_in"] != I16:
        span = p["OW"] * p["sw"] + p["kw"] * p["dw"] + p["W"] + p["pl"]
        if span > 1 << 32:  # keeps the row size in range before the kernel computes it
            c.fail(f"a row of {span} positions is too wide")
        c.scratch(row_scratch(p["OW"], p["sw"], p["kw"], p["dw"], p["W"], p["pl"]))


def work(p) -> int:
    """Per output: kh window rows, each with its kw columns; 8-bit inputs also clear and
    reduce a row of the window's width for each output row."""
    span = p["OW"] * p["sw"] + p["kw"] * p["dw"] + p["W"] + p["pl"]
    rows = p["N"] * p["C"] * p["OH"] * (3 * span + p["kh"] * p["W"])
    return p["N"] * p["C"] * p["OH"] * p["OW"] * p["kh"] * (p["kw"] + 1) + rows


KERNEL = KernelSpec(kind=7, name="MAXPOOL", params=PARAMS, int16=True, validate=validate,
                    work=work)
ONNX = {"MaxPool": OnnxOp(lower_maxpool, maxpool_rules, int16=True, reads_dequantized=True)}
