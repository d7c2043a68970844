/* The instruction sets the int8-ref kernels are built for, and the choice among them.

   Every kernel has a portable C version; on x86-64 built with GCC or Clang it also has
   SSE4.1, AVX2 and AVX-512 VNNI versions, each compiled with a per-function target attribute
   (never -march), so one build runs on any x86-64 CPU and picks the best path at run time
   from CPUID. Every path computes the exact integer dot product and the same requantization
   (i8r_qgemm.h explains how), so outputs are identical bit for bit whichever runs.

   TAPEOUT_INT8REF_ISA (one of I8R_ISA_NAMES) caps the default choice; tests also select a
   path per Engine. */
#ifndef I8R_ISA_H
#define I8R_ISA_H

#include <stdlib.h>
#include <string.h>

enum { I8R_PORTABLE = 0, I8R_SSE41 = 1, I8R_AVX2 = 2, I8R_AVX512VNNI = 3, I8R_N_ISA = 4 };

static const char* const I8R_ISA_NAMES[I8R_N_ISA] = {"portable", "sse4.1", "avx2",
                                                     "avx512-vnni"};

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define I8R_X86 1
#else
#define I8R_X86 0
#endif

/* 1 when this build has the path and this CPU (and its OS, for the wider registers) runs it.
   libgcc's __builtin_cpu_supports checks XGETBV before it reports AVX2 or AVX-512. */
static int i8r_isa_supported(int isa) {
    if (isa == I8R_PORTABLE) return 1;
#if I8R_X86
    __builtin_cpu_init();
    switch (isa) {
    case I8R_SSE41:
        return __builtin_cpu_supports("sse4.1") != 0;
    case I8R_AVX2: /* every AVX2 kernel may use FMA3 (Add's fused multiply-adds) */
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case I8R_AVX512VNNI:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
               && __builtin_cpu_supports("avx512vnni");
    default:
        return 0;
    }
#else
    return 0;
#endif
}

/* The index of `name` in I8R_ISA_NAMES, or -1. */
static int i8r_isa_by_name(const char* name) {
    int i;
    for (i = 0; i < I8R_N_ISA; i++)
        if (strcmp(name, I8R_ISA_NAMES[i]) == 0) return i;
    return -1;
}

/* The best supported path, capped by TAPEOUT_INT8REF_ISA when it names one. */
static int i8r_isa_default(void) {
    const char* cap = getenv("TAPEOUT_INT8REF_ISA");
    int best = I8R_N_ISA - 1, limit = cap ? i8r_isa_by_name(cap) : -1;
    if (limit >= 0) best = limit;
    while (best > 0 && !i8r_isa_supported(best)) best--;
    return best;
}

#endif
