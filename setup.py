"""Only the compiled extensions live here; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

# Portable flags only (no -march=native): the artifact's numbers must not depend on the
# build machine. OpenMP is not used. The kernel units (compilers/int8_ref/kernels/*.pxi) are
# included into _kernels.pyx; fixed_point.h is found through include_dirs.
extensions = [
    Extension(
        "tapeout.compilers.int8_ref._kernels",
        ["compilers/int8_ref/_kernels.pyx"],
        include_dirs=["compilers/int8_ref/kernels"],
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=cythonize(extensions, language_level=3))
