"""Per-op validation of a parsed image: every parameter against the buffers it indexes.

The kernels index without bounds checks, so this is what keeps a malformed artifact from
reading or writing outside the arena, the constant data or the scratch buffer. Each check
recomputes, from the op's integer parameters, how many bytes the kernel will touch in each
tensor and constant, and requires equality (or, for strided reads, that the largest index is
inside the buffer). A type code ("sg_in" / "sg_out": 0 uint8, 1 int8, 2 int16) must match its
tensor's dtype, and sizes are counted at that width; only INT16_KINDS accept code 2.
"""

from __future__ import annotations

import numpy as np

from .exceptions import ArtifactRejected
from .opset import (INT16_KINDS, PARAMS, SG_DTYPE, SG_INT16, SG_ITEMSIZE, Kind, conv_scratch,
                    gemm_scratch, matmul_scratch)

LIMIT = 1 << 31  # any single dimension or parameter magnitude


def validate_ops(image, where: str) -> None:
    data = image.data
    for idx, op in enumerate(image.ops):
        p = dict(zip(PARAMS[op.kind], op.ints))

        def fail(msg: str, op=op, idx=idx):
            raise ArtifactRejected(where, f"op {idx} ({op.name!r}, {op.kind.name}): {msg}")

        for k, v in p.items():
            if not -LIMIT < v < LIMIT:
                fail(f"parameter {k}={v} is out of range")
        ins = [image.tensors[t] for t in op.inputs]
        out = image.tensors[op.output]
        cs = [image.consts[k] for k in op.consts]

        def pos(*names):
            for nm in names:
                if p[nm] <= 0:
                    fail(f"{nm}={p[nm]} must be positive")

        def nonneg(*names):
            for nm in names:
                if p[nm] < 0:
                    fail(f"{nm}={p[nm]} must be >= 0")

        def size(t, n, what):
            if t.nbytes != n:
                fail(f"{what} has {t.nbytes} bytes, parameters need {n}")

        def dtype(t, allowed, what):
            if t.dtype not in allowed:
                fail(f"{what} has dtype {t.dtype}, expected one of {allowed}")

        def flag(*names, hi=1):
            for nm in names:
                if not 0 <= p[nm] <= hi:
                    fail(f"{nm}={p[nm]} is not a valid flag")

        def sg(*names):
            """Type codes: 0/1 everywhere, 2 (int16) only for the kinds with int16 kernels."""
            flag(*names, hi=SG_INT16 if op.kind in INT16_KINDS else 1)

        def qtype(t, sg_name, what):
            want = SG_DTYPE[p[sg_name]]
            if t.dtype != want:
                fail(f"{what} is {t.dtype} but {sg_name}={p[sg_name]} says {want}")

        def isz(sg_name):
            return SG_ITEMSIZE[p[sg_name]]

        wide = any(p.get(nm) == SG_INT16 for nm in ("sg_in", "sg_out"))

        def qrange_ok(*names):
            lo, hi = (-32768, 32767) if wide else (-128, 255)
            for nm in names:
                if not lo <= p[nm] <= hi:
                    fail(f"{nm}={p[nm]} is outside the {16 if wide else 8}-bit range")

        def shift_ok(*names):
            for nm in names:
                if not -31 <= p[nm] <= 30:
                    fail(f"{nm}={p[nm]} is outside [-31, 30]")

        def const(k, dt, nbytes, what):
            if len(cs) <= k:
                fail(f"missing constant {what}")
            if cs[k].dtype != dt or cs[k].nbytes != nbytes:
                fail(f"constant {what} is {cs[k].dtype}[{cs[k].nbytes} bytes], needs "
                     f"{dt}[{nbytes} bytes]")

        def scratch(n):
            if op.scratch < n:
                fail(f"declares {op.scratch} scratch bytes, kernel needs {n}")

        def out_q(mode_key="mode"):
            if p[mode_key] == 2:
                dtype(out, ("int32",), "output")
                return 4
            qtype(out, "sg_out", "output")
            return isz("sg_out")

        k = op.kind
        if k == Kind.QUANTIZE:
            pos("n")
            dtype(ins[0], ("float32",), "input")
            size(ins[0], 4 * p["n"], "input")
            sg("sg_out")
            qtype(out, "sg_out", "output")
            size(out, p["n"] * isz("sg_out"), "output")
            qrange_ok("zp", "qmin", "qmax")
        elif k == Kind.DEQUANTIZE:
            pos("n")
            sg("sg_in")
            qtype(ins[0], "sg_in", "input")
            size(ins[0], p["n"] * isz("sg_in"), "input")
            dtype(out, ("float32",), "output")
            size(out, 4 * p["n"], "output")
        elif k == Kind.REQUANT:
            pos("n")
            sg("sg_in", "sg_out")
            flag("mode")
            qtype(ins[0], "sg_in", "input")
            qtype(out, "sg_out", "output")
            size(ins[0], p["n"] * isz("sg_in"), "input")
            size(out, p["n"] * isz("sg_out"), "output")
            qrange_ok("zp_in", "zp_out", "qmin", "qmax")
            shift_ok("shift")
        elif k == Kind.CONV:
            pos("N", "C", "H", "W", "M", "kh", "kw", "sh", "sw", "dh", "dw", "groups", "OH",
                "OW")
            sg("sg_in", "sg_out")
            flag("mode", hi=2)
            if p["C"] % p["groups"] or p["M"] % p["groups"]:
                fail("groups does not divide the channels")
            kk = p["C"] // p["groups"] * p["kh"] * p["kw"]
            P = p["OH"] * p["OW"]
            if kk > 32768:
                fail(f"reduction of {kk} terms can overflow int32")
            if p["sg_in"] == SG_INT16 and p["mode"] == 2:
                fail("an int16 input has no int32-output form")
            qtype(ins[0], "sg_in", "input")
            size(ins[0], p["N"] * p["C"] * p["H"] * p["W"] * isz("sg_in"), "input")
            size(out, p["N"] * p["M"] * P * out_q(), "output")
            const(0, "int16", p["M"] * kk * 2, "weights")
            const(1, "int32", p["M"] * 4, "bias")
            const(2, "float32" if p["mode"] != 1 else "int32", p["M"] * 4, "multipliers")
            const(3, "int32", p["M"] * 4, "shifts")
            scratch(conv_scratch(p["C"] * p["H"] * p["W"], kk, P, p["sg_in"] == SG_INT16))
            qrange_ok("xzp", "yzp", "qmin", "qmax")
            if p["mode"] == 1:
                sh = np.frombuffer(data, np.int32, p["M"], cs[3].offset)
                if sh.min() < -31 or sh.max() > 30:
                    fail("a per-channel shift is outside [-31, 30]")
        elif k == Kind.GEMM:
            pos("M", "K", "N")
            sg("sg_in", "sg_out")
            flag("mode", hi=2)
            if p["K"] > 32768:
                fail("reduction can overflow int32")
            if p["sg_in"] == SG_INT16 and p["mode"] == 2:
                fail("an int16 input has no int32-output form")
            qtype(ins[0], "sg_in", "input")
            size(ins[0], p["M"] * p["K"] * isz("sg_in"), "input")
            size(out, p["M"] * p["N"] * out_q(), "output")
            const(0, "int16", p["N"] * p["K"] * 2, "weights")
            const(1, "int32", p["N"] * 4, "bias")
            const(2, "float32" if p["mode"] != 1 else "int32", p["N"] * 4, "multipliers")
            const(3, "int32", p["N"] * 4, "shifts")
            scratch(gemm_scratch(p["K"], p["N"], p["sg_in"] == SG_INT16))
            qrange_ok("xzp", "yzp", "qmin", "qmax")
            if p["mode"] == 1:
                sh = np.frombuffer(data, np.int32, p["N"], cs[3].offset)
                if sh.min() < -31 or sh.max() > 30:
                    fail("a per-channel shift is outside [-31, 30]")
        elif k == Kind.MATMUL:
            pos("B", "M", "K", "N")
            sg("sg_in", "sg_out")
            flag("b_batch")
            flag("mode", hi=2)
            if p["K"] > 32768:
                fail("reduction can overflow int32")
            if p["sg_in"] == SG_INT16 and p["mode"] == 2:
                fail("an int16 input has no int32-output form")
            qtype(ins[0], "sg_in", "A")
            qtype(ins[1], "sg_in", "B")
            e = isz("sg_in")
            size(ins[0], p["B"] * p["M"] * p["K"] * e, "A")
            size(ins[1], (p["B"] if p["b_batch"] else 1) * p["K"] * p["N"] * e, "B")
            size(out, p["B"] * p["M"] * p["N"] * out_q(), "output")
            scratch(matmul_scratch(p["K"], p["N"], p["sg_in"] == SG_INT16))
            shift_ok("shift")
            qrange_ok("azp", "bzp", "yzp", "qmin", "qmax")
        elif k in (Kind.MAXPOOL, Kind.AVGPOOL):
            pos("N", "C", "H", "W", "kh", "kw", "sh", "sw", "OH", "OW")
            sg("sg_in")
            qtype(ins[0], "sg_in", "input")
            size(ins[0], p["N"] * p["C"] * p["H"] * p["W"] * isz("sg_in"), "input")
            n_out = p["N"] * p["C"] * p["OH"] * p["OW"]
            if k == Kind.MAXPOOL:
                pos("dh", "dw")
                qtype(out, "sg_in", "output")
                size(out, n_out * isz("sg_in"), "output")
            else:
                sg("sg_out")
                flag("mode", "count_include_pad")
                qtype(out, "sg_out", "output")
                size(out, n_out * isz("sg_out"), "output")
                if p["kh"] * p["kw"] > 1 << 20:
                    fail("window too large")
                if p["sg_in"] == SG_INT16 and p["kh"] * p["kw"] > 32768:
                    fail("an int16 window over 32768 values can overflow the int32 sum")
                shift_ok("shift")
                qrange_ok("xzp", "yzp", "qmin", "qmax")
                if p["off"] not in (0, 128):
                    fail("off must be 0 or 128")
        elif k == Kind.GLOBALAVGPOOL:
            pos("NC", "HW")
            sg("sg_in", "sg_out")
            flag("mode")
            if p["HW"] >= 1 << 23:
                fail("image too large for an int32 sum")
            if p["sg_in"] == SG_INT16 and p["HW"] > 32768:
                fail("an int16 image over 32768 values can overflow the int32 sum")
            qtype(ins[0], "sg_in", "input")
            qtype(out, "sg_out", "output")
            size(ins[0], p["NC"] * p["HW"] * isz("sg_in"), "input")
            size(out, p["NC"] * isz("sg_out"), "output")
            shift_ok("shift")
            qrange_ok("xzp", "yzp", "qmin", "qmax")
        elif k in (Kind.ADD, Kind.MUL):
            pos("outer", "mid", "inner")
            nonneg("a_so", "a_sm", "a_si", "b_so", "b_sm", "b_si")
            sg("sg_in", "sg_out")
            flag("mode", "femu")
            for t, pre, what in ((ins[0], "a", "A"), (ins[1], "b", "B")):
                qtype(t, "sg_in", what)
                last = ((p["outer"] - 1) * p[pre + "_so"] + (p["mid"] - 1) * p[pre + "_sm"]
                        + (p["inner"] - 1) * p[pre + "_si"])
                n_el = t.nbytes // isz("sg_in")
                if last >= n_el:
                    fail(f"{what} would be read at index {last}, it has {n_el} elements")
            qtype(out, "sg_out", "output")
            size(out, p["outer"] * p["mid"] * p["inner"] * isz("sg_out"), "output")
            qrange_ok("azp", "bzp", "yzp", "qmin", "qmax")
            if k == Kind.ADD:
                shift_ok("shift_a", "shift_b", "shift_y")
                if not 0 <= p["left_shift"] <= 20:
                    fail("left_shift must be in [0, 20]")
                if p["sg_in"] == SG_INT16 and p["left_shift"] > 15:
                    fail("int16 inputs shifted left by more than 15 bits overflow int32")
                if p["off"] not in (0, 128):
                    fail("off must be 0 or 128")
            else:
                shift_ok("shift")
        elif k == Kind.COPY:
            pos("nbytes")
            size(ins[0], p["nbytes"], "input")
            size(out, p["nbytes"], "output")
        elif k == Kind.TRANSPOSE:
            d = [p[f"d{i}"] for i in range(6)]
            s = [p[f"s{i}"] for i in range(6)]
            if min(d) <= 0 or min(s) < 0:
                fail("dimensions must be positive and strides non-negative")
            dtype(ins[0], ("int8", "uint8", "int16"), "input")
            dtype(out, (ins[0].dtype,), "output")
            size(out, int(np.prod(d, dtype=object)), "output")  # bytes: int16 has a last d of 2
            last = sum((di - 1) * si for di, si in zip(d, s))
            if last >= ins[0].nbytes:
                fail(f"would read index {last} of a {ins[0].nbytes}-byte input")
        elif k == Kind.CONCAT_PART:
            pos("outer", "inner_in", "inner_out")
            nonneg("offset")
            flag("use_lut")
            size(ins[0], p["outer"] * p["inner_in"], "input")
            size(out, p["outer"] * p["inner_out"], "output")
            if p["offset"] + p["inner_in"] > p["inner_out"]:
                fail("the slot lies outside the output row")
            if p["use_lut"]:
                const(0, "uint8", 256, "table")
            elif ins[0].dtype != out.dtype:
                fail(f"copies {ins[0].dtype} into {out.dtype}")
        elif k == Kind.LUT:
            pos("n")
            size(ins[0], p["n"], "input")
            size(out, p["n"], "output")
            const(0, "uint8", 256, "table")
        elif k == Kind.CLAMP:
            pos("n")
            sg("sg_in")
            qtype(ins[0], "sg_in", "input")
            qtype(out, "sg_in", "output")
            size(ins[0], p["n"] * isz("sg_in"), "input")
            size(out, p["n"] * isz("sg_in"), "output")
        elif k == Kind.PAD:
            pos("N", "C", "H", "W", "OH", "OW")
            nonneg("pt", "pl")
            if p["pt"] + p["H"] > p["OH"] or p["pl"] + p["W"] > p["OW"]:
                fail("padded output is smaller than the input")
            size(ins[0], p["N"] * p["C"] * p["H"] * p["W"], "input")
            size(out, p["N"] * p["C"] * p["OH"] * p["OW"], "output")
        elif k == Kind.RESIZE_NEAREST:
            pos("NC", "H", "W", "OH", "OW")
            dtype(out, (ins[0].dtype,), "output")
            size(ins[0], p["NC"] * p["H"] * p["W"], "input")
            size(out, p["NC"] * p["OH"] * p["OW"], "output")
            const(0, "int32", (p["OH"] + p["OW"]) * 4, "indices")
            idx = np.frombuffer(data, np.int32, p["OH"] + p["OW"], cs[0].offset)
            if (idx.min() < 0 or idx[:p["OH"]].max() >= p["H"]
                    or idx[p["OH"]:].max() >= p["W"]):
                fail("a source index lies outside the input")
        elif k == Kind.SOFTMAX:
            pos("rows", "cols")
            flag("sg_in", "sg_out")
            size(ins[0], p["rows"] * p["cols"], "input")
            size(out, p["rows"] * p["cols"], "output")
            flag("mode")
            const(0, "float32" if p["mode"] == 0 else "int32", 1024, "exp table")
            if not 0 <= p["yscale_int"] < (1 << 24):
                fail("yscale_int out of range")
            if p["off"] not in (0, 128):
                fail("off must be 0 or 128")
            qrange_ok("yzp", "qmin", "qmax")
        elif k == Kind.LOAD_CONST:
            pos("nbytes")
            size(out, p["nbytes"], "output")
            if cs[0].nbytes != p["nbytes"]:
                fail("constant size differs from the output")
        if op.output in op.inputs:
            fail("an op may not write its own input")
