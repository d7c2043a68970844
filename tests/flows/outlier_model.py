"""A model built so that one layer breaks int8: `fc1`'s output carries a huge outlier activation.

x[1,16] → fc1 (Gemm) → Relu → fc2 (Gemm) → Relu → fc3 (Gemm) → logits[1,10]. Channel 0 of
fc1's output is a constant 1000 that fc2 ignores (weight 0): per-tensor int8 spends its whole
range on it (scale ≈ 1000/255), so every other channel of fc1 rounds to a few levels and the
classes scramble. Keeping fc1 out of int8 repairs it: its output in fp32 (onnxruntime) or in
int16 (int8-ref, scale ≈ 1000/65535). Labels are the fp32 model's own top-1, so fp32 accuracy
is 1.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUTLIER_LAYER = "fc1"


def build_outlier_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    generator = np.random.default_rng(0)
    w1 = (generator.standard_normal((32, 16)) * 0.5).astype(np.float32)
    b1 = np.zeros(32, np.float32)
    w1[0], b1[0] = 0.0, 1000.0  # the outlier channel
    w2 = generator.standard_normal((10, 32)).astype(np.float32)
    w2[:, 0] = 0.0
    w3 = generator.standard_normal((10, 10)).astype(np.float32)
    zeros = np.zeros(10, np.float32)
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": zeros, "w3": w3, "b3": zeros}
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
            helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
            helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2", transB=1),
            helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
            helper.make_node("Gemm", ["r2", "w3", "b3"], ["logits"], name="fc3", transB=1),
        ],
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_sets(model: Path, folder: Path, calibration: int = 100, validation: int = 300) -> tuple[Path, Path]:
    """calibration.npz (x) and validation.npz (x, label = fp32 top-1) beside the model."""
    import onnxruntime

    generator = np.random.default_rng(1)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    folder.mkdir(parents=True, exist_ok=True)
    # Samples whose fp32 top-1 wins by a clear margin: int8 noise elsewhere must not flip them.
    candidates = generator.standard_normal((4 * (calibration + validation), 16)).astype(np.float32)
    logits = np.concatenate([session.run(None, {"x": row[None]})[0] for row in candidates])
    ordered = np.sort(logits, axis=1)
    clear = (ordered[:, -1] - ordered[:, -2]) > 0.1 * np.abs(ordered[:, -1]).mean()
    x, labels = candidates[clear][: calibration + validation], logits[clear].argmax(axis=1).astype(np.int64)[: calibration + validation]
    np.savez(folder / "calibration.npz", x=x[:calibration])
    np.savez(folder / "validation.npz", x=x[calibration:], label=labels[calibration:])
    return folder / "calibration.npz", folder / "validation.npz"


PIPELINE = """\
model:
  name: outlier
  source:
    onnx: model.onnx
  inputs:
    - name: x
      shape: [1, 16]
  outputs: [logits]
calibration:
  set: data/calibration.npz
  method: minmax
  samples: 100
validation:
  set: data/validation.npz
  labels: label
targets:
{targets}
gates:
  accuracy_drop: {{max: 0.02}}
  top1_agreement: {{min: 0.97}}
{extra}"""

CPU_TARGET = """\
  - name: cpu
    compiler: onnxruntime
    firmware_revision: "1.32.0"
"""

NPU_TARGET = """\
  - name: npu-int8
    compiler: int8-ref
    firmware_revision: "2.0.0"
"""

# An integer-only target that declares no int16 (the TFLite int8 converter): no fallback.
ETHOS_TARGET = """\
  - name: ethos-u55
    compiler: ethos-u
    firmware_revision: "25.08"
    options:
      accelerator_config: ethos-u55-128
"""


def write_project(folder: Path, targets: str = CPU_TARGET, extra: str = "") -> Path:
    """An outlier-model project (model, sets, pipeline.yaml); returns the pipeline file."""
    model = build_outlier_model(folder / "model.onnx")
    write_sets(model, folder / "data")
    pipeline = folder / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(targets=targets.rstrip("\n"), extra=extra))
    return pipeline
