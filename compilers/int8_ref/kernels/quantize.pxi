# QUANTIZE (ops/quantize.py): float32 -> int8 / uint8 / int16, ONNX QuantizeLinear:
# saturate(round_half_even(x / scale) + zp), dividing as ORT does (i8r_eltwise.h, vector paths
# on the host's instruction set).

cdef void quantize_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                        uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const QuantizeParams* prm = &d.params.quantize
    cdef i8r_quantize_t q
    q.n = prm.n
    q.scale = d.f[QUANTIZE_F_SCALE]
    q.zp, q.qmin, q.qmax = <int32_t>prm.zp, <int32_t>prm.qmin, <int32_t>prm.qmax
    q.out_code = <int32_t>prm.sg_out
    i8r_quantize(host.isa, &q, <const float*>(a + d.inp[0]), a + d.out)
