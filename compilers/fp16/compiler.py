"""The `fp16` compiler: onnxconverter-common's float16 conversion, run through ONNX Runtime.

It compiles the *float* model (`QuantizedModel.float_path`), not the QDQ one: float16 is a
different way of shrinking the same fp32 model, so the int8 ranges do not apply. Weights and
activations become float16; the ops in `op_block_list` (onnxconverter-common's default list:
the ML-domain ops, NonMaxSuppression, TopK, Resize, ...) stay in float32 with Casts around
them. `keep_io_types` decides whether the graph's inputs and outputs stay float32 (the default,
so callers keep feeding float32) or become float16 as well; the artifact records which.

Values outside float16's range are clamped by the converter to ±`max_finite_val` (10000 by
default) and tiny ones raised to `min_positive_val` (1e-7): both are recorded options.
The "firmware" of this target is the ONNX Runtime release that runs it, as for `onnxruntime`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import numpy as np

from tapeout.compilers.cost import count_onnx
from tapeout.compilers.errors import CompilationFailed, InvalidInput, UnsupportedOperator
from tapeout.compilers.interface import (
    Capabilities,
    CompiledArtifact,
    QuantizedModel,
    TargetProfile,
    TensorSpec,
)
from tapeout.compilers.onnxruntime_cpu.compiler import (  # the same runtime
    FIRST_RELEASE_FOR_OPSET,
    recorded_session,
)
from tapeout.compilers.versions import at_least

MODEL_FILE = "model.fp16.onnx"
SESSION_FILE = "session.json"
_QUANTIZATION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
_OPTION_NAMES = ("keep_io_types", "op_block_list", "threads", "min_positive_val", "max_finite_val")
_ML_DOMAIN = "ai.onnx.ml"


@dataclass(frozen=True)
class Fp16Options:
    """The resolved target options, every default written out."""

    keep_io_types: bool
    op_block_list: tuple[str, ...]
    threads: int
    min_positive_val: float
    max_finite_val: float

    def as_strings(self) -> dict[str, str]:
        return {
            "keep_io_types": "true" if self.keep_io_types else "false",
            "op_block_list": ",".join(self.op_block_list),
            "threads": str(self.threads),
            "min_positive_val": repr(self.min_positive_val),
            "max_finite_val": repr(self.max_finite_val),
        }


def resolve_options(given: Mapping[str, str]) -> Fp16Options:
    """Validate the target's options and fill in every default.

    Raises:
        InvalidInput: an unknown option or a bad value (names the option, expected, found).
    """
    from onnxconverter_common import float16

    unknown = sorted(set(given) - set(_OPTION_NAMES))
    if unknown:
        raise InvalidInput(f"compiler 'fp16': unknown option(s) {unknown}; known: {sorted(_OPTION_NAMES)}")
    values = {key: str(value).strip() for key, value in given.items()}

    def bad(option: str, expected: str) -> InvalidInput:
        return InvalidInput(f"compiler 'fp16': option {option}: expected {expected}, found {values[option]!r}")

    keep = values.get("keep_io_types", "true").lower()
    if keep not in ("true", "false"):
        raise bad("keep_io_types", "true or false")
    if "op_block_list" in values:
        blocked = tuple(sorted({op.strip() for op in values["op_block_list"].split(",") if op.strip()}))
    else:
        blocked = tuple(sorted(float16.DEFAULT_OP_BLOCK_LIST))
    threads = values.get("threads", "1")
    if not threads.isdigit() or int(threads) < 1:
        raise bad("threads", "a positive integer")

    def positive(option: str, default: float) -> float:
        if option not in values:
            return default
        try:
            number = float(values[option])
        except ValueError:
            raise bad(option, "a positive number") from None
        if not number > 0:
            raise bad(option, "a positive number")
        return number

    low = positive("min_positive_val", 1e-7)
    high = positive("max_finite_val", 1e4)
    if high > 65504.0:
        raise InvalidInput(
            f"compiler 'fp16': option max_finite_val: expected at most 65504 (float16's largest "
            f"finite value), found {high!r}"
        )
    return Fp16Options(keep == "true", blocked, int(threads), low, high)


class Fp16Compiler:
    """Compiler plugin `fp16` (docs/plugins.md)."""

    name = "fp16"

    @property
    def version(self) -> str:
        # Both tools decide the artifact's numbers: the converter and the runtime.
        return f"{installed_version('onnxconverter-common')}+ort.{installed_version('onnxruntime')}"

    def capabilities(self) -> Capabilities:
        import onnx.defs

        operators = frozenset(
            schema.name if schema.domain in ("", "ai.onnx") else f"{schema.domain}.{schema.name}"
            for schema in onnx.defs.get_all_schemas()
            if schema.domain in ("", "ai.onnx", _ML_DOMAIN)
        ) - _QUANTIZATION_OPS
        return Capabilities(
            operators=operators,
            input_formats=frozenset({"float"}),
            tensor_dtypes=frozenset({"float16", "float32", "int32", "int64", "bool"}),
            firmware_range=("1.6.0", None),
            options={
                "keep_io_types": ("true", "false"),
                "op_block_list": (),
                "threads": (),
                "min_positive_val": (),
                "max_finite_val": (),
            },
        )

    def compile(self, model: QuantizedModel, target: TargetProfile, workdir: Path) -> CompiledArtifact:
        """Convert the float model to float16 and check ONNX Runtime loads it.

        Raises:
            InvalidInput: a bad option; the float model is quantized; the firmware (ONNX
                Runtime release) is too old for the opset.
            UnsupportedOperator: a node outside the ONNX and ONNX-ML domains, or an op ONNX
                does not define.
            CompilationFailed: the conversion or ONNX Runtime fails.
        """
        import onnx
        from onnxconverter_common import float16

        options = resolve_options(target.options)
        source = onnx.load(str(model.float_path))
        supported = self.capabilities().operators
        for node in source.graph.node:
            qualified = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            if node.op_type in _QUANTIZATION_OPS and node.domain in ("", "ai.onnx"):
                raise InvalidInput(
                    f"compiler 'fp16': expected a float model at {model.float_path}, found quantization "
                    f"node {node.name!r} ({node.op_type}); fp16 converts the fp32 model, not the QDQ one"
                )
            if qualified not in supported:
                raise UnsupportedOperator(self.name, node.name, f"{node.domain or 'ai.onnx'}.{node.op_type}")
        opset = next((e.version for e in source.opset_import if e.domain in ("", "ai.onnx")), 0)
        minimum_release = FIRST_RELEASE_FOR_OPSET.get(opset, installed_version("onnxruntime"))
        if not at_least(target.firmware_revision, minimum_release):
            raise InvalidInput(
                f"target {target.name!r}: firmware_revision {target.firmware_revision} cannot run "
                f"opset {opset}; ONNX Runtime {minimum_release} or newer is needed"
            )
        try:
            converted = float16.convert_float_to_float16(
                source,
                min_positive_val=options.min_positive_val,
                max_finite_val=options.max_finite_val,
                keep_io_types=options.keep_io_types,
                op_block_list=list(options.op_block_list),
            )
        except Exception as error:  # the converter raises plain Exceptions and ValueErrors
            raise CompilationFailed(
                f"compiler 'fp16': onnxconverter-common could not convert {model.float_path}: {error}"
            ) from error
        workdir.mkdir(parents=True, exist_ok=True)
        onnx.save(converted, str(workdir / MODEL_FILE))
        settings = {
            "onnxruntime": installed_version("onnxruntime"),
            "onnxconverter_common": installed_version("onnxconverter-common"),
            # The converted graph is run as written: no rewrites at load, so the numbers do
            # not depend on the optimiser of the machine that runs it.
            "graph_optimization_level": "basic",
            "intra_op_num_threads": options.threads,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "providers": ["CPUExecutionProvider"],
        }
        (workdir / SESSION_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        try:
            runner = Fp16Runner(workdir)
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise CompilationFailed(f"compiler 'fp16': onnxruntime refused the float16 model: {error}") from error
        return CompiledArtifact(
            compiler=self.name,
            compiler_version=self.version,
            artifact_id=f"{self.name}-{self.version}-{target.options_digest()[:12]}",
            directory=workdir,
            files=(MODEL_FILE, SESSION_FILE),
            options=options.as_strings(),
            target=target.name,
            minimum_firmware_revision=minimum_release,
            inputs=runner.inputs,
            outputs=runner.outputs,
            report={
                "artifact_size_bytes": (workdir / MODEL_FILE).stat().st_size,
                "opset": opset,
                "cost": count_onnx(workdir / MODEL_FILE, "the float16 graph the compiler wrote").to_report(),
                "source_model": "float",
                "io_dtype": "float32" if options.keep_io_types else "float16",
                "nodes": len(converted.graph.node),
                "cast_nodes": sum(1 for node in converted.graph.node if node.op_type == "Cast"),
                "float32_nodes": sorted(
                    node.name or node.output[0] for node in converted.graph.node if node.op_type in options.op_block_list
                ),
            },
        )

    def load(self, artifact: CompiledArtifact) -> "Fp16Runner":
        return Fp16Runner(artifact.directory)


_NUMPY_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
                 "tensor(int32)": "int32", "tensor(double)": "float64", "tensor(bool)": "bool"}


class Fp16Runner:
    """Runs a compiled `fp16` artifact with its recorded session settings.

    Floating-point inputs are cast to the dtype the graph declares (float16 when the target
    did not keep io types), as a host driver would before handing buffers to the device.
    """

    def __init__(self, directory: Path) -> None:
        self._session = recorded_session(directory / MODEL_FILE, directory / SESSION_FILE, "ORT_ENABLE_BASIC")
        self.inputs = tuple(_spec(value) for value in self._session.get_inputs())
        self.outputs = tuple(_spec(value) for value in self._session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for spec in self.inputs:
            array = np.asarray(inputs[spec.name])
            if array.dtype.kind == "f" and array.dtype.name != spec.dtype:
                array = array.astype(spec.dtype)
            feed[spec.name] = array
        return dict(zip(self._output_names, self._session.run(self._output_names, feed)))


def _spec(value) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in value.shape)
    return TensorSpec(value.name, shape, _NUMPY_DTYPES.get(value.type, value.type))
