# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The int8-ref "firmware": the op-list engine over one kernel unit per op kind.

Each op kind's eval step is its kernel unit, kernels/<module>.pxi (the op's compile-time side
is ops/<module>.py); kernels/_opset.pxi, generated from the op registry by codegen.py, holds
the op record `OpDesc` with each kind's named parameter fields, includes every kernel unit
and defines `run_op`, which calls the unit of an op's kind. Kernels follow TFLite Micro's
reference int8 kernels (reference/integer_ops/conv.h, fully_connected.h): accumulate in
int32, add the int32 bias, requantize, add the output zero point, clamp, store. Every
requantization parameter was computed at compile time (the op modules' prepare step);
nothing here allocates per op or imports a framework.

The engine owns three typed memoryviews: the arena (every tensor at a fixed offset from the
memory plan), the constant blob, and a scratch area (im2col columns, accumulators). The loader
(runtime.py / artifact_format.py / validate.py) has checked every offset and size against
these buffers, and every loop extent against the work bounds, before an Engine is built, so
kernels index without bounds checks and every run ends.
"""

from libc.stdint cimport int8_t, uint8_t, int16_t, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.math cimport lrintf, fmaf
from cpython.mem cimport PyMem_Malloc, PyMem_Free

FIRMWARE_REVISION = "1.1.0"  # the simulated firmware: reads artifact formats 1 and 2 (int16)

include "kernels/_opset.pxi"


cdef class Engine:
    """Runs a validated op list over one arena. Built once per loaded artifact."""

    cdef OpDesc* ops
    cdef int n_ops
    cdef public object arena_array
    cdef unsigned char[::1] arena
    cdef const unsigned char[::1] consts
    cdef unsigned char[::1] scratch

    def __cinit__(self):
        self.ops = NULL
        self.n_ops = 0

    def __init__(self, object arena, const unsigned char[::1] consts,
                 unsigned char[::1] scratch, const int32_t[::1] kinds,
                 const int64_t[:, ::1] ints, const float[:, ::1] floats,
                 const int64_t[:, ::1] inp, const int64_t[::1] out,
                 const int64_t[:, ::1] cofs):
        cdef int i, j
        n = kinds.shape[0]
        if (ints.shape[0] != n or floats.shape[0] != n or inp.shape[0] != n
                or out.shape[0] != n or cofs.shape[0] != n or ints.shape[1] != MAX_INTS
                or floats.shape[1] != MAX_FLOATS or inp.shape[1] != MAX_INPUTS
                or cofs.shape[1] != MAX_CONSTS):
            raise ValueError("engine tables have inconsistent shapes")
        self.arena_array = arena
        self.arena = arena
        self.consts = consts
        self.scratch = scratch
        self.ops = <OpDesc*>PyMem_Malloc(max(n, 1) * sizeof(OpDesc))
        if self.ops == NULL:
            raise MemoryError()
        self.n_ops = n
        for i in range(n):
            self.ops[i].kind = kinds[i]
            for j in range(MAX_INTS):
                self.ops[i].params.p[j] = ints[i, j]
            for j in range(MAX_FLOATS):
                self.ops[i].f[j] = floats[i, j]
            for j in range(MAX_CONSTS):
                self.ops[i].c[j] = cofs[i, j]
            self.ops[i].inp[0] = inp[i, 0]
            self.ops[i].inp[1] = inp[i, 1]
            self.ops[i].out = out[i]

    def __dealloc__(self):
        if self.ops != NULL:
            PyMem_Free(self.ops)
            self.ops = NULL

    def run_range(self, int start, int stop):
        """Execute ops [start, stop) (for tracing intermediate tensors)."""
        cdef uint8_t* ar = &self.arena[0]
        cdef const uint8_t* cb = &self.consts[0]
        cdef uint8_t* sc = &self.scratch[0]
        cdef int i
        if start < 0 or stop > self.n_ops or start > stop:
            raise IndexError("op range out of bounds")
        with nogil:
            for i in range(start, stop):
                run_op(&self.ops[i], ar, cb, sc)

    def run(self):
        """Execute every op in order (no GIL held)."""
        cdef uint8_t* ar = &self.arena[0]
        cdef const uint8_t* cb = &self.consts[0]
        cdef uint8_t* sc = &self.scratch[0]
        cdef int i
        with nogil:
            for i in range(self.n_ops):
                run_op(&self.ops[i], ar, cb, sc)


def mbqm64(int64_t x, int32_t m, int32_t shift):
    """i8r_mbqm64 for tests: round(x * m / 2^(31 - shift)), half toward +infinity."""
    return i8r_mbqm64(x, m, shift)
