"""Fuzz targets: each takes raw bytes (or a few structured values) and checks that tapeout
either accepts the input or refuses it with its own error — never an unexpected exception,
never a crash, never "verified" for something that is not what was signed.

The same targets are driven three ways:
- by Hypothesis from `tests/hardening/test_hardening_fuzz.py` (a short bounded run in CI;
  `TAPEOUT_FUZZ_EXAMPLES=N` for a longer one);
- by atheris (libFuzzer, coverage-guided) from `fuzz/run_atheris.py` for long runs;
- by hand, to replay a crash: `python fuzz/run_atheris.py TARGET crash-file`.

A finding is an exception that is not a `TapeoutError` (or, for the verifier, a tampered
bundle that verifies; for the int8-ref image loader, also a crash or an image that does not
finish within its time limit). docs/security.md lists what the fuzzers cover.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tapeout.compilers.errors import TapeoutError


class Finding(AssertionError):
    """What a fuzz target reports: an input tapeout mishandled."""


# -- the pipeline config loader ----------------------------------------------------------------


def pipeline_config(data: bytes, workdir: Path) -> None:
    """`load_pipeline` on arbitrary bytes: a Pipeline or a ConfigError naming the file."""
    from tapeout.flows.config import ConfigError, load_pipeline

    path = workdir / "pipeline.yaml"
    path.write_bytes(data)
    try:
        pipeline = load_pipeline(path)
    except ConfigError as error:
        if str(path) not in str(error):
            raise Finding(f"the error does not name the file: {error}") from error
        return
    except TapeoutError as error:
        raise Finding(f"expected a ConfigError, found {type(error).__name__}: {error}") from error
    # Whatever validated must be usable: every later stage calls these.
    pipeline.resolved()
    for target in pipeline.config.targets:
        pipeline.digest(target)
        pipeline.target_profile(target)
        pipeline.gates_for(target)


# -- the compiled-artifact record loader -----------------------------------------------------------


def artifact_record(data: bytes, workdir: Path) -> None:
    """`read_record` (compiled/compiler.json, what `tapeout infer|bench` and the gates load)
    on arbitrary bytes: a CompiledArtifact whose files are inside the folder, or InvalidInput."""
    from tapeout.artifacts.compiled import RECORD_FILE, read_record
    from tapeout.compilers.errors import InvalidInput

    folder = workdir / "compiled"
    folder.mkdir(exist_ok=True)
    (folder / "model.ort.onnx").write_bytes(b"\x08\x07")
    (folder / RECORD_FILE).write_bytes(data)
    try:
        artifact, _ = read_record(folder)
    except InvalidInput:
        return
    for name in artifact.files:
        resolved = (folder / name).resolve()
        if not resolved.is_relative_to(folder.resolve()):
            raise Finding(f"artifact file {name!r} escapes the folder")


def artifact_record_json(document: object, workdir: Path) -> None:
    """`artifact_record` on a JSON document (reaches deeper than bytes do)."""
    artifact_record(json.dumps(document).encode(), workdir)


# -- the bundle verifier ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedBundle:
    """A small bundle signed once, and the public key that verifies it."""

    path: Path
    public_key: Path
    files: tuple[str, ...]


def signed_bundle(root: Path) -> SignedBundle:
    from tapeout.artifacts.signing import init_keys, sign_bundle

    pair, _ = init_keys(root / "keys")
    bundle = root / "bundle"
    (bundle / "model").mkdir(parents=True)
    (bundle / "compiled").mkdir()
    (bundle / "reports").mkdir()
    (bundle / "model" / "model.onnx").write_bytes(b"\x08\x07\x12\x05onnx" * 20)
    (bundle / "compiled" / "model.bin").write_bytes(bytes(range(256)))
    (bundle / "reports" / "gates.json").write_text(json.dumps({"verdict": "pass", "gates": []}))
    (bundle / "provenance.json").write_text(json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "predicate": {"buildDefinition": {"externalParameters": {"model": "digits-cnn", "target": "cpu"}}},
    }))
    sign_bundle(bundle, pair.private_key)
    files = tuple(sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()))
    return SignedBundle(bundle, pair.public_key, files)


# One mutation: (operation, which file, a number, bytes).
Mutation = tuple[str, int, int, bytes]
OPERATIONS = ("overwrite", "flip", "truncate", "append", "delete", "add", "symlink", "rename", "mkdir-over")


def bundle_verifier(original: SignedBundle, mutations: list[Mutation], workdir: Path) -> None:
    """Mutate a copy of a signed bundle and verify it the way `tapeout verify DIR` does.

    It must verify exactly when the copy still holds the signed files byte for byte (the
    signature file included), and otherwise refuse with VerificationFailed.
    """
    from tapeout.artifacts.policy import TrustPolicy
    from tapeout.artifacts.signing import VerificationFailed

    bundle = workdir / "copy"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(original.path, bundle, symlinks=True)
    outside = workdir / "outside.bin"
    outside.write_bytes(b"outside the bundle")
    for operation, which, number, data in mutations:
        _mutate(bundle, original.files, operation, which, number, data, outside)
    unchanged = _snapshot(bundle) == _snapshot(original.path)
    try:
        TrustPolicy.single_key(original.public_key).verify(bundle)
    except VerificationFailed:
        if unchanged:
            raise Finding(f"an untouched bundle failed to verify after {mutations}") from None
        return
    except TapeoutError as error:
        raise Finding(f"expected VerificationFailed, found {type(error).__name__}: {error}") from error
    if not unchanged:
        raise Finding(f"a changed bundle verified: {mutations}")


def _mutate(bundle: Path, files: tuple[str, ...], operation: str, which: int, number: int, data: bytes, outside: Path) -> None:
    present = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() or p.is_symlink())
    if not present:
        return
    path = bundle / present[which % len(present)]
    if path.is_symlink() and operation not in ("delete", "rename"):
        return
    if operation == "overwrite":
        path.write_bytes(data)
    elif operation == "flip":
        content = bytearray(path.read_bytes())
        if content:
            content[number % len(content)] ^= 1 << (number % 8)
            path.write_bytes(bytes(content))
    elif operation == "truncate":
        content = path.read_bytes()
        path.write_bytes(content[: number % (len(content) + 1)])
    elif operation == "append":
        with path.open("ab") as stream:
            stream.write(data or b"\0")
    elif operation == "delete":
        path.unlink()
    elif operation == "add":
        name = "".join(c for c in data.decode("latin-1") if c.isalnum() or c in "._-")[:40] or "extra"
        folder = bundle / ("reports", "compiled", ".", ".git")[number % 4]
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    elif operation == "symlink":
        target = outside if number % 2 else bundle / files[number % len(files)]
        path.unlink()
        path.symlink_to(target)
    elif operation == "rename":
        destination = bundle / present[number % len(present)]
        if destination != path:
            os.replace(path, destination)
    elif operation == "mkdir-over":
        path.unlink()
        path.mkdir()
        (path / "inner").write_bytes(data)


def _snapshot(root: Path) -> dict[str, object]:
    state: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[relative] = ("symlink", os.readlink(path))
        elif path.is_file():
            state[relative] = path.read_bytes()
    return state


# -- the int8-ref image loader -------------------------------------------------------------------
#
# The int8-ref runtime runs a loaded image without the GIL and does not see SIGINT, so an
# image whose loops never end hangs the process for good. Images are therefore loaded and run
# in a worker process that is killed when one takes longer than its time limit: a timeout is
# a finding like a crash or an unexpected exception.

HEADER_SIZE = 128  # tapeout.compilers.int8_ref.artifact_format.HEADER.size


def int8_seed_model():
    """A small float network whose int8-ref program uses most kernel kinds: Conv, MaxPool,
    AveragePool, Add, Sigmoid (a table), Mul, Mul by a constant, a standalone Relu, Concat,
    Pad, Resize, Transpose, Reshape, MatMul of two activations, Softmax, GlobalAveragePool,
    Gemm."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, name, **attributes):
        return helper.make_node(op, inputs, [name], name=name, **attributes)

    nodes = [
        node("Conv", ["x", const("w", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
                      const("b", rng.normal(0, 0.1, 8).astype(np.float32))], "conv",
             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Relu", ["conv"], "relu"),
        node("MaxPool", ["relu"], "maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        node("AveragePool", ["relu"], "avgpool", kernel_shape=[2, 2], strides=[2, 2]),
        node("Add", ["maxpool", "avgpool"], "add"),
        node("Sigmoid", ["add"], "sigmoid"),
        node("Mul", ["add", "sigmoid"], "swish"),
        node("Mul", ["swish", const("k", np.full((1, 8, 1, 1), 0.5, np.float32))], "scaled"),
        node("Relu", ["add"], "add_relu"),
        node("Concat", ["scaled", "add_relu"], "concat", axis=1),
        node("Pad", ["concat", const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))],
             "pad"),
        node("Resize", ["pad", "", const("scales", np.array([1, 1, 0.5, 0.5], np.float32))],
             "resize", mode="nearest"),
        node("Transpose", ["resize"], "nhwc", perm=[0, 2, 3, 1]),
        node("Reshape", ["nhwc", const("rows", np.array([1, 9, 16], np.int64))], "tokens"),
        node("Transpose", ["tokens"], "tokens_t", perm=[0, 2, 1]),
        node("MatMul", ["tokens", "tokens_t"], "attention"),
        node("Softmax", ["attention"], "weights", axis=-1),
        node("GlobalAveragePool", ["concat"], "gap"),
        node("Flatten", ["gap"], "flat"),
        node("Gemm", ["flat", const("fc", rng.normal(0, 0.3, (10, 16)).astype(np.float32)),
                      const("fcb", rng.normal(0, 0.1, 10).astype(np.float32))], "logits",
             transB=1),
    ]
    graph = helper.make_graph(
        nodes, "fuzz-seed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("weights", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def int8_seed_image(workdir: Path, requant: str = "fixed-point") -> bytes:
    """`int8_seed_model` quantized by ONNX Runtime (QDQ, per-channel int8 weights, uint8
    activations, calibrated on seeded random inputs) and compiled by int8-ref."""
    import hashlib

    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from tapeout.compilers.int8_ref import ARTIFACT_FILE, FIRMWARE_REVISION, Int8ReferenceCompiler
    from tapeout.compilers.interface import QuantizedModel, TargetProfile, TensorSpec

    workdir.mkdir(parents=True, exist_ok=True)
    fp32, qdq = workdir / "seed.onnx", workdir / "seed.qdq.onnx"
    onnx.save(int8_seed_model(), fp32)
    rng = np.random.default_rng(1)
    feeds = iter([{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(8)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    quantize_static(str(fp32), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    model = QuantizedModel(qdq, hashlib.sha256(qdq.read_bytes()).hexdigest(), qdq,
                           (TensorSpec("x", (1, 3, 8, 8), "float32"),), ())
    artifact = Int8ReferenceCompiler().compile(
        model, TargetProfile("fuzz", "int8-ref", FIRMWARE_REVISION, {"requant": requant}),
        workdir / "out")
    return (artifact.directory / ARTIFACT_FILE).read_bytes()


@dataclass(frozen=True)
class ImageField:
    """One integer of an int8-ref image a structure-aware mutation sets: an op parameter or
    a tensor's dtype code. `offset` is from the start of the file."""

    where: str  # "op 3 MAXPOOL kh" or "tensor 2 dtype"
    offset: int
    fmt: str  # struct format of the field


def image_fields(image: bytes) -> list[ImageField]:
    """Every tensor dtype code and every op integer parameter of `image`, located by the
    documented layout (docs/int8-ref.md, "The firmware image")."""
    from tapeout.compilers.int8_ref.opset import PARAMS, Kind

    pos = HEADER_SIZE
    fields: list[ImageField] = []

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from(fmt, image, pos)
        pos += struct.calcsize(fmt)
        return values

    (count,) = take("<I")
    for i in range(count):
        fields.append(ImageField(f"tensor {i} dtype", pos, "<B"))
        _, ndim, name_len, _, _ = take("<BBHQQ")
        pos += 4 * ndim + name_len
    for _ in ("inputs", "outputs"):
        (count,) = take("<I")
        pos += 4 * count
    (count,) = take("<I")
    for _ in range(count):
        _, ndim, _, _, _ = take("<BBHQQ")
        pos += 4 * ndim
    (count,) = take("<I")
    for i in range(count):
        kind, n_in, n_const, n_int, n_float, name_len, type_len, _, _ = take("<HBBBBHHHI")
        pos += 4 * (n_in + 1 + n_const)
        for j, name in enumerate(PARAMS[Kind(kind)][:n_int]):
            fields.append(ImageField(f"op {i} {Kind(kind).name} {name}", pos + 8 * j, "<q"))
        pos += 8 * n_int + 4 * n_float + name_len + type_len
    return fields


def forge(image: bytes, changes) -> bytes:
    """`image` with each (field, value) written, the payload size and digest recomputed: what
    someone with write access to the artifact store can produce."""
    from tapeout.compilers.int8_ref.artifact_format import image_digest

    data = bytearray(image)
    for field, value in changes:
        lo, hi = (0, 255) if field.fmt == "<B" else (-(1 << 63), (1 << 63) - 1)
        struct.pack_into(field.fmt, data, field.offset, min(max(value, lo), hi))
    data[24:32] = struct.pack("<Q", len(data) - HEADER_SIZE)
    data[32:64] = image_digest(bytes(data[:HEADER_SIZE]), bytes(data[HEADER_SIZE:]))
    return bytes(data)


def load_and_run(image: bytes) -> str:
    """Load `image` as the firmware does and, if it loads, run it once on inputs of ones:
    "rejected" (ArtifactRejected) or "ran". Any other exception is a finding."""
    import numpy as np

    from tapeout.compilers.int8_ref.artifact_format import read_image
    from tapeout.compilers.int8_ref.exceptions import ArtifactRejected
    from tapeout.compilers.int8_ref.runtime import Int8Runner

    try:
        loaded = read_image(image, "fuzz")
    except ArtifactRejected:
        return "rejected"
    inputs = [loaded.tensors[t] for t in loaded.inputs]
    Int8Runner(loaded).run({t.name: np.ones(t.shape, t.dtype) for t in inputs})
    return "ran"


# The worker: frames of (u64 length, image) on stdin, one reply line each on stdout.
_WORKER = f"""
import struct, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import targets
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    head = sys.stdin.buffer.read(8)
    if len(head) < 8:
        break
    image = sys.stdin.buffer.read(struct.unpack("<Q", head)[0])
    try:
        reply = targets.load_and_run(image)
    except Exception as error:
        reply = "error " + repr(error).replace("\\n", " ")
    sys.stdout.write(reply + "\\n"); sys.stdout.flush()
"""


class ImageWorker:
    """A worker process that loads and runs int8-ref images, one at a time, each within
    `timeout` seconds; it is killed and restarted after a finding."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if self._reply(process, 120.0) != "ready":
            raise RuntimeError(f"the image worker did not start: {process.stderr.read()!r}")
        return process

    @staticmethod
    def _reply(process: subprocess.Popen, timeout: float) -> str | None:
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        if not ready:
            return None
        return process.stdout.readline().decode().strip()

    def _stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def check(self, image: bytes, what: object = "") -> str:
        """"rejected" (ArtifactRejected) or "ran" (loaded and ran to the end). Raises Finding
        for any other exception, a crash, or a load and run longer than the time limit."""
        if self.process is None:
            self.process = self._start()
        self.process.stdin.write(struct.pack("<Q", len(image)) + image)
        self.process.stdin.flush()
        reply = self._reply(self.process, self.timeout)
        if reply in ("rejected", "ran"):
            return reply
        if reply is None:
            self._stop()
            raise Finding(f"{what}: the image did not load and run within {self.timeout} s")
        if reply.startswith("error "):
            raise Finding(f"{what}: expected ArtifactRejected, found {reply[6:]}")
        self.process.wait(timeout=10)  # end of output: the worker died
        stderr = self.process.stderr.read().decode(errors="replace")[-1000:]
        code = self.process.returncode
        self.process = None
        raise Finding(f"{what}: the worker died (exit {code}): {stderr}")

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self._stop()


def int8_image(worker: ImageWorker, seed: bytes, fields: list[ImageField], mutations) -> str:
    """Set up to a few fields of a real int8-ref image (digest recomputed) and load and run
    it: ArtifactRejected or a run that ends, within the worker's time limit."""
    changes = [(fields[index % len(fields)], value) for index, value in mutations]
    return worker.check(forge(seed, changes), [(f.where, v) for f, v in changes])


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="tapeout-fuzz-"))
