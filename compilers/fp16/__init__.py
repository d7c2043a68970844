"""The `fp16` compiler: the float model converted to float16, run by ONNX Runtime."""

from tapeout.compilers.fp16.compiler import Fp16Compiler

__all__ = ["Fp16Compiler"]
