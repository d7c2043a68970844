"""The `openvino` compiler: OpenVINO's CPU plugin, compiled blob exported as the artifact."""

from tapeout.compilers.openvino.compiler import OpenVinoCompiler

__all__ = ["OpenVinoCompiler"]
