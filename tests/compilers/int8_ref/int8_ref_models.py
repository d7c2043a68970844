"""Test models for int8-ref: small float graphs built with onnx.helper, quantized to QDQ.

Each builder returns an fp32 ONNX ModelProto with random weights; `quantize_qdq` runs
onnxruntime.quantization.quantize_static on it (QDQ, per-channel, QInt8 weights) with random
calibration data, as the project's quantizer does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, arr: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        name = self.name(op_type.lower())
        outs = [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, pad: int = 1, stride: int = 1,
             group: int = 1, dilation: int = 1, bias: bool = True) -> str:
        w = self.rng.normal(0, 1.0 / np.sqrt(cin // group * k * k), (cout, cin // group, k, k))
        ins = [x, self.const(w.astype(np.float32), "w")]
        if bias:
            ins.append(self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "b"))
        return self.op("Conv", ins, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2,
                       group=group, dilations=[dilation] * 2)

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = self.rng.normal(0, 1.0 / np.sqrt(cin), (cout, cin)).astype(np.float32)
        b = self.rng.normal(0, 0.1, cout).astype(np.float32)
        return self.op("Gemm", [x, self.const(w, "w"), self.const(b, "b")], transB=1)

    def model(self, x_shape, out: str | list[str], in_name: str = "input",
              opset: int = 17, extra_inputs: dict | None = None) -> onnx.ModelProto:
        outs = [out] if isinstance(out, str) else out
        ins = {in_name: x_shape, **(extra_inputs or {})}
        graph = helper.make_graph(
            self.nodes, "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in ins.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
            self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        m = onnx.shape_inference.infer_shapes(m)
        onnx.checker.check_model(m)
        return m


def cnn(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """The benchmark CNN: [B,1,16,16] -> conv/relu/pool x2 -> flatten -> fc/relu -> fc."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("input", 1, 8)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Relu", [b.conv(x, 8, 16)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [x], axis=1)
    x = b.op("Relu", [b.gemm(x, 256, 32)])
    x = b.gemm(x, 32, 10)
    return b.model((batch, 1, 16, 16), x)


def random_inputs(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    """One random float32 array per graph input (normal, unit variance)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    return {i.name: rng.normal(0, 1, [d.dim_value for d in i.type.tensor_type.shape.dim])
            .astype(np.float32) for i in model.graph.input if i.name not in inits}


def calibration_reader(model: onnx.ModelProto, n: int = 16, seed: int = 1):
    from onnxruntime.quantization import CalibrationDataReader

    data = [random_inputs(model, seed * 1000 + i) for i in range(n)]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    return _Reader()


def quantize_qdq(model: onnx.ModelProto, workdir: Path, name: str = "model",
                 activation: str = "int8", per_channel: bool = True, fmt: str = "qdq",
                 **extra) -> Path:
    """Quantize `model` with ORT's quantize_static (QDQ, or QOperator with fmt="qoperator");
    returns the quantized model's path."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = workdir / f"{name}.fp32.onnx"
    qdq = workdir / f"{name}.{fmt}.onnx"
    onnx.save(model, fp32)
    quantize_static(
        str(fp32), str(qdq), calibration_reader(model),
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
        extra_options=extra or None,
    )
    return qdq


def resnet(seed: int = 0) -> onnx.ModelProto:
    """ResNet-style: stem, two basic blocks with residual Add (one with a 1x1 projection), GAP."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("input", 3, 8, stride=1)])
    y = b.op("Relu", [b.conv(x, 8, 8)])
    y = b.conv(y, 8, 8)
    x = b.op("Relu", [b.op("Add", [x, y])])
    y = b.op("Relu", [b.conv(x, 8, 16, stride=2)])
    y = b.conv(y, 16, 16)
    sc = b.conv(x, 8, 16, k=1, pad=0, stride=2)
    x = b.op("Relu", [b.op("Add", [sc, y])])
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x])
    return b.model((1, 3, 16, 16), b.gemm(x, 16, 10))


def squeezenet(seed: int = 0) -> onnx.ModelProto:
    """SqueezeNet-style fire modules: squeeze 1x1, expand 1x1 and 3x3, Concat on channels."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("input", 3, 16, k=3, pad=1, stride=2)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    for cin, s, e in ((16, 4, 8), (16, 4, 8)):
        sq = b.op("Relu", [b.conv(x, cin, s, k=1, pad=0)])
        e1 = b.op("Relu", [b.conv(sq, s, e, k=1, pad=0)])
        e3 = b.op("Relu", [b.conv(sq, s, e, k=3, pad=1)])
        x = b.op("Concat", [e1, e3], axis=1)
    x = b.op("Relu", [b.conv(x, 16, 10, k=1, pad=0)])
    x = b.op("GlobalAveragePool", [x])
    return b.model((1, 3, 32, 32), b.op("Flatten", [x]))


def shufflenet(seed: int = 0) -> onnx.ModelProto:
    """ShuffleNet-style unit: grouped 1x1, channel shuffle (Reshape/Transpose/Reshape),
    depthwise 3x3, grouped 1x1, residual Add."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("input", 3, 16, k=3, pad=1)])
    y = b.op("Relu", [b.conv(x, 16, 16, k=1, pad=0, group=4)])
    y = b.op("Reshape", [y, b.const(np.array([1, 4, 4, 12, 12], np.int64), "shape")])
    y = b.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = b.op("Reshape", [y, b.const(np.array([1, 16, 12, 12], np.int64), "shape")])
    y = b.conv(y, 16, 16, k=3, pad=1, group=16)
    y = b.conv(y, 16, 16, k=1, pad=0, group=4)
    x = b.op("Relu", [b.op("Add", [x, y])])
    x = b.op("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.op("GlobalAveragePool", [x])
    return b.model((1, 3, 12, 12), b.op("Flatten", [x]))


def inception(seed: int = 0) -> onnx.ModelProto:
    """Inception-style block: 1x1, 1x1->3x3, 1x1->5x5 (dilated 3x3), pool->1x1 branches,
    Concat; then a strided max-pool and a classifier."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("input", 3, 12, k=3, pad=1)])
    b1 = b.op("Relu", [b.conv(x, 12, 6, k=1, pad=0)])
    b2 = b.op("Relu", [b.conv(b.op("Relu", [b.conv(x, 12, 4, k=1, pad=0)]), 4, 6)])
    b3 = b.op("Relu", [b.conv(b.op("Relu", [b.conv(x, 12, 4, k=1, pad=0)]), 4, 6, k=3, pad=2,
                              dilation=2)])
    p = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    b4 = b.op("Relu", [b.conv(p, 12, 6, k=1, pad=0)])
    x = b.op("Concat", [b1, b2, b3, b4], axis=1)
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [x])
    return b.model((1, 3, 16, 16), b.gemm(x, 24 * 4 * 4, 10))


