# cython: language_level=3, boundscheck=True, wraparound=False
"""The int8 Conv and Gemm kernels (kernels/i8r_qgemm.h) called directly, one op at a time,
on any instruction-set path: what the kernel tests compare path against path and against a
plain integer reference. The firmware engine calls the same C functions."""

from libc.stdint cimport int8_t, uint8_t, int16_t, int32_t, int64_t
import numpy as np

cdef extern from "i8r_qgemm.h":
    int I8R_N_ISA
    const char* I8R_ISA_NAMES[]
    int i8r_isa_supported(int isa) nogil
    int i8r_isa_default() nogil
    ctypedef struct i8r_requant_t:
        int32_t mode, out_code, zp, qmin, qmax
        const float* scale
        const int32_t* mult
        const int32_t* shift
    ctypedef struct i8r_conv_t:
        int64_t N, C, H, W, M, kh, kw, sh, sw, pt, pl, dh, dw, G, OH, OW
        int32_t xzp, x_signed, depthwise
        int64_t rows
    ctypedef struct i8r_gemm_t:
        int64_t Mr, K, N
        int32_t x_signed
    ctypedef struct i8r_pool_t:
        pass
    i8r_pool_t* i8r_pool_new(int threads) nogil
    void i8r_pool_free(i8r_pool_t* pool) nogil
    int64_t i8r_conv_scratch(const i8r_conv_t* c) nogil
    int64_t i8r_gemm_scratch(const i8r_gemm_t* g) nogil
    void i8r_conv(const i8r_conv_t* c, const uint8_t* x, const void* w, const int32_t* bias,
                  const int32_t* zb, const i8r_requant_t* rq, uint8_t* y, uint8_t* scratch,
                  int isa, i8r_pool_t* pool) nogil
    void i8r_gemm(const i8r_gemm_t* g, const uint8_t* x, const uint8_t* w,
                  const int32_t* bias, const int32_t* zb, const i8r_requant_t* rq, uint8_t* y,
                  uint8_t* scratch, int isa, i8r_pool_t* pool) nogil

cdef extern from "i8r_eltwise.h":
    ctypedef struct i8r_quantize_t:
        int64_t n
        float scale
        int32_t zp, qmin, qmax, out_code
    ctypedef struct i8r_add_t:
        int32_t mode, x_signed, off, left_shift, azp, bzp, yzp, qmin, qmax
        float rac, rbc, fixed
        int32_t mult_a, shift_a, mult_b, shift_b, mult_y, shift_y
    ctypedef struct i8r_maxpool_t:
        int64_t N, C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW
        int32_t x_signed
    void i8r_quantize(int isa, const i8r_quantize_t* q, const float* x, uint8_t* y) nogil
    void i8r_add(int isa, const i8r_add_t* p, const uint8_t* A, int64_t asi, const uint8_t* B,
                 int64_t bsi, uint8_t* y, int64_t n) nogil
    int64_t i8r_maxpool_scratch(const i8r_maxpool_t* p) nogil
    int i8r_maxpool(int isa, const i8r_maxpool_t* p, const uint8_t* x, uint8_t* y,
                    uint8_t* row) nogil

ISA_NAMES = tuple(I8R_ISA_NAMES[i].decode() for i in range(I8R_N_ISA))
OUT_DTYPES = {0: np.uint8, 1: np.int8, 2: np.int16}


def supported_isas() -> tuple:
    """The paths this build has and this CPU runs, portable first."""
    return tuple(n for i, n in enumerate(ISA_NAMES) if i8r_isa_supported(i))


def default_isa() -> str:
    """The path an engine takes unless told otherwise (TAPEOUT_INT8REF_ISA caps it)."""
    return ISA_NAMES[i8r_isa_default()]


def isa_index(name: str) -> int:
    """The index of a supported path; ValueError naming the supported ones otherwise."""
    if name not in ISA_NAMES or not i8r_isa_supported(ISA_NAMES.index(name)):
        raise ValueError(f"instruction set {name!r} is not available here; this build and "
                         f"CPU run {supported_isas()}")
    return ISA_NAMES.index(name)


cdef i8r_requant_t _requant(dict q, object keep):
    cdef i8r_requant_t r
    cdef float[::1] scale = np.ascontiguousarray(q["scale"], np.float32)
    cdef int32_t[::1] mult = np.ascontiguousarray(q["mult"], np.int32)
    cdef int32_t[::1] shift = np.ascontiguousarray(q["shift"], np.int32)
    keep.extend([scale, mult, shift])
    r.mode, r.out_code = q["mode"], q["out_code"]
    r.zp, r.qmin, r.qmax = q["zp"], q["qmin"], q["qmax"]
    r.scale, r.mult, r.shift = &scale[0], &mult[0], &shift[0]
    return r


def _out(q: dict, shape) -> np.ndarray:
    dtype = np.int32 if q["mode"] == 2 else OUT_DTYPES[q["out_code"]]
    return np.zeros(shape, dtype)


cdef class Pool:
    """Worker threads for `threads` > 1 (a deterministic split: same results as one)."""
    cdef i8r_pool_t* pool

    def __cinit__(self, int threads):
        self.pool = i8r_pool_new(threads)
        if self.pool == NULL:
            raise MemoryError()

    def __dealloc__(self):
        i8r_pool_free(self.pool)


cdef i8r_pool_t* _pool(object pool):
    return NULL if pool is None else (<Pool>pool).pool


