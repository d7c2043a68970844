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

It also holds the host the kernels run on (kernels/common.pxi `Host`): the instruction-set
path of the vector kernels (the best this CPU runs unless told otherwise, kernels/i8r_isa.h)
and, for `threads` > 1, worker threads (kernels/i8r_pool.h). Neither changes a result.
"""

from libc.stdint cimport int8_t, uint8_t, int16_t, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.math cimport lrintf, fmaf
from cpython.mem cimport PyMem_Malloc, PyMem_Free

FIRMWARE_REVISION = "2.0.0"  # the simulated firmware: reads artifact format 3 (packed weights)

include "kernels/_opset.pxi"

ISA_NAMES = tuple(I8R_ISA_NAMES[i].decode() for i in range(I8R_N_ISA))


def supported_isas() -> tuple:
    """The instruction-set paths this build has and this CPU runs, portable first."""
    return tuple(n for i, n in enumerate(ISA_NAMES) if i8r_isa_supported(i))


def default_isa() -> str:
    """The path an Engine takes unless told otherwise: the best this CPU runs, capped by the
    environment variable TAPEOUT_INT8REF_ISA when it names one."""
    return ISA_NAMES[i8r_isa_default()]


def conv_scratch_bytes(int64_t N, int64_t C, int64_t H, int64_t W, int64_t M, int64_t kh,
                       int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh,
                       int64_t dw, int64_t groups, int64_t OH, int64_t OW, int64_t depthwise,
                       int64_t rows):
    """Scratch bytes of an 8-bit CONV (i8r_conv_scratch), for the compiler and the loader.
    The caller has bounded the padded input (ops/conv.py), so nothing here overflows."""
    cdef i8r_conv_t c
    c.N, c.C, c.H, c.W, c.M, c.kh, c.kw, c.sh, c.sw = N, C, H, W, M, kh, kw, sh, sw
    c.pt, c.pl, c.dh, c.dw, c.G, c.OH, c.OW = pt, pl, dh, dw, groups, OH, OW
    c.xzp, c.x_signed, c.depthwise, c.rows = 0, 0, <int32_t>depthwise, rows
    return i8r_conv_scratch(&c)


def maxpool_scratch_bytes(int64_t OW, int64_t sw, int64_t kw, int64_t dw, int64_t W,
                          int64_t pl):
    """Scratch bytes of an 8-bit MAXPOOL (i8r_maxpool_scratch), for the compiler and the
    loader (which bounds the row first)."""
    cdef i8r_maxpool_t q
    q.OW, q.sw, q.kw, q.dw, q.W, q.pl = OW, sw, kw, dw, W, pl
    return i8r_maxpool_scratch(&q)


cdef class Engine:
    """Runs a validated op list over one arena. Built once per loaded artifact."""

    cdef OpDesc* ops
    cdef int n_ops
    cdef Host host
    cdef public object arena_array
    cdef unsigned char[::1] arena
    cdef const unsigned char[::1] consts
    cdef unsigned char[::1] scratch

    def __cinit__(self):
        self.ops = NULL
        self.n_ops = 0
        self.host.isa = 0
        self.host.pool = NULL

    def __init__(self, object arena, const unsigned char[::1] consts,
                 unsigned char[::1] scratch, const int32_t[::1] kinds,
                 const int64_t[:, ::1] ints, const float[:, ::1] floats,
                 const int64_t[:, ::1] inp, const int64_t[::1] out,
                 const int64_t[:, ::1] cofs, str isa=None, int threads=1):
        cdef int i, j
        name = default_isa() if isa is None else isa
        if name not in ISA_NAMES or not i8r_isa_supported(ISA_NAMES.index(name)):
            raise ValueError(f"instruction set {name!r} is not available here; this build "
                             f"and CPU run {supported_isas()}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.host.isa = ISA_NAMES.index(name)
        if threads > 1:
            self.host.pool = i8r_pool_new(threads)
            if self.host.pool == NULL:
                raise MemoryError()
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
        i8r_pool_free(self.host.pool)
        self.host.pool = NULL

    @property
    def isa(self) -> str:
        """The instruction-set path this engine's vector kernels take."""
        return ISA_NAMES[self.host.isa]

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
                run_op(&self.ops[i], ar, cb, sc, &self.host)

    def run(self):
        """Execute every op in order (no GIL held)."""
        cdef uint8_t* ar = &self.arena[0]
        cdef const uint8_t* cb = &self.consts[0]
        cdef uint8_t* sc = &self.scratch[0]
        cdef int i
        with nogil:
            for i in range(self.n_ops):
                run_op(&self.ops[i], ar, cb, sc, &self.host)


def mbqm64(int64_t x, int32_t m, int32_t shift):
    """i8r_mbqm64 for tests: round(x * m / 2^(31 - shift)), half toward +infinity."""
    return i8r_mbqm64(x, m, shift)