def attention(seed: int = 0) -> onnx.ModelProto:
    """Batched MatMul of two activations, Mul, Softmax, Sigmoid gate, Unsqueeze/Squeeze."""
    b = _Builder(seed)
    rng = b.rng
    wq = b.const(rng.normal(0, 0.3, (8, 8)).astype(np.float32), "wq")
    wk = b.const(rng.normal(0, 0.3, (8, 8)).astype(np.float32), "wk")
    q = b.op("MatMul", ["input", wq])
    k = b.op("MatMul", ["input", wk])
    kt = b.op("Transpose", [k], perm=[0, 2, 1])
    s = b.op("MatMul", [q, kt])
    s = b.op("Mul", [s, b.const(np.array(0.35, np.float32), "scale")])
    a = b.op("Softmax", [s], axis=-1)
    o = b.op("MatMul", [a, "input"])
    g = b.op("Sigmoid", [o])
    o = b.op("Mul", [o, g])
    o = b.op("Unsqueeze", [o, b.const(np.array([1], np.int64), "axes")])
    o = b.op("Squeeze", [o, b.const(np.array([1], np.int64), "axes")])
    return b.model((2, 6, 8), o)


def upsample(seed: int = 0) -> onnx.ModelProto:
    """Pad, conv, nearest Resize x2, Clip(0, 6), conv."""
    b = _Builder(seed)
    x = b.op("Pad", ["input", b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")],
             mode="constant")
    x = b.conv(x, 2, 6, k=3, pad=0)
    x = b.op("Resize", [x, "", b.const(np.array([1, 1, 2, 2], np.float32), "scales")],
             mode="nearest")
    x = b.op("Clip", [x, b.const(np.array(0, np.float32), "lo"),
                      b.const(np.array(6, np.float32), "hi")])
    return b.model((1, 2, 6, 6), b.conv(x, 6, 4, k=3, pad=1))


def single_op(op_type: str, shapes: list[tuple[int, ...]], consts: tuple = (), seed: int = 0,
              **attrs) -> onnx.ModelProto:
    """input(s) -> op_type -> output; `consts` are extra constant inputs (numpy arrays or "")."""
    b = _Builder(seed)
    names = ["input"] + [f"input{i}" for i in range(1, len(shapes))]
    ins = list(names) + [b.const(c) if isinstance(c, np.ndarray) else c for c in consts]
    y = b.op(op_type, ins, **attrs)
    return b.model(shapes[0], y, extra_inputs=dict(zip(names[1:], shapes[1:])))


def conv_only(cin=4, cout=6, k=3, pad=1, stride=1, group=1, dilation=1, hw=9, seed=0,
              relu=False) -> onnx.ModelProto:
    b = _Builder(seed)
    y = b.conv("input", cin, cout, k=k, pad=pad, stride=stride, group=group, dilation=dilation)
    if relu:
        y = b.op("Relu", [y])
    return b.model((1, cin, hw, hw), y)


def gemm_only(k=24, n=10, m=2, seed=0) -> onnx.ModelProto:
    b = _Builder(seed)
    return b.model((m, k), b.gemm("input", k, n))


def matmul_const(k=12, n=5, seed=0) -> onnx.ModelProto:
    b = _Builder(seed)
    w = b.const(b.rng.normal(0, 0.3, (k, n)).astype(np.float32), "w")
    return b.model((2, 3, k), b.op("MatMul", ["input", w]))


def after_conv(op_type: str, shape: tuple[int, ...], consts: tuple = (), seed: int = 0,
               **attrs) -> onnx.ModelProto:
    """input -> 1x1 Conv -> op_type: for ops the quantizer only quantizes after a
    quantized producer (MaxPool, Reshape, Transpose, Resize...)."""
    b = _Builder(seed)
    x = b.conv("input", shape[1], shape[1], k=1, pad=0)
    ins = [x] + [b.const(c) if isinstance(c, np.ndarray) else c for c in consts]
    return b.model(shape, b.op(op_type, ins, **attrs))


# -- harness -------------------------------------------------------------------------------
def input_specs(model: onnx.ModelProto):
    from tapeout.compilers.interface import TensorSpec

    inits = {i.name for i in model.graph.initializer}
    return tuple(TensorSpec(i.name, tuple(d.dim_value for d in i.type.tensor_type.shape.dim),
                            "float32") for i in model.graph.input if i.name not in inits)


def compile_path(qdq: Path, specs, workdir: Path, mode: str = "fixed-point",
                 budget: int | None = None, firmware: str | None = None):
    """Compile `qdq` with int8-ref for a target on `firmware` (default: the simulated
    firmware's revision); returns (compiler, artifact)."""
    import hashlib

    from tapeout.compilers.int8_ref import FIRMWARE_REVISION, Int8ReferenceCompiler
    from tapeout.compilers.interface import QuantizedModel, TargetProfile

    firmware = firmware or FIRMWARE_REVISION
    qm = QuantizedModel(qdq, hashlib.sha256(qdq.read_bytes()).hexdigest(), qdq, tuple(specs), ())
    target = TargetProfile("test-npu", "int8-ref", firmware, {"requant": mode}, budget)
    c = Int8ReferenceCompiler()
    return c, c.compile(qm, target, workdir)


def ort_session(path: Path, level: str = "default"):
    """An ORT CPU session at its default optimisation level, "basic", or "none" (the graph
    run node by node as written)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def lsb_diffs(model: onnx.ModelProto, qdq: Path, artifact, runner, n: int = 6,
              seed: int = 100, level: str = "default") -> tuple[int, int, int]:
    """Run int8-ref and ORT (at optimisation `level`) on `n` random inputs; (max |diff| in
    output LSBs, differing elements, total elements)."""
    sess = ort_session(qdq, level)
    names = [o.name for o in sess.get_outputs()]
    scales = artifact.report["output_scales"]
    worst = ndiff = total = 0
    for i in range(n):
        xs = random_inputs(model, seed + i)
        ref = dict(zip(names, sess.run(None, xs)))
        got = runner.run(xs)
        for name in names:
            d = np.rint(np.abs(ref[name].astype(np.float64) - got[name]) / scales[name])
            worst = max(worst, int(d.max()))
            ndiff += int((d > 0).sum())
            total += d.size
    return worst, ndiff, total


def residual(seed: int = 0) -> onnx.ModelProto:
    """A residual Add whose DequantizeLinear input is shared with a Conv: ONNX Runtime keeps
    the Add (and the convs feeding it) in float; `ort` mode emulates the float Add."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("input", 3, 16, k=3, pad=1)])
    y = b.op("Relu", [b.conv(x, 16, 16, k=1, pad=0, group=4)])
    y = b.conv(y, 16, 16, k=3, pad=1, group=16)
    x = b.op("Add", [x, y])
    return b.model((1, 3, 12, 12), b.op("Flatten", [x]))



def mobilenet(seed: int = 0, hw: int = 64, width: int = 16) -> onnx.ModelProto:
    """MobileNet-style: strided stem, depthwise-separable blocks (depthwise 3x3 + pointwise
    1x1, Clip(0, 6)), residual Adds where shapes allow, global pool, classifier."""
    b = _Builder(seed)

    def relu6(x):
        return b.op("Clip", [x, b.const(np.array(0, np.float32), "lo"),
                             b.const(np.array(6, np.float32), "hi")])

    x = relu6(b.conv("input", 3, width, k=3, pad=1, stride=2))
    c = width
    for cout, stride in ((width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2),
                         (4 * width, 1)):
        y = relu6(b.conv(x, c, c, k=3, pad=1, stride=stride, group=c))
        y = b.conv(y, c, cout, k=1, pad=0)
        x = b.op("Add", [x, y]) if (cout, stride) == (c, 1) else y
        c = cout
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x])
    return b.model((1, 3, hw, hw), b.gemm(x, c, 10))


def run_loader_fuzz(script: str, image: Path, args, workdir: Path, timeout: int = 600) -> dict:
    """Run a loader fuzz script (test_int8_ref_artifact.FUZZ, test_int8_ref_int16.STRUCT_FUZZ)
    on `image` in a subprocess, so that a crash shows as a failed run instead of taking the
    test session down; returns the counts it prints."""
    import subprocess
    import sys

    path = workdir / "fuzz.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path), str(image), *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 - the script's own output
