"""The `onnxruntime` compiler: the CPU fallback target."""
