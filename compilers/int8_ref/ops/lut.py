"""LUT: out = table[in], a 256-entry table built at compile time for an elementwise function
of one 8-bit activation: the float islands of a QDQ graph (ops/float_island.py: Sigmoid,
Tanh, HardSwish, Gelu ...) and the QOperator ops QLinearSigmoid and QLinearLeakyRelu.

Prepare (compile time): ONNX Runtime runs the op over all 256 input codes
(ops/_ort_tables.py), so each entry is ORT's own result. Eval: kernels/lut.pxi.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..kernel_abi import KernelSpec, OnnxOp
from . import _ort_tables

PARAMS = ("n", "sg_in")


def lower_qlinear_table(low, node) -> None:
    """QLinearSigmoid / QLinearLeakyRelu (X, X_scale, X_zero_point, Y_scale, Y_zero_point):
    the node itself, run by ORT over the 256 codes."""
    xq, (name, ys, yzp, ysg, _, _) = low.qlinear_unary(node)
    inits = {i: low.init[i] for i in node.input[1:] if i}
    single = helper.make_node(node.op_type, [_ort_tables.INPUT, *node.input[1:]],
                              ["int8ref_y"], domain=node.domain, **{
                                  a.name: helper.get_attribute_value(a)
                                  for a in node.attribute})
    model = _ort_tables.island_model(low.model, [single], inits, xq.code, (),
                                     [("int8ref_y", _ort_tables.CODE_TYPES[ysg][0])])
    (table,) = _ort_tables.run(model, xq.code, ())
    tid = low.define_q(name, ysg, low.shape(xq.tid), ys, yzp).tid
    low.emit(node, KERNEL, [xq.tid], tid, consts=[low.const(table[0].view(np.uint8))],
             n=int(np.prod(low.shape(xq.tid))), sg_in=xq.code)


def validate(c) -> None:
    c.positive("n")
    c.size(c.ins[0], c.p["n"], "input")
    c.size(c.out, c.p["n"], "output")
    c.const("table", "uint8", 256)


def work(p) -> int:
    return p["n"]


KERNEL = KernelSpec(kind=15, name="LUT", params=PARAMS, consts=("table",), validate=validate,
                    work=work)
ONNX = {
    "QLinearSigmoid": OnnxOp(lower_qlinear_table, domain="com.microsoft"),
    "QLinearLeakyRelu": OnnxOp(lower_qlinear_table, domain="com.microsoft"),
}
