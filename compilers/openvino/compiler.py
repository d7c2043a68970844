"""The `openvino` compiler: OpenVINO compiles the QDQ model for its CPU plugin (int8 kernels
where the graph is quantized) and the compiled model, exported as a blob, is the artifact.

An exported blob does not keep the properties it was compiled with, and importing it without
them can fail or run differently (OpenVINO CPU plugin: `import_model` takes the properties
again). The artifact therefore holds `model.blob` and `compile_properties.json`: the device,
the exact properties, and the OpenVINO release, since a blob imports only into the release
that exported it. That release is this target's "firmware": the artifact's minimum firmware
revision, and the Runner refuses a blob from another release with a clear error.

`INFERENCE_PRECISION_HINT` is pinned (`f32` by default): on CPUs with bf16 or AMX support
OpenVINO otherwise runs the float parts of a model in bf16 without saying so. The compiled
model's effective precision is checked after compiling and after importing.

Imports of the `openvino` extra happen inside methods (and in the worker process), so this
module imports without it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path

import numpy as np

from tapeout.compilers.errors import CompilationFailed, InvalidInput, UnsupportedOperator
from tapeout.compilers.interface import Capabilities, CompiledArtifact, QuantizedModel, TargetProfile, TensorSpec
from tapeout.compilers.openvino.worker import BLOB, precision_name

PROPERTIES_FILE = "compile_properties.json"
DEVICE = "CPU"
_PRECISIONS = ("f32", "bf16")
_HINTS = ("LATENCY", "THROUGHPUT")
_OPTION_NAMES = ("inference_precision", "performance_hint", "threads", "timeout_seconds")


def openvino_version() -> str | None:
    try:
        return installed_version("openvino")
    except PackageNotFoundError:
        return None


@dataclass(frozen=True)
class OpenVinoOptions:
    inference_precision: str
    performance_hint: str
    threads: int
    timeout_seconds: float

    def as_strings(self) -> dict[str, str]:
        return {
            "inference_precision": self.inference_precision,
            "performance_hint": self.performance_hint,
            "threads": str(self.threads),
            "timeout_seconds": f"{self.timeout_seconds:g}",
        }

    def properties(self) -> dict[str, object]:
        """The OpenVINO properties of compile and import, all written out."""
        return {
            "INFERENCE_PRECISION_HINT": self.inference_precision,
            "EXECUTION_MODE_HINT": "ACCURACY",
            "PERFORMANCE_HINT": self.performance_hint,
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,
            "ENABLE_HYPER_THREADING": False,
        }


def resolve_options(given: Mapping[str, str]) -> OpenVinoOptions:
    """Raises InvalidInput on an unknown option or a bad value."""
    unknown = sorted(set(given) - set(_OPTION_NAMES))
    if unknown:
        raise InvalidInput(f"compiler 'openvino': unknown option(s) {unknown}; known: {sorted(_OPTION_NAMES)}")
    values = {key: str(value).strip() for key, value in given.items()}

    def bad(option: str, expected: str) -> InvalidInput:
        return InvalidInput(f"compiler 'openvino': option {option}: expected {expected}, found {values[option]!r}")

    precision = values.get("inference_precision", "f32")
    if precision not in _PRECISIONS:
        raise bad("inference_precision", f"one of {list(_PRECISIONS)}")
    hint = values.get("performance_hint", "LATENCY")
    if hint not in _HINTS:
        raise bad("performance_hint", f"one of {list(_HINTS)}")
    threads = values.get("threads", "1")
    if not threads.isdigit() or int(threads) < 1:
        raise bad("threads", "a positive integer")
    timeout_text = values.get("timeout_seconds", "600")
    try:
        timeout = float(timeout_text)
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise bad("timeout_seconds", "a positive number")
    return OpenVinoOptions(precision, hint, int(threads), timeout)


class OpenVinoCompiler:
    """Compiler plugin `openvino` (docs/plugins.md): QDQ ONNX -> OpenVINO CPU compiled blob."""

    name = "openvino"

    @property
    def version(self) -> str:
        return openvino_version() or "absent"

    def capabilities(self) -> Capabilities:
        import onnx.defs

        release = openvino_version()
        # Declared: the default ONNX domain. OpenVINO's ONNX front end is the exact check, at
        # compile time, and names every node it cannot convert.
        operators = frozenset(
            schema.name for schema in onnx.defs.get_all_schemas() if schema.domain in ("", "ai.onnx")
        )
        return Capabilities(
            operators=operators,
            input_formats=frozenset({"qdq", "float"}),
            tensor_dtypes=frozenset({"float32", "int8", "uint8", "int32", "int64"}),
            # A blob imports only into the OpenVINO release that exported it.
            firmware_range=(release, release) if release else ("2024.0", None),
            options={
                "inference_precision": _PRECISIONS,
                "performance_hint": _HINTS,
                "threads": (),
                "timeout_seconds": (),
            },
        )

    def compile(self, model: QuantizedModel, target: TargetProfile, workdir: Path) -> CompiledArtifact:
        """Compile for OpenVINO's CPU plugin in a worker process and export the blob.

        Raises:
            InvalidInput: the openvino extra is missing, a bad option, or the target's
                firmware (OpenVINO release) is not the one that compiles.
            UnsupportedOperator: a node OpenVINO's ONNX front end cannot convert (named).
            CompilationFailed: OpenVINO fails, times out, or would not run in the pinned
                inference precision.
        """
        import onnx

        release = openvino_version()
        if release is None:
            raise InvalidInput("compiler 'openvino' needs the openvino extra: pip install 'tapeout[openvino]'")
        options = resolve_options(target.options)
        if target.firmware_revision != release:
            raise InvalidInput(
                f"target {target.name!r}: firmware_revision {target.firmware_revision}: an OpenVINO blob "
                f"imports only into the release that exported it; this machine compiles with {release}"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        document = {"device": DEVICE, "openvino": release, "properties": options.properties()}
        with tempfile.TemporaryDirectory(prefix="tapeout-openvino-") as scratch:
            properties_path = Path(scratch) / "properties.json"
            properties_path.write_text(json.dumps(document))
            try:
                completed = subprocess.run(
                    [sys.executable, "-m", "tapeout.compilers.openvino.worker", str(model.path), str(workdir),
                     str(properties_path)],
                    capture_output=True, text=True, timeout=options.timeout_seconds, check=False,
                )
            except subprocess.TimeoutExpired:
                raise CompilationFailed(
                    f"compiler 'openvino': OpenVINO {release} did not finish compiling within "
                    f"{options.timeout_seconds:g} s (option timeout_seconds)"
                ) from None
        lines = completed.stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            # A negative return code is the signal that killed it (OpenVINO segfaults on some graphs).
            code = completed.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            tail = " | ".join(completed.stderr.strip().splitlines()[-3:])
            raise CompilationFailed(
                f"compiler 'openvino': the OpenVINO {release} worker failed ({how})" + (f": {tail}" if tail else "")
            ) from None
        if result["status"] == "unsupported":
            graph = onnx.load(str(model.path), load_external_data=False).graph
            producers = {output: node for node in graph.node for output in node.output}
            first = result["outputs"][0]
            node = producers.get(first)
            name = node.name if node is not None and node.name else first
            op = f"{node.domain or 'ai.onnx'}.{node.op_type}" if node is not None else "unknown"
            raise UnsupportedOperator(
                self.name, name, op, f"OpenVINO {release}'s ONNX front end has no conversion rule for it"
            )
        if result["status"] != "ok":
            raise CompilationFailed(f"compiler 'openvino': OpenVINO {release} failed: {result['message']}")
        expected = options.inference_precision
        if result["effective_inference_precision"] != expected:
            raise CompilationFailed(
                f"compiler 'openvino': expected inference precision {expected}, the compiled model "
                f"reports {result['effective_inference_precision']}"
            )
        (workdir / PROPERTIES_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        runner = OpenVinoRunner(workdir)
        precisions = result["runtime_precisions"]
        return CompiledArtifact(
            compiler=self.name,
            compiler_version=release,
            artifact_id=f"{self.name}-{release}-{target.options_digest()[:12]}",
            directory=workdir,
            files=tuple(sorted((BLOB, PROPERTIES_FILE))),
            options=options.as_strings(),
            target=target.name,
            minimum_firmware_revision=release,
            inputs=model.inputs,
            outputs=runner.outputs_like(model.outputs),
            report={
                "artifact_size_bytes": (workdir / BLOB).stat().st_size,
                "device": DEVICE,
                "effective_inference_precision": result["effective_inference_precision"],
                "runtime_layers": result["runtime_layers"],
                "runtime_precisions": precisions,
                "int8_layers": sum(count for precision, count in precisions.items() if precision.lower() in ("i8", "u8")),
            },
        )

    def load(self, artifact: CompiledArtifact) -> "OpenVinoRunner":
        return OpenVinoRunner(artifact.directory)


class OpenVinoRunner:
    """Imports the blob with exactly its recorded properties and runs it on the CPU."""

    def __init__(self, directory: Path) -> None:
        import openvino as ov

        document = json.loads((directory / PROPERTIES_FILE).read_text())
        release = openvino_version()
        if document["openvino"] != release:
            raise InvalidInput(
                f"{directory / BLOB}: exported by OpenVINO {document['openvino']}, this machine runs "
                f"{release}; a blob imports only into the release that exported it"
            )
        core = ov.Core()
        with (directory / BLOB).open("rb") as stream:
            blob = io.BytesIO(stream.read())
        self._compiled = core.import_model(blob, document["device"], document["properties"])
        pinned = document["properties"]["INFERENCE_PRECISION_HINT"]
        effective = precision_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        if effective != pinned:
            raise InvalidInput(f"{directory / BLOB}: imported with precision {effective}, expected {pinned}")
        self._request = self._compiled.create_infer_request()
        self._outputs = [(port, port.get_any_name()) for port in self._compiled.outputs]

    def outputs_like(self, declared: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        names = [name for _, name in self._outputs]
        if [spec.name for spec in declared] != names:
            raise CompilationFailed(
                f"compiler 'openvino': compiled outputs {names} differ from the model's {[s.name for s in declared]}"
            )
        return declared

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer(
            {name: np.ascontiguousarray(value) for name, value in inputs.items()}, share_inputs=True
        )
        # The request reuses its output buffers: copy before the next call overwrites them.
        return {name: np.array(results[port], copy=True) for port, name in self._outputs}
