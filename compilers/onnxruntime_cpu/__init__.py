"""The `onnxruntime` compiler: the CPU fallback target."""

from tapeout.compilers.onnxruntime_cpu.compiler import OnnxRuntimeCompiler

__all__ = ["OnnxRuntimeCompiler"]
