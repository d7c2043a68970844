"""Where Vela put each op (NPU or CPU), and how many multiply-accumulates each does.

Vela compiles what the NPU supports into one `ethos-u` custom op and leaves every other op of
the TFLite model as it was, for TensorFlow Lite Micro on the Cortex-M CPU. The ops left are read
from Vela's output model; the op's output tensor names it, and Vela's console explains why it
stayed (`--show-cpu-operations`: "Warning (supported operators) operator: OP, ofm: 'NAME'"
followed by the reason).

MACs are counted here, the same way for every op of the pre-Vela int8 model and for the ops Vela
left on the CPU: a convolution does (output elements) × (filter height × width × input channels
per group), a depthwise convolution (output elements) × (filter height × width), a
fully-connected layer (output elements) × (input features), a batch matrix product (output
elements) × (the shared dimension); every other op counts 0. The NPU's share of MACs is
1 - (MACs on the CPU) / (all MACs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PlacedOperator:
    """One TFLite op of the converted model: its name, output tensor, MACs and where it runs."""

    op: str
    output: str
    macs: int
    unit: str  # "NPU" or "CPU"
    reason: str = ""  # why Vela left it on the CPU (its console), empty on the NPU


def _builtin_names() -> dict[int, str]:
    from ethosu.vela.tflite import BuiltinOperator

    return {value: key for key, value in vars(BuiltinOperator.BuiltinOperator).items() if not key.startswith("_")}


def _shape(tensor) -> tuple[int, ...]:
    return tuple(int(tensor.Shape(i)) for i in range(tensor.ShapeLength()))


def _elements(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _macs(name: str, operator, subgraph) -> int:
    """Multiply-accumulates of one op (see the module's docstring)."""
    if operator.OutputsLength() == 0 or operator.InputsLength() < 2:
        return 0
    output = _elements(_shape(subgraph.Tensors(operator.Outputs(0))))
    second = _shape(subgraph.Tensors(operator.Inputs(1)))
    if name == "CONV_2D" and len(second) == 4:  # filter [O, H, W, I/groups]
        return output * second[1] * second[2] * second[3]
    if name == "DEPTHWISE_CONV_2D" and len(second) == 4:  # filter [1, H, W, O]
        return output * second[1] * second[2]
    if name == "FULLY_CONNECTED" and len(second) == 2:  # weights [O, I]
        return output * second[1]
    if name == "BATCH_MATMUL":
        from ethosu.vela.tflite import BatchMatMulOptions

        first = _shape(subgraph.Tensors(operator.Inputs(0)))
        options = BatchMatMulOptions.BatchMatMulOptions()
        table = operator.BuiltinOptions()
        adjoint = False
        if table is not None:
            options.Init(table.Bytes, table.Pos)
            adjoint = bool(options.AdjX())
        return output * first[-2 if adjoint else -1]
    return 0


def model_operators(path: Path, skip_npu_op: bool = False) -> list[tuple[str, str, int]]:
    """(op name, output tensor name, MACs) of every op of a TFLite model, in order; with
    `skip_npu_op`, without Vela's `ethos-u` custom op (the ops left for the CPU)."""
    from ethosu.vela.tflite import Model

    names = _builtin_names()
    model = Model.Model.GetRootAsModel(path.read_bytes(), 0)
    found = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(o)
            code = model.OperatorCodes(operator.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
            if skip_npu_op and name == "CUSTOM" and (code.CustomCode() or b"").decode() == "ethos-u":
                continue
            output = subgraph.Tensors(operator.Outputs(0)).Name().decode() if operator.OutputsLength() else ""
            found.append((name, output, _macs(name, operator, subgraph)))
    return found


_REASON = re.compile(r"^Warning \(supported operators\) operator: (\S+), ofm: '(.*)'$")


def cpu_reasons(vela_log: str) -> dict[str, str]:
    """Output tensor name -> Vela's reason for leaving the op on the CPU, from its console."""
    reasons: dict[str, str] = {}
    current = None
    for line in vela_log.splitlines():
        match = _REASON.match(line.strip())
        if match:
            current = match.group(2)
            reasons[current] = ""
            continue
        if current is not None:
            if not line.strip():
                current = None
            else:
                text = line.strip().removeprefix("Reason: ")
                reasons[current] = (reasons[current] + " " + text).strip()
    return reasons


def placement(int8_model: Path, vela_model: Path, vela_log: str) -> list[PlacedOperator]:
    """Every op of the pre-Vela model with the unit Vela put it on."""
    on_cpu = {output: macs for _, output, macs in model_operators(vela_model, skip_npu_op=True)}
    reasons = cpu_reasons(vela_log)
    return [
        PlacedOperator(op, output, macs, "CPU" if output in on_cpu else "NPU",
                       reasons.get(output, "") if output in on_cpu else "")
        for op, output, macs in model_operators(int8_model)
    ]


def npu_mac_share(int8_model: Path, vela_model: Path) -> tuple[int, int, float]:
    """(all MACs, MACs on the CPU, the NPU's share of the MACs: 1.0 when there are none)."""
    total = sum(macs for _, _, macs in model_operators(int8_model))
    cpu = sum(macs for _, _, macs in model_operators(vela_model, skip_npu_op=True))
    return total, cpu, (1.0 - cpu / total) if total else 1.0
