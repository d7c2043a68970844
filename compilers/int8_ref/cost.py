"""The cost of one run of a lowered program: multiply-accumulates and memory traffic.

Counted from the program the firmware runs (after fusion, with the requantizations and
conversions the lowering added), not from the ONNX graph, for one call of the Runner at the
compiled batch. An energy model (tapeout.flows.energy) turns it into joules; this module only
counts.

    macs           products accumulated by CONV (N·M·OH·OW·C/groups·kh·kw), GEMM (M·K·N) and
                   MATMUL (B·M·K·N); elementwise ops, pools and requantizations count 0
    bytes_read     for every op, the bytes of each arena tensor it reads (once per op), at the
                   tensor's width (int8/uint8 1, int16 2, int32/float32 4), plus weight_bytes
    bytes_written  for every op, the bytes of the tensor it writes, at its width
    weight_bytes   the parameters the ops read once per run: Conv/Gemm weights at 1 byte (the
                   model's int8/uint8; the firmware keeps them pre-widened as int16 `w - zp`,
                   which is a layout choice, not the accelerator's traffic), int32 biases at 4,
                   and constant 8-bit operands (LOAD_CONST); per-channel requantization
                   multipliers and lookup tables are not counted
    batch          the batch the program was compiled for (first dimension of the first input)

Each op kind counts its own MACs and weight bytes (KernelSpec.cost in ops/<op>.py).
"""

from __future__ import annotations

from .opset import KERNELS
from .program import Program


def program_cost(prog: Program) -> dict[str, int]:
    """{"macs", "bytes_read", "bytes_written", "weight_bytes", "batch"} for one run."""
    macs = activation_read = written = weights = 0
    for op in prog.ops:
        kernel = KERNELS[op.kind]
        op_macs, op_weights = kernel.cost({k: int(op.ints[k]) for k in kernel.params})
        macs += op_macs
        weights += op_weights
        activation_read += sum(prog.tensors[t].nbytes for t in op.inputs)
        written += prog.tensors[op.output].nbytes
    batch = 1
    if prog.inputs and prog.tensors[prog.inputs[0]].shape:
        batch = int(prog.tensors[prog.inputs[0]].shape[0])
    return {
        "macs": int(macs),
        "bytes_read": int(activation_read + weights),
        "bytes_written": int(written),
        "weight_bytes": int(weights),
        "batch": batch,
    }