def conv(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, zb: np.ndarray, geometry: dict,
         requant: dict, isa: str, pool=None) -> np.ndarray:
    """One Conv: x [N, C, H, W] int8/uint8, packed weights (qgemm_pack.conv/depthwise),
    geometry keys as i8r_conv_t, requant keys as i8r_requant_t with per-channel arrays."""
    cdef i8r_conv_t c
    cdef i8r_requant_t r
    keep = []
    fields = ("N", "C", "H", "W", "M", "kh", "kw", "sh", "sw", "pt", "pl", "dh", "dw", "G",
              "OH", "OW", "xzp", "depthwise", "rows")
    c = {**{k: int(geometry[k]) for k in fields}, "x_signed": int(x.dtype == np.int8)}
    r = _requant(requant, keep)
    cdef const uint8_t[::1] xb = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    cdef const uint8_t[::1] wb = np.ascontiguousarray(weights).reshape(-1).view(np.uint8)
    cdef const int32_t[::1] bb = np.ascontiguousarray(bias, np.int32)
    cdef const int32_t[::1] zbb = np.ascontiguousarray(zb, np.int32)
    y = _out(requant, (c.N, c.M, c.OH, c.OW))
    cdef uint8_t[::1] yb = y.reshape(-1).view(np.uint8)
    cdef uint8_t[::1] scratch = np.zeros(i8r_conv_scratch(&c) + 64, np.uint8)
    cdef int i = isa_index(isa)
    cdef i8r_pool_t* p = _pool(pool)
    if xb.shape[0] != c.N * c.C * c.H * c.W or bb.shape[0] < c.M or zbb.shape[0] < c.M:
        raise ValueError("conv: input, bias or zb has the wrong size")
    with nogil:
        i8r_conv(&c, &xb[0], &wb[0], &bb[0], &zbb[0], &r, &yb[0], &scratch[0], i, p)
    return y


def gemm(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, zb: np.ndarray, N: int,
         requant: dict, isa: str, pool=None) -> np.ndarray:
    """One Gemm: x [Mr, K] int8/uint8 times packed weights (qgemm_pack.gemm) -> [Mr, N]."""
    cdef i8r_gemm_t g
    cdef i8r_requant_t r
    keep = []
    g.Mr, g.K, g.N = x.shape[0], x.shape[1], N
    g.x_signed = x.dtype == np.int8
    r = _requant(requant, keep)
    # the kernel reads up to 3 bytes past a row, as in the arena (which has slack)
    padded = np.zeros(x.size + 64, np.uint8)
    padded[:x.size] = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    cdef const uint8_t[::1] xb = padded
    cdef const uint8_t[::1] wb = np.ascontiguousarray(weights).reshape(-1).view(np.uint8)
    cdef const int32_t[::1] bb = np.ascontiguousarray(bias, np.int32)
    cdef const int32_t[::1] zbb = np.ascontiguousarray(zb, np.int32)
    y = _out(requant, (g.Mr, g.N))
    cdef uint8_t[::1] yb = y.reshape(-1).view(np.uint8)
    cdef uint8_t[::1] scratch = np.zeros(i8r_gemm_scratch(&g) + 64, np.uint8)
    cdef int i = isa_index(isa)
    cdef i8r_pool_t* p = _pool(pool)
    with nogil:
        i8r_gemm(&g, &xb[0], &wb[0], &bb[0], &zbb[0], &r, &yb[0], &scratch[0], i, p)
    return y


def quantize(x: np.ndarray, scale: float, zp: int, qmin: int, qmax: int, out_code: int,
             isa: str) -> np.ndarray:
    """QuantizeLinear of float32 x (i8r_eltwise.h)."""
    cdef i8r_quantize_t q
    q.n, q.scale, q.zp, q.qmin, q.qmax, q.out_code = x.size, scale, zp, qmin, qmax, out_code
    cdef const float[::1] xb = np.ascontiguousarray(x, np.float32).reshape(-1)
    y = np.zeros(x.shape, OUT_DTYPES[out_code])
    cdef uint8_t[::1] yb = y.reshape(-1).view(np.uint8)
    cdef int i = isa_index(isa)
    with nogil:
        i8r_quantize(i, &q, &xb[0], &yb[0])
    return y


def add(a: np.ndarray, b: np.ndarray, params: dict, isa: str) -> np.ndarray:
    """One Add span: a and b 1-D int8/uint8 of the output's length, or of length 1 (a scalar
    side, stride 0)."""
    cdef i8r_add_t p = {**params, "x_signed": int(a.dtype == np.int8)}
    cdef int64_t n = max(a.size, b.size)
    cdef const uint8_t[::1] ab = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    cdef const uint8_t[::1] bb = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    y = np.zeros(n, a.dtype)
    cdef uint8_t[::1] yb = y.view(np.uint8)
    cdef int64_t asi = 1 if a.size == n else 0, bsi = 1 if b.size == n else 0
    cdef int i = isa_index(isa)
    with nogil:
        i8r_add(i, &p, &ab[0], asi, &bb[0], bsi, &yb[0], n)
    return y


def maxpool(x: np.ndarray, geometry: dict, isa: str):
    """MaxPool of x [N, C, H, W] int8/uint8, or None where the scalar form must run."""
    cdef i8r_maxpool_t p = {**{k: int(v) for k, v in geometry.items()},
                            "x_signed": int(x.dtype == np.int8)}
    # the vector form reads up to 15 bytes past a row, as in the arena (which has slack)
    padded = np.zeros(x.size + 64, np.uint8)
    padded[:x.size] = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    cdef const uint8_t[::1] xb = padded
    cdef int i = isa_index(isa)
    y = np.zeros((p.N, p.C, p.OH, p.OW), x.dtype)
    cdef uint8_t[::1] yb = y.reshape(-1).view(np.uint8)
    cdef uint8_t[::1] row = np.zeros(i8r_maxpool_scratch(&p), np.uint8)
    cdef int done
    with nogil:
        done = i8r_maxpool(i, &p, &xb[0], &yb[0], &row[0])
    return y if done else None
