"""Per-op validation of a parsed image: every parameter against the buffers it indexes, and
every loop the kernel will run against the firmware's work bounds.

The kernels index without bounds checks and run without the GIL, so this is what keeps a
malformed artifact from reading or writing outside the arena, the constant data or the
scratch buffer, and from running for ever. For each op the driver checks what is common
(parameter magnitudes, an output that is not also an input) and calls its kernel's
`validate(check)` (ops/<op>.py), which recomputes from the op's integer parameters how many
bytes the kernel will touch in each tensor and constant and requires equality (or, for
strided reads, that the largest index is inside the buffer). A type code ("sg_in" / "sg_out":
0 uint8, 1 int8, 2 int16) must match its tensor's dtype, and sizes are counted at that width;
only kernels registered with `int16=True` accept code 2. Then the kernel's `work` (the
iterations of its loops, kernel_abi.py) must stay within MAX_OP_WORK, and the image's total
within MAX_IMAGE_WORK.
"""

from __future__ import annotations

import numpy as np

from .exceptions import ArtifactRejected
from .kernel_abi import (MAX_IMAGE_WORK, MAX_OP_WORK, PARAM_LIMIT, SG_DTYPE, SG_INT16,
                         SG_ITEMSIZE, KernelSpec)
from .opset import KERNELS


class OpCheck:
    """One op of a parsed image and the checks its kernel's `validate` calls. `p` holds the
    op's parameters by name; every failing check raises ArtifactRejected naming the op."""

    def __init__(self, image, index: int, op, kernel: KernelSpec, where: str) -> None:
        self.image, self.index, self.op, self.kernel, self.where = image, index, op, kernel, where
        self.p: dict[str, int] = dict(zip(kernel.params, op.ints))
        self.ins = [image.tensors[t] for t in op.inputs]
        self.out = image.tensors[op.output]
        self._consts = [image.consts[k] for k in op.consts]
        # an op with an int16 side checks zero points and ranges at 16 bits
        self.wide = any(self.p.get(nm) == SG_INT16 for nm in ("sg_in", "sg_out"))

    def fail(self, msg: str):
        raise ArtifactRejected(self.where, f"op {self.index} ({self.op.name!r}, "
                                           f"{self.kernel.name}): {msg}")

    # -- parameters ------------------------------------------------------------------------
    def in_range(self) -> None:
        for k, v in self.p.items():
            if not -PARAM_LIMIT < v < PARAM_LIMIT:
                self.fail(f"parameter {k}={v} is out of range")

    def positive(self, *names: str) -> None:
        for nm in names:
            if self.p[nm] <= 0:
                self.fail(f"{nm}={self.p[nm]} must be positive")

    def nonneg(self, *names: str) -> None:
        for nm in names:
            if self.p[nm] < 0:
                self.fail(f"{nm}={self.p[nm]} must be >= 0")

    def flag(self, *names: str, hi: int = 1) -> None:
        for nm in names:
            if not 0 <= self.p[nm] <= hi:
                self.fail(f"{nm}={self.p[nm]} is not a valid flag")

    def one_of(self, name: str, allowed: tuple[int, ...]) -> None:
        if self.p[name] not in allowed:
            self.fail(f"{name} must be {' or '.join(map(str, allowed))}")

    def type_codes(self, *names: str) -> None:
        """Type codes: 0/1 everywhere, 2 (int16) only for the kernels with int16 paths."""
        self.flag(*names, hi=SG_INT16 if self.kernel.int16 else 1)

    def qrange(self, *names: str) -> None:
        lo, hi = (-32768, 32767) if self.wide else (-128, 255)
        for nm in names:
            if not lo <= self.p[nm] <= hi:
                self.fail(f"{nm}={self.p[nm]} is outside the {16 if self.wide else 8}-bit "
                          "range")

    def shift(self, *names: str) -> None:
        for nm in names:
            if not -31 <= self.p[nm] <= 30:
                self.fail(f"{nm}={self.p[nm]} is outside [-31, 30]")

    def window(self, kh: str, kw: str, limit: int, why: str) -> None:
        if self.p[kh] * self.p[kw] > limit:
            self.fail(f"window {kh}={self.p[kh]} x {kw}={self.p[kw]} is larger than {limit} "
                      f"values ({why})")

    # -- tensors ---------------------------------------------------------------------------
    def size(self, t, n: int, what: str) -> None:
        if t.nbytes != n:
            self.fail(f"{what} has {t.nbytes} bytes, parameters need {n}")

    def dtype(self, t, allowed: tuple[str, ...], what: str) -> None:
        if t.dtype not in allowed:
            self.fail(f"{what} has dtype {t.dtype}, expected one of {allowed}")

    def qtype(self, t, code_name: str, what: str) -> None:
        want = SG_DTYPE[self.p[code_name]]
        if t.dtype != want:
            self.fail(f"{what} is {t.dtype} but {code_name}={self.p[code_name]} says {want}")

    def itemsize(self, code_name: str) -> int:
        return SG_ITEMSIZE[self.p[code_name]]

    def out_itemsize(self) -> int:
        """The output's element size: int32 in MODE_INT32 (mode 2), else by "sg_out"."""
        if self.p["mode"] == 2:
            self.dtype(self.out, ("int32",), "output")
            return 4
        self.qtype(self.out, "sg_out", "output")
        return self.itemsize("sg_out")

    def largest_index(self, t, last: int, itemsize: int, what: str) -> None:
        n_el = t.nbytes // itemsize
        if last >= n_el:
            self.fail(f"{what} would be read at index {last}, it has {n_el} elements")

    # -- constants and scratch -------------------------------------------------------------
    def const(self, slot: str, dtype: str, nbytes: int) -> None:
        k = self.kernel.consts.index(slot)
        if len(self._consts) <= k:
            self.fail(f"missing constant {slot}")
        c = self._consts[k]
        if c.dtype != dtype or c.nbytes != nbytes:
            self.fail(f"constant {slot} is {c.dtype}[{c.nbytes} bytes], needs "
                      f"{dtype}[{nbytes} bytes]")

    def const_size(self, slot: str) -> int:
        return self._consts[self.kernel.consts.index(slot)].nbytes

    def const_values(self, slot: str, dtype: str, count: int) -> np.ndarray:
        """The first `count` values of a constant already checked with `const`."""
        c = self._consts[self.kernel.consts.index(slot)]
        return np.frombuffer(self.image.data, dtype, count, c.offset)

    def scratch(self, n: int) -> None:
        if self.op.scratch < n:
            self.fail(f"declares {self.op.scratch} scratch bytes, kernel needs {n}")


def validate_ops(image, where: str) -> None:
    total = 0
    for idx, op in enumerate(image.ops):
        kernel = KERNELS[op.kind]
        check = OpCheck(image, idx, op, kernel, where)
        check.in_range()
        kernel.validate(check)
        if op.output in op.inputs:
            check.fail("an op may not write its own input")
        work = kernel.work(check.p)
        if work > MAX_OP_WORK:
            check.fail(f"its loops would run {work} iterations; the firmware runs at most "
                       f"{MAX_OP_WORK} per op")
        total += work
    if total > MAX_IMAGE_WORK:
        raise ArtifactRejected(where, f"the ops' loops would run {total} iterations in all; "
                                      f"the firmware runs at most {MAX_IMAGE_WORK} per image")
