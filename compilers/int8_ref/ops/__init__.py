"""One module per firmware op kind (docs/int8-ref.md, "How to add an op").

Each module holds everything about its op: the parameter layout and the `KERNEL`
registration (kernel_abi.KernelSpec: load-time validation, work, cost), the `ONNX` table of
the ONNX ops it lowers (kernel_abi.OnnxOp: lowering with its compile-time prepare, the
compatibility report's attribute rules), and its kernel unit is kernels/<module>.pxi. The
registry is opset.MODULES. Modules whose name starts with "_" are helpers shared by a few
op modules, not ops.
"""
