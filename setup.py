"""Only the compiled extensions live here; everything else is in pyproject.toml."""

from setuptools import setup

setup(ext_modules=[])
