"""LUT_CHANNELS: out = table[channel][in], one 256-entry table per channel with 1-, 2- or
4-byte entries (8-bit, int16, int32 or float32 outputs), for the float islands a plain LUT
does not cover (ops/float_island.py builds the tables with ONNX Runtime): a constant that
varies per channel (a Mul, Div or Pow by a per-channel constant), a value that leaves the
island in float for an op other than QuantizeLinear (int16 entries; int32 for a ReduceMean)
or as a float graph output (float32 entries). The activation is viewed as [outer, channels, inner]. No ONNX op of its
own. Eval: kernels/lut_channels.pxi.
"""

from __future__ import annotations

from ..kernel_abi import KernelSpec

PARAMS = ("outer", "channels", "inner", "out_bytes")
OUTPUT_DTYPES = {1: ("int8", "uint8"), 2: ("int16",), 4: ("float32", "int32")}


def validate(c) -> None:
    p = c.p
    c.positive("outer", "channels", "inner")
    c.one_of("out_bytes", tuple(OUTPUT_DTYPES))
    n = p["outer"] * p["channels"] * p["inner"]
    c.dtype(c.ins[0], ("int8", "uint8"), "input")
    c.dtype(c.out, OUTPUT_DTYPES[p["out_bytes"]], "output")
    c.size(c.ins[0], n, "input")
    c.size(c.out, n * p["out_bytes"], "output")
    c.const("tables", "uint8", 256 * p["channels"] * p["out_bytes"])


def work(p) -> int:
    return p["outer"] * (1 + p["channels"] * (1 + p["inner"]))


KERNEL = KernelSpec(kind=41, name="LUT_CHANNELS", params=PARAMS, consts=("tables",),
                    firmware="1.2.0", validate=validate, work=work)
