"""Only the compiled extensions live here; everything else is in pyproject.toml."""

from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

# Portable flags only (no -march=native): the artifact's numbers must not depend on the
# build machine. OpenMP is not used. The kernel units (compilers/int8_ref/kernels/*.pxi) are
# included into _kernels.pyx and fixed_point.h is found through include_dirs; `depends` puts
# them in a source distribution and rebuilds the extension when one changes.
extensions = [
    Extension(
        "tapeout.compilers.int8_ref._kernels",
        ["compilers/int8_ref/_kernels.pyx"],
        include_dirs=["compilers/int8_ref/kernels"],
        depends=sorted(glob("compilers/int8_ref/kernels/*")),
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=cythonize(extensions, language_level=3))
