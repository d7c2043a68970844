"""Only the compiled extensions live here; everything else is in pyproject.toml."""

from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

# Portable flags only (no -march=native): one build runs on any x86-64 (or other) CPU and the
# artifact's numbers do not depend on the build machine. The int8 kernels compile their
# SSE4.1 / AVX2 / AVX-512 VNNI paths with per-function target attributes and choose at run
# time (compilers/int8_ref/kernels/i8r_isa.h). No FMA contraction: the float32
# requantization must round exactly as written. OpenMP is not used. The kernel units
# (compilers/int8_ref/kernels/*.pxi) are included into _kernels.pyx and the C headers beside
# them are found through include_dirs; `depends` puts them in a source distribution and
# rebuilds the extensions when one changes.
FLAGS = ["-O3", "-ffp-contract=off"]
KERNELS = "compilers/int8_ref/kernels"
extensions = [
    Extension(
        name,
        [source],
        include_dirs=[KERNELS],
        depends=sorted(glob(f"{KERNELS}/*")),
        extra_compile_args=FLAGS,
    )
    for name, source in (
        ("tapeout.compilers.int8_ref._kernels", "compilers/int8_ref/_kernels.pyx"),
        ("tapeout.compilers.int8_ref._qgemm", "compilers/int8_ref/_qgemm.pyx"),
    )
]

setup(ext_modules=cythonize(extensions, language_level=3))
