"""The `onnxruntime` compiler: ONNX Runtime's CPU provider as the fallback target.

"Compiling" means letting ONNX Runtime apply its graph optimisations once, at a pinned level,
and saving the optimised model together with the exact session settings that run it. The
"firmware" of this target is the ONNX Runtime release deployed on it: the artifact records the
oldest release that implements the model's opset (onnxruntime docs/Versioning.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
)
from tapeout.compilers.versions import at_least

MODEL_FILE = "model.ort.onnx"
SESSION_FILE = "session.json"

# Level names as in onnxruntime.GraphOptimizationLevel. "basic" is the default: its rewrites
# are hardware-independent, so the saved model runs the same on any CPU (ORT docs,
# "Graph Optimizations in ONNX Runtime": extended/all layouts may be machine-specific).
_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}
_DEFAULT_OPTIONS = {"graph_optimization_level": "basic", "threads": "1"}

# Oldest ONNX Runtime release implementing each ONNX opset (onnxruntime docs/Versioning.md).
# A newer opset than this table knows needs at least the release that compiled it.
FIRST_RELEASE_FOR_OPSET = {
    13: "1.6.0", 14: "1.8.0", 15: "1.9.0", 16: "1.11.0", 17: "1.13.0",
    18: "1.14.0", 19: "1.15.0", 20: "1.17.0", 21: "1.18.0",
}


class OnnxRuntimeCompiler:
    """Compiler plugin `onnxruntime` (docs/plugins.md)."""

    name = "onnxruntime"

    @property
    def version(self) -> str:
        return installed_version("onnxruntime")

    def capabilities(self) -> Capabilities:
        import onnx.defs

        operators = frozenset(
            schema.name
            for schema in onnx.defs.get_all_schemas()
            if schema.domain in ("", "ai.onnx")
        )
        return Capabilities(
            operators=operators,
            input_formats=frozenset({"qdq", "qoperator", "float"}),
            tensor_dtypes=frozenset({"float32", "float16", "int8", "uint8", "int32", "int64"}),
            firmware_range=("1.6.0", None),
            options={"graph_optimization_level": tuple(_LEVELS), "threads": ()},
        )

    def compile(
        self, model: QuantizedModel, target: TargetProfile, workdir: Path
    ) -> CompiledArtifact:
        """Optimise `model` once at the pinned level and save it with its session settings.

        Raises:
            InvalidInput: an unknown option or value.
            UnsupportedOperator: a node outside the default ONNX domain.
            CompilationFailed: ONNX Runtime refuses the model.
        """
        import onnx
        import onnxruntime

        options = _resolve_options(target.options)
        loaded = onnx.load(str(model.path))
        supported = self.capabilities().operators
        for node in loaded.graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in supported:
                raise UnsupportedOperator(self.name, node.name, f"{node.domain or 'ai.onnx'}.{node.op_type}")
        opset = next(
            (entry.version for entry in loaded.opset_import if entry.domain in ("", "ai.onnx")), 0
        )
        minimum_release = FIRST_RELEASE_FOR_OPSET.get(opset, self.version)
        if not at_least(target.firmware_revision, minimum_release):
            raise InvalidInput(
                f"target {target.name!r}: firmware_revision {target.firmware_revision} cannot run "
                f"opset {opset}; ONNX Runtime {minimum_release} or newer is needed"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        session_options = onnxruntime.SessionOptions()
        session_options.graph_optimization_level = getattr(
            onnxruntime.GraphOptimizationLevel, _LEVELS[options["graph_optimization_level"]]
        )
        session_options.optimized_model_filepath = str(workdir / MODEL_FILE)
        try:
            onnxruntime.InferenceSession(
                str(model.path), session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ORT raises its own Fail/InvalidGraph types
            raise CompilationFailed(f"onnxruntime refused {model.path}: {error}") from error
        session = {
            "onnxruntime": self.version,
            "graph_optimization_level": options["graph_optimization_level"],
            # The saved model is already optimised: loading it runs no rewrites again.
            "load_optimization_level": "disabled",
            "intra_op_num_threads": int(options["threads"]),
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "providers": ["CPUExecutionProvider"],
        }
        (workdir / SESSION_FILE).write_text(json.dumps(session, indent=2, sort_keys=True) + "\n")
        size = (workdir / MODEL_FILE).stat().st_size
        return CompiledArtifact(
            compiler=self.name,
            compiler_version=self.version,
            artifact_id=f"{self.name}-{self.version}-{target.options_digest()[:12]}",
            directory=workdir,
            files=(MODEL_FILE, SESSION_FILE),
            options=options,
            target=target.name,
            minimum_firmware_revision=minimum_release,
            inputs=model.inputs,
            outputs=model.outputs,
            report={
                "artifact_size_bytes": size,
                "opset": opset,
                "cost": count_onnx(
                    workdir / MODEL_FILE,
                    f"the graph ONNX Runtime saved after its {options['graph_optimization_level']} optimisations",
                ).to_report(),
            },
        )

    def load(self, artifact: CompiledArtifact) -> "OnnxRuntimeRunner":
        return OnnxRuntimeRunner(artifact.directory)


def recorded_session(model: Path, settings_file: Path, optimization_level: str):
    """An ONNX Runtime session with the thread counts and providers recorded in
    `settings_file` (session.json), at `optimization_level` (a GraphOptimizationLevel name).
    The runners of every artifact that ONNX Runtime runs open their model this way."""
    import onnxruntime

    settings = json.loads(settings_file.read_text())
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, optimization_level)
    options.intra_op_num_threads = settings["intra_op_num_threads"]
    options.inter_op_num_threads = settings["inter_op_num_threads"]
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(model), options, providers=settings["providers"])


class OnnxRuntimeRunner:
    """Runs a compiled `onnxruntime` artifact with exactly its recorded session settings."""

    def __init__(self, directory: Path) -> None:
        # The saved model is already optimised: loading it runs no rewrites again.
        self._session = recorded_session(directory / MODEL_FILE, directory / SESSION_FILE, "ORT_DISABLE_ALL")
        self._output_names = [output.name for output in self._session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, results))


def _resolve_options(given: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(set(given) - set(_DEFAULT_OPTIONS))
    if unknown:
        raise InvalidInput(
            f"compiler 'onnxruntime': unknown option(s) {unknown}; known: {sorted(_DEFAULT_OPTIONS)}"
        )
    options = {**_DEFAULT_OPTIONS, **{key: str(value) for key, value in given.items()}}
    if options["graph_optimization_level"] not in _LEVELS:
        raise InvalidInput(
            "compiler 'onnxruntime': option graph_optimization_level: expected one of "
            f"{list(_LEVELS)}, found {options['graph_optimization_level']!r}"
        )
    if not options["threads"].isdigit() or int(options["threads"]) < 1:
        raise InvalidInput(
            f"compiler 'onnxruntime': option threads: expected a positive integer, found {options['threads']!r}"
        )
    return options
