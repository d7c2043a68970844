"""The int8-ref compiler plugin: capabilities(), compile(), load()."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import onnx

from ..errors import CompilationFailed, InvalidInput
from ..interface import Capabilities, CompiledArtifact, QuantizedModel, TargetProfile, TensorSpec
from .artifact_format import FORMAT_VERSION, parse_revision, write_image
from .compat import ort_float_nodes, report_for_model
from .cost import program_cost
from .exceptions import ArtifactRejected, IncompatibleModel
from .lowering import lower
from .memory_plan import plan_memory
from .opset import KERNELS, ONNX_OPS, Kind
from .program import ONNX_DTYPES, LoweringError
from .runtime import FIRMWARE_REVISION, Int8Runner, load_image

__version__ = "0.2.0"
ARTIFACT_FILE = "model.i8r"
# the oldest firmware that runs what this compiler writes: the first that reads format 3
# (Conv and Gemm weights packed at compile time)
MIN_FIRMWARE = "2.0.0"
DEFAULT_REQUANT = "fixed-point"
# threads: any positive integer (the worker threads of the loaded runtime; `()` = free-form)
OPTIONS = {"requant": ("ort", "fixed-point"), "threads": ()}


class Int8ReferenceCompiler:
    """Reference compiler for an integer-only accelerator, simulated by a Cython runtime."""

    name = "int8-ref"
    version = __version__

    def capabilities(self) -> Capabilities:
        ops = frozenset(f"{entry.domain}.{op}" if entry.domain else op
                        for op, entry in ONNX_OPS.items())
        return Capabilities(
            operators=ops,
            input_formats=frozenset({"qdq", "qoperator"}),
            tensor_dtypes=frozenset({"int8", "uint8", "int16", "int32", "float32"}),
            firmware_range=(MIN_FIRMWARE, None),
            options=dict(OPTIONS),
        )

    def _options(self, target: TargetProfile) -> dict[str, str]:
        opts = dict(target.options)
        unknown = sorted(set(opts) - set(OPTIONS))
        if unknown:
            raise InvalidInput(f"target {target.name!r}: unknown int8-ref option(s) {unknown}; "
                               f"expected some of {sorted(OPTIONS)}")
        requant = opts.get("requant", DEFAULT_REQUANT)
        if requant not in OPTIONS["requant"]:
            raise InvalidInput(f"target {target.name!r}: requant={requant!r}, expected one of "
                               f"{OPTIONS['requant']}")
        resolved = {"requant": requant}
        if "threads" in opts:
            threads = opts["threads"]
            if not threads.isdigit() or int(threads) < 1:
                raise InvalidInput(f"target {target.name!r}: threads={threads!r}, expected a "
                                   "positive integer")
            resolved["threads"] = str(int(threads))
        return resolved

    def compile(self, model: QuantizedModel, target: TargetProfile,
                workdir: Path) -> CompiledArtifact:
        """Lower, plan and write `model.i8r` under `workdir`.

        The artifact's `report` holds, besides the memory plan and the op counts:

        - `format_version`: the image's format, 3 (artifact_format.py).
        - `cost`: one run of the lowered program at its compiled batch (cost.py), counted
          from the program the firmware runs, not from the ONNX graph:
          `macs` (products accumulated by Conv, Gemm, MatMul), `bytes_read` (every tensor
          each op reads, at its width: 1 byte int8/uint8, 2 int16, 4 int32/float32, plus
          `weight_bytes`), `bytes_written` (every tensor each op writes, at its width),
          `weight_bytes` (weights at 1 byte, int32 biases at 4, constant 8-bit operands;
          requantization multipliers and tables excluded) and `batch`, all ints (divide by
          `batch` for one sample); `source` says what was counted.
        - The artifact needs firmware 2.0.0 (the first that reads format 3), or the revision
          an op kind it uses was added in (KernelSpec.firmware) when that is newer; a target
          on older firmware is refused at compile time.

        Options: `requant` (`fixed-point` or `ort`), `threads` (worker threads of the loaded
        runtime, default 1: the same results for any count; it does not change the image).

        Raises:
            InvalidInput: bad options or an unreadable model.
            IncompatibleModel: (an UnsupportedOperator) listing every node it cannot build.
            MemoryBudgetExceeded: (a CompilationFailed) naming the op where memory overflows.
            CompilationFailed: the target's firmware is older than the artifact needs.
        """
        t0 = time.perf_counter()
        opts = self._options(target)
        try:
            fw = parse_revision(target.firmware_revision)
        except ValueError as exc:
            raise InvalidInput(f"target {target.name!r}: {exc}") from None
        if fw < parse_revision(MIN_FIRMWARE):
            raise CompilationFailed(
                f"target {target.name!r} runs firmware {target.firmware_revision}; int8-ref "
                f"artifacts need at least {MIN_FIRMWARE}")
        try:
            onnx_model = onnx.load(str(model.path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
            raise InvalidInput(f"cannot read ONNX model {model.path}: {exc}") from None
        shapes = {s.name: tuple(s.shape) for s in model.inputs}
        problems = report_for_model(onnx_model, shapes, opts["requant"])
        if problems:
            raise IncompatibleModel(self.name, problems)
        ort_float: list[str] | str = []
        if opts["requant"] == "ort":
            # Where ONNX Runtime itself stays in float, `ort` mode follows it: elementwise ops
            # are emulated in float32; a float Conv/MatMul's summation order cannot be, so
            # those nodes are named in the report.
            try:
                ort_float = ort_float_nodes(model.path)
            except Exception as exc:  # noqa: BLE001 - diagnostic only
                ort_float = f"unknown: {exc}"
        try:
            prog = lower(onnx_model, shapes, opts["requant"],
                         frozenset(ort_float) if isinstance(ort_float, list) else frozenset())
        except LoweringError as exc:
            raise IncompatibleModel(self.name, [exc.problem]) from None
        format_version, needed = FORMAT_VERSION, MIN_FIRMWARE
        for op in prog.ops:  # a kind newer than the format needs a newer firmware too
            kernel = KERNELS[op.kind]
            if parse_revision(kernel.firmware) > parse_revision(needed):
                needed = kernel.firmware
            if fw < parse_revision(kernel.firmware):
                raise CompilationFailed(
                    f"target {target.name!r} runs firmware {target.firmware_revision}; node "
                    f"{op.node!r} compiles to a {kernel.name} op, which needs firmware "
                    f"{kernel.firmware} or newer")
        # No refusal here: the pipeline gates `peak_memory_bytes` against the target's
        # memory_budget_bytes (a gate table, exit 1), with the op where the peak is.
        plan = plan_memory(prog)
        image = write_image(
            compiler=self.name, compiler_version=self.version, requant=opts["requant"],
            min_firmware=needed, tensors=prog.tensors, offsets=plan.offsets,
            inputs=prog.inputs, outputs=prog.outputs, consts=prog.consts, ops=prog.ops,
            arena_bytes=plan.arena_bytes, scratch_bytes=plan.scratch_bytes)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / ARTIFACT_FILE).write_bytes(image)
        ops_by_kind: dict[str, int] = {}
        for op in prog.ops:
            ops_by_kind[op.kind.name] = ops_by_kind.get(op.kind.name, 0) + 1
        out_scales = {prog.tensors[op.output].name: op.floats[0] for op in prog.ops
                      if op.kind == Kind.DEQUANTIZE and op.output in prog.outputs}
        report = {
            "format_version": format_version,
            "requant": opts["requant"],
            "peak_memory_bytes": plan.peak_bytes,
            "peak_memory_op": peak_op(prog, plan),
            "arena_bytes": plan.arena_bytes,
            "scratch_bytes": plan.scratch_bytes,
            "constant_bytes": int(sum(np.asarray(c).nbytes for c in prog.consts)),
            "artifact_bytes": len(image),
            "artifact_sha256": hashlib.sha256(image).hexdigest(),
            "op_count": len(prog.ops),
            "ops": dict(sorted(ops_by_kind.items())),
            "output_scales": out_scales,
            "cost": {**program_cost(prog), "source": "int8-ref's lowered kernel program and its tensors' widths"},
        }
        if opts["requant"] == "ort":
            report["ort_float_nodes"] = ort_float
        report["compile_seconds"] = round(time.perf_counter() - t0, 4)

        def spec(tid):
            t = prog.tensors[tid]
            return TensorSpec(t.name, tuple(t.shape), t.dtype)

        return CompiledArtifact(
            compiler=self.name,
            compiler_version=self.version,
            artifact_id=f"{self.name}-{self.version}-{target.options_digest()[:12]}",
            directory=workdir,
            files=(ARTIFACT_FILE,),
            options=opts,
            target=target.name,
            minimum_firmware_revision=needed,
            inputs=tuple(spec(t) for t in prog.inputs),
            outputs=tuple(spec(t) for t in prog.outputs),
            report=report,
        )

    def load(self, artifact: CompiledArtifact) -> Int8Runner:
        """Load the artifact into the firmware simulator.

        Raises:
            ArtifactRejected: malformed, truncated or corrupted file, or not int8-ref's.
            FirmwareTooOld: the artifact needs a newer firmware than FIRMWARE_REVISION.
        """
        path = Path(artifact.directory) / ARTIFACT_FILE
        image = load_image(path)
        if image.compiler != self.name:
            raise ArtifactRejected(str(path), f"built by {image.compiler!r}, not {self.name!r}")
        return Int8Runner(image, threads=int(artifact.options.get("threads", "1")))


def load_file(path: Path, threads: int = 1, isa: str | None = None) -> Int8Runner:
    """Load a `model.i8r` directly (for tools and tests); `threads` and `isa` as Int8Runner."""
    return Int8Runner(load_image(Path(path)), threads=threads, isa=isa)


def peak_op(prog, plan) -> dict[str, object] | None:
    """The op whose live tensors plus its own scratch need the most memory: where the peak is."""
    if not prog.ops:
        return None
    index = max(range(len(prog.ops)), key=lambda i: plan.live_bytes[i] + prog.ops[i].scratch)
    op = prog.ops[index]
    return {"node": op.node, "op_type": op.op_type, "live_bytes": plan.live_bytes[index],
            "scratch_bytes": int(op.scratch)}


__all__ = ["Int8ReferenceCompiler", "FIRMWARE_REVISION", "load_file", "ONNX_DTYPES"]

