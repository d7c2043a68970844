"""Only the compiled extensions live here; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

# Portable flags only (no -march=native): one build runs on any x86-64 (or other) CPU and the
# artifact's numbers do not depend on the build machine. The int8 kernels compile their
# SSE4.1 / AVX2 / AVX-512 VNNI paths with per-function target attributes and choose at run
# time (compilers/int8_ref/kernels/i8r_isa.h). No FMA contraction: the float32
# requantization must round exactly as written. OpenMP is not used. The kernel units
# (compilers/int8_ref/kernels/*.pxi) are included into _kernels.pyx; their C headers are found
# through include_dirs.
FLAGS = ["-O3", "-ffp-contract=off"]
KERNELS = ["compilers/int8_ref/kernels"]
extensions = [
    Extension(
        "tapeout.compilers.int8_ref._kernels",
        ["compilers/int8_ref/_kernels.pyx"],
        include_dirs=KERNELS,
        extra_compile_args=FLAGS,
    ),
    Extension(
        "tapeout.compilers.int8_ref._qgemm",
        ["compilers/int8_ref/_qgemm.pyx"],
        include_dirs=KERNELS,
        extra_compile_args=FLAGS,
    ),
]

setup(ext_modules=cythonize(extensions, language_level=3))
