"""int8-ref runtime speed against ONNX Runtime int8 and OpenVINO int8, one thread.

    .venv/bin/python benchmarks/int8_runtime.py [--models a,b] [--budget S] [--repeat R]
                                                [--write-readme [--readme PATH]] [--smoke]

Networks (each quantized by ONNX Runtime's quantize_static: QDQ, per-channel int8 weights):

- `example`: the example-sized CNN (input [B,1,16,16]: two conv+ReLU+max-pool stages, two
  fully connected layers; ~100k MACs, where fixed per-call costs dominate),
- `cnn-8m`: a realistic small CNN (input [B,1,28,28]: three 3x3 convolutions with 32, 64 and
  128 channels, each with ReLU and 2x2 max-pooling, then fully connected 1152 -> 256 -> 10;
  7.75 M MACs), int8 activations,
- `resnet18`, `mobilenet_v2`: torchvision's, from the real-model suite (tests/real_models:
  exported by tapeout's front end, uint8 activations), when that suite is present,

each at batch 1 (latency of single calls) and batch 64 (images per second), on ONNX Runtime
int8, OpenVINO int8 (when its extra is installed) and int8-ref in both requantization modes,
every engine on one thread, measured in the same run: the engines take turns, `--repeat`
times, a turn being the median of its calls over `--budget` seconds, and each figure is the
fastest of an engine's turns (other load on a shared machine only ever makes a turn slower,
as timeit takes the best repeat). Ratios are to ONNX Runtime int8 (above 1: slower).

A call is timed by the CPU time of this process (`--clock cpu`, the default: every engine
runs on one thread, so on an idle machine it is the wall time, and on a shared one it leaves
out the time other processes hold the core, which wall time counts at random; caches shared
with them still slow it) or by wall time (`--clock wall`).

Then the GEMM rate: a 1024 x 1024 x 1024 QLinearMatMul (uint8 activations, int8 constant
weights) on ONNX Runtime and the same model compiled by int8-ref, in GOPS (2 * M * K * N per
second).

The table records which instruction set int8-ref ran and the load average. The bar: int8-ref
within 1.5x of ONNX Runtime int8 at batch 1 and 64 on cnn-8m, resnet18 and mobilenet_v2.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from readme_section import replace_section
from tapeout.compilers.int8_ref import FIRMWARE_REVISION, Int8ReferenceCompiler
from tapeout.compilers.interface import QuantizedModel, TargetProfile

README = Path(__file__).with_name("README.md")
SECTION = "## int8 runtime"
REPOSITORY = Path(__file__).resolve().parents[1]
BATCHES = (1, 64)
BAR = 1.5
BAR_MODELS = ("cnn-8m", "resnet18", "mobilenet_v2")


@dataclass(frozen=True)
class Network:
    """A quantized network at one batch size: the files and a feed."""

    name: str
    batch: int
    fp32: Path
    qdq: Path
    feed: dict[str, np.ndarray]


# -- the synthetic CNNs -----------------------------------------------------------------------
def build_cnn(batch: int, size: int, channels: tuple[int, ...], hidden: int,
              seed: int = 0) -> onnx.ModelProto:
    """[B,1,size,size] -> conv3x3(pad 1)+ReLU+MaxPool2 per entry of `channels` -> Flatten ->
    Linear(hidden)+ReLU -> Linear(10), random weights scaled to keep activations in range."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def node(kind, inputs, name, **attrs):
        nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    x, cin, side = "image", 1, size
    for i, cout in enumerate(channels, 1):
        w = const(f"conv{i}_w", rng.normal(0, 1 / np.sqrt(cin * 9), (cout, cin, 3, 3)))
        b = const(f"conv{i}_b", rng.normal(0, 0.1, cout))
        x = node("Conv", [x, w, b], f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = node("Relu", [x], f"relu{i}")
        x = node("MaxPool", [x], f"pool{i}", kernel_shape=[2, 2], strides=[2, 2])
        cin, side = cout, side // 2
    x = node("Flatten", [x], "flatten", axis=1)
    for i, (fin, fout) in enumerate(((cin * side * side, hidden), (hidden, 10)), 1):
        w = const(f"fc{i}_w", rng.normal(0, 1 / np.sqrt(fin), (fout, fin)))
        b = const(f"fc{i}_b", rng.normal(0, 0.1, fout))
        x = node("Gemm", [x, w, b], "logits" if i == 2 else f"fc{i}", transB=1)
        if i == 1:
            x = node("Relu", [x], "relu_fc1")
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def quantize(model: onnx.ModelProto, workdir: Path, name: str, activations: str) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    fp32, qdq = workdir / f"{name}.onnx", workdir / f"{name}.qdq.onnx"
    onnx.save(model, fp32)
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)
    batches = iter([{inp.name: rng.normal(0, 1, shape).astype(np.float32)} for _ in range(8)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    quantize_static(str(fp32), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8 if activations == "int8"
                    else QuantType.QUInt8)
    return qdq


def synthetic(name: str, workdir: Path, smoke: bool) -> Callable[[int], Network]:
    size, channels, hidden = {"example": (16, (8, 16), 32),
                              "cnn-8m": (28, (32, 64, 128), 256)}[name]
    if smoke:
        size, channels, hidden = 8, (4,), 8

    def at(batch: int) -> Network:
        model = build_cnn(batch, size, channels, hidden)
        qdq = quantize(model, workdir, f"{name}-{batch}", "int8")
        feed = {"image": np.random.default_rng(2).normal(0, 1, (batch, 1, size, size))
                .astype(np.float32)}
        return Network(name, batch, workdir / f"{name}-{batch}.onnx", qdq, feed)

    return at


# -- real-model suite networks ------------------------------------------------------------------
def suite(name: str, workdir: Path) -> Callable[[int], Network] | None:
    """A real-model suite network (tests/real_models), or None when the suite is absent."""
    tests = REPOSITORY / "tests"
    if not (tests / "real_models" / "__init__.py").exists():
        return None
    sys.path.insert(0, str(tests))
    import real_models

    built = real_models.build(name, "uint8")
    sample = built.test_inputs[:1]

    def at(batch: int) -> Network:
        fp32 = real_models.with_batch(built.float_path, batch, workdir / f"{name}-{batch}.onnx")
        q = real_models.with_batch(built.qdq_path, batch, workdir / f"{name}-{batch}.qdq.onnx")
        feed = {real_models.INPUT: np.repeat(sample, batch, axis=0)}
        return Network(name, batch, fp32, q, feed)

    return at


# -- engines --------------------------------------------------------------------------------------
def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_runner(path: Path):
    sess = ort_session(path)
    return lambda feed: sess.run(None, feed)


def quantized_model(path: Path, fp32: Path) -> QuantizedModel:
    """The model as the compilers take it, its interface read from the graph."""
    from tapeout.compilers.frontends import check_model

    described = check_model(path)
    return QuantizedModel(path, described.digest, fp32, described.inputs, described.outputs)


def int8ref_runner(net: Network, mode: str, workdir: Path, options: dict[str, str]):
    compiler = Int8ReferenceCompiler()
    target = TargetProfile("bench", "int8-ref", FIRMWARE_REVISION, {"requant": mode, **options})
    art = compiler.compile(quantized_model(net.qdq, net.fp32), target,
                           workdir / f"{net.name}-{mode}-{net.batch}")
    return compiler.load(art).run


def openvino_runner(net: Network, workdir: Path):
    """The `openvino` plugin's int8 CPU blob, or None when the openvino extra is missing."""
    from tapeout.compilers.errors import PluginError
    from tapeout.compilers.registry import load_compiler

    try:
        compiler = load_compiler("openvino")
        target = TargetProfile("bench", "openvino", compiler.version, {"threads": "1"})
        art = compiler.compile(quantized_model(net.qdq, net.fp32), target,
                               workdir / f"openvino-{net.name}-{net.batch}")
    except (PluginError, ImportError) as error:
        print(f"openvino skipped: {error}")
        return None
    return compiler.load(art).run


def engines(net: Network, workdir: Path, int8ref_options: dict[str, str],
            refusals: dict[str, str]) -> dict[str, Callable]:
    """The engines that build `net`; an int8-ref mode that refuses it goes to `refusals`
    with the first node and op it names."""
    from tapeout.compilers.int8_ref import IncompatibleModel

    found = {"onnxruntime int8": ort_runner(net.qdq)}
    ov = openvino_runner(net, workdir)
    if ov is not None:
        found["openvino int8"] = ov
    for mode in ("fixed-point", "ort"):
        try:
            found[f"int8-ref ({mode})"] = int8ref_runner(net, mode, workdir, int8ref_options)
        except IncompatibleModel as refused:
            first = refused.problems[0]
            refusals[f"int8-ref ({mode})"] = f"{first.op_type} ({first.node})"
    return found


# -- timing ---------------------------------------------------------------------------------------
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def turn(fn, feed, budget: float, clock: Callable[[], float]) -> float:
    """Median seconds per call by `clock` over `budget` wall seconds (at least 3 calls),
    after one warm call."""
    fn(feed)
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < budget:
        t0 = clock()
        fn(feed)
        times.append(clock() - t0)
    return statistics.median(times)


def measure_network(build: Callable[[int], Network], workdir: Path, budget: float, repeat: int,
                    clock: Callable[[], float], options: dict[str, str],
                    refusals: dict[str, str]) -> dict[str, dict[int, float]]:
    """Seconds per call by engine and batch: the fastest of `repeat` interleaved turns."""
    seconds: dict[str, dict[int, float]] = {}
    for batch in BATCHES:
        net = build(batch)
        runners = engines(net, workdir, options, refusals)
        turns: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(repeat):
            for name, fn in runners.items():
                turns[name].append(turn(fn, net.feed, budget, clock))
        for name, ts in turns.items():
            seconds.setdefault(name, {})[batch] = min(ts)
    return seconds


def gemm_model(size: int, workdir: Path) -> Path:
    """A [size, size] x [size, size] QLinearMatMul: uint8 input, int8 constant weights."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (size, size)).astype(np.int8)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "a_zp"),
             numpy_helper.from_array(w, "b"),
             numpy_helper.from_array(np.array(0.01, np.float32), "b_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "b_zp"),
             numpy_helper.from_array(np.array(float(size) * 0.02, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "y_zp")]
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp",
                                              "y_scale", "y_zp"], ["y"], name="gemm")
    graph = helper.make_graph([node], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [size, size])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = workdir / f"gemm{size}.onnx"
    onnx.save(model, str(path))
    return path


def measure_gemm(size: int, workdir: Path, budget: float, repeat: int,
                 clock: Callable[[], float], options: dict[str, str]) -> dict[str, float]:
    """GOPS (2 size^3 per second) of ONNX Runtime and int8-ref on the same QLinearMatMul."""
    path = gemm_model(size, workdir)
    feed = {"a": np.random.default_rng(4).integers(0, 256, (size, size)).astype(np.uint8)}
    compiler = Int8ReferenceCompiler()
    art = compiler.compile(quantized_model(path, path), TargetProfile("bench", "int8-ref", FIRMWARE_REVISION, {"requant": "ort", **options}),
                           workdir / f"gemm-{size}")
    runners = {"onnxruntime int8": ort_runner(path), "int8-ref": compiler.load(art).run}
    turns: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            turns[name].append(turn(fn, feed, budget, clock))
    return {name: 2 * size ** 3 / min(ts) / 1e9 for name, ts in turns.items()}


# -- report ----------------------------------------------------------------------------------------
def instruction_set() -> str:
    try:
        from tapeout.compilers.int8_ref import _qgemm
    except ImportError:
        return "scalar loops"
    return _qgemm.default_isa()


Results = dict[str, dict[str, dict[int, float]]]  # network -> engine -> batch -> seconds


def network_table(results: Results, refusals: dict[str, dict[str, str]]) -> str:
    lines = ["| network | engine | latency b=1 (µs) | vs ORT int8 | throughput b=64 (img/s) | "
             "vs ORT int8 |", "|---|---|---:|---:|---:|---:|"]
    for model, by_engine in results.items():
        ref = by_engine["onnxruntime int8"]
        for name, s in by_engine.items():
            lines.append(f"| {model} | {name} | {s[1] * 1e6:,.0f} | {s[1] / ref[1]:.2f}× | "
                         f"{64 / s[64]:,.0f} | {s[64] / ref[64]:.2f}× |")
        for name, op in refusals.get(model, {}).items():
            lines.append(f"| {model} | {name} | refused: {op} | | | |")
    return "\n".join(lines)


def bar_lines(results: Results) -> tuple[list[str], bool]:
    """The bar per network (int8-ref refusing it: not met)."""
    lines, met = [], True
    for model in BAR_MODELS:
        row = model if "int8-ref (ort)" in results.get(model, {}) else None
        if row is None:
            lines.append(f"- {model}: not measured")
            met = False
            continue
        ref = results[row]["onnxruntime int8"]
        for mode in ("fixed-point", "ort"):
            s = results[row][f"int8-ref ({mode})"]
            r1, r64 = s[1] / ref[1], s[64] / ref[64]
            ok = r1 <= BAR and r64 <= BAR
            met &= ok
            lines.append(f"- {row}, int8-ref ({mode}): {r1:.2f}× at batch 1, {r64:.2f}× at "
                         f"batch 64 ({'met' if ok else 'not met'})")
    return lines, met


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="example,cnn-8m,resnet18,mobilenet_v2")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per engine per turn")
    ap.add_argument("--repeat", type=int, default=3, help="turns per engine")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="what a call's time is: this process's CPU time or wall time")
    ap.add_argument("--gemm", type=int, default=1024, help="GEMM size (0: skip)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes and budgets: checks that everything runs, measures nothing")
    ap.add_argument("--write-readme", action="store_true",
                    help=f"replace the '{SECTION}' section of --readme")
    ap.add_argument("--readme", type=Path, default=README, help="the README to write")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.budget, args.repeat, args.gemm = "cnn-8m", 0.0, 1, 32
    load_before = os.getloadavg()[0]
    results: Results = {}
    refusals: dict[str, dict[str, str]] = {}
    skipped = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            synthetic_net = name in ("example", "cnn-8m")
            build = synthetic(name, work, args.smoke) if synthetic_net else suite(name, work)
            if build is None:
                skipped.append(f"{name} (the real-model suite, tests/real_models, is not here)")
                continue
            t0 = time.perf_counter()
            refused = refusals.setdefault(name, {})
            results[name] = measure_network(build, work, args.budget, args.repeat,
                                            CLOCKS[args.clock], {}, refused)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        gops = (measure_gemm(args.gemm, work, args.budget, args.repeat, CLOCKS[args.clock], {})
                if args.gemm else {})
    load_after = os.getloadavg()[0]
    bars, met = bar_lines(results)
    env = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
           f"onnxruntime {ort.__version__}; every engine on 1 thread; int8-ref ran its "
           f"**{instruction_set()}** path; load average {load_before:.1f} before and "
           f"{load_after:.1f} after (the machine is shared)")
    gemm_line = (f"GEMM {args.gemm}³ (QLinearMatMul, uint8 × int8): " + ", ".join(
        f"{name} {g:,.1f} GOPS" for name, g in gops.items())
        + f" (int8-ref / ONNX Runtime: {gops['int8-ref'] / gops['onnxruntime int8']:.2f}×).\n"
        if gops else "")
    waiting = [f"- {model}: int8-ref waits for {op}" for model, by in refusals.items()
               for op in sorted({op.split(" ")[0] for op in by.values()})]
    text = "\n".join([
        SECTION, "",
        "`benchmarks/int8_runtime.py` (its docstring describes the networks and the method): "
        f"the fastest of {args.repeat} interleaved turns of {args.budget:g} s per engine, "
        f"a call timed by {'the process CPU time' if args.clock == 'cpu' else 'wall time'}.",
        "",
        network_table(results, refusals), "",
        *(waiting + [""] if waiting else []),
        gemm_line + f"Bar (within {BAR}× of ONNX Runtime int8 at batch 1 and 64):", *bars,
        *(f"- not measured: {s}" for s in skipped), "",
        f"Machine: {env}.", "",
        "Where int8-ref's time goes, op by op, and the earlier runs: docs/int8-ref.md "
        "(\"Tests\", the speed paragraphs).", ""])
    print(text)
    if args.write_readme:
        replace_section(args.readme, SECTION, text)
    return 0 if met or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
