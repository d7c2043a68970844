"""`acme-npuc`: the ACME NPU's command-line compiler (a vendor tool: it knows nothing of tapeout).

    acme-npuc MODEL.onnx -o OUT.acme [--sram-kib N]
    acme-npuc --version

Exit codes: 0 compiled; 2 bad arguments or unreadable model; 3 unsupported input
(`ACME-E104` op, `ACME-E105` dtype); 4 does not fit the SRAM (`ACME-E201`). Diagnostics go to
stderr as `error: ACME-Exxx: ...`; the progress log goes to stdout. The log has no timestamps,
so the same model gives the same log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

VERSION = "2.1.0"
# What the NPU executes natively; Q/DQ pairs become the int8 tensors' parameters.
NPU_OPS = frozenset({"Conv", "Gemm", "MatMul", "Add", "Relu", "Clip", "MaxPool", "AveragePool",
                     "GlobalAveragePool"})
HOST_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Flatten", "Reshape", "Softmax", "Identity"})
_DTYPES = {1: "float32", 3: "int8", 6: "int32", 7: "int64"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acme-npuc", description="ACME NPU compiler")
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("-o", "--output", type=Path)
    parser.add_argument("--sram-kib", type=int, default=512)
    parser.add_argument("--version", action="store_true")
    args = parser.parse_args(argv)
    if args.version:
        print(f"acme-npuc {VERSION}")
        return 0
    if args.model is None or args.output is None:
        print("error: ACME-E001: expected MODEL.onnx and -o OUT.acme", file=sys.stderr)
        return 2
    return compile_model(args.model, args.output, args.sram_kib)


def compile_model(model_path: Path, output: Path, sram_kib: int) -> int:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from acme_npu.blob import pack

    print(f"acme-npuc {VERSION}")
    try:
        model = onnx.load(str(model_path))
    except Exception as error:
        print(f"error: ACME-E002: cannot read {model_path.name}: {error}", file=sys.stderr)
        return 2
    graph = model.graph
    print(f"[parse] {model_path.name}: {len(graph.node)} nodes, {len(graph.initializer)} constants")
    npu, host = 0, 0
    for node in graph.node:
        qualified = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if node.domain in ("", "ai.onnx") and node.op_type in NPU_OPS:
            npu += 1
            print(f"[map] {node.name or node.output[0]}: {node.op_type} -> NPU")
        elif node.domain in ("", "ai.onnx") and node.op_type in HOST_OPS:
            host += 1
        else:
            print(f"[map] {node.name or node.output[0]}: {qualified} -> none", flush=True)
            print(
                f"error: ACME-E104: node '{node.name or node.output[0]}' (op {qualified}) is not "
                "supported by the ACME NPU",
                file=sys.stderr,
            )
            return 3
    if not any(node.op_type == "QuantizeLinear" for node in graph.node):
        print("error: ACME-E105: expected an int8 QDQ model, found no QuantizeLinear node", file=sys.stderr)
        return 3
    weight_bytes = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
    activation_bytes = 0
    for value in [*graph.input, *graph.output]:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        activation_bytes += int(np.prod(shape or [1]))
    needed = weight_bytes + 2 * activation_bytes
    print(f"[alloc] weights {weight_bytes} B, io {activation_bytes} B, sram {sram_kib} KiB")
    if needed > sram_kib * 1024:
        print(
            f"error: ACME-E201: model needs {needed} B of SRAM, the NPU has {sram_kib * 1024} B",
            file=sys.stderr,
        )
        return 4
    header = {
        "toolchain": f"acme-npuc {VERSION}",
        "npu_ops": npu,
        "host_ops": host,
        "sram_bytes": needed,
        "inputs": [v.name for v in graph.input if v.name not in {t.name for t in graph.initializer}],
        "outputs": [v.name for v in graph.output],
    }
    output.write_bytes(pack(header, model.SerializeToString(deterministic=True)))
    print(f"[done] {npu} ops on the NPU, {host} on the host; wrote {output.name} ({output.stat().st_size} B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
