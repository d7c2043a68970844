"""The compiler plugin interface (docs/plugins.md; docs/architecture.md, "Plugins").

A compiler is one class with `name`, `version` and three methods: `capabilities()`,
`compile()` and `load()`. Everything that crosses the interface is a frozen dataclass, so a
stage's inputs can be hashed and its outputs recorded in the bundle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, static shape and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class QuantizedModel:
    """What the quantizer hands to every compiler.

    `path` is an ONNX file in QDQ format (int8 weights per channel, int8 activations);
    `float_path` is the fp32 model it came from, for compilers that want to quantize or
    convert it their own way. `digest` is the sha256 of the bytes at `path`.
    """

    path: Path
    digest: str
    float_path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class TargetProfile:
    """One hardware target: which compiler builds for it and what it must fit.

    `firmware_revision` is the runtime revision deployed on the target (a dotted version);
    the compiler records the minimum revision its artifact needs, and promotion refuses an
    artifact that needs more. `memory_budget_bytes` of None means no budget.
    """

    name: str
    compiler: str
    firmware_revision: str
    options: Mapping[str, str] = field(default_factory=dict)
    memory_budget_bytes: int | None = None

    def options_digest(self) -> str:
        """sha256 of the options in canonical JSON: part of every artifact id."""
        canonical = json.dumps(dict(self.options), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Capabilities:
    """What a compiler can build, readable without compiling anything.

    `operators` are ONNX op types (domain-qualified as "com.microsoft.QGemm" outside the
    default domain). `input_formats` are among "qdq", "qoperator", "float".
    `firmware_range` is (oldest, newest) firmware revision the compiler can target; newest
    None means no upper bound. `options` maps each option name to its allowed values
    (an empty tuple means free-form).
    """

    operators: frozenset[str]
    input_formats: frozenset[str]
    tensor_dtypes: frozenset[str]
    firmware_range: tuple[str, str | None]
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CompiledArtifact:
    """A compiler's output: files under `directory`, plus what is needed to load them.

    `files` are paths relative to `directory`, sorted. `artifact_id` describes its own
    configuration, e.g. "int8-ref-0.1.0-<options digest[:12]>": every parameter that changes
    the result is in it.
    `minimum_firmware_revision` is the oldest runtime that can run it. `report` holds the
    compiler's own measurements (peak memory bytes, op counts...), JSON-serialisable.
    """

    compiler: str
    compiler_version: str
    artifact_id: str
    directory: Path
    files: tuple[str, ...]
    options: Mapping[str, str]
    target: str
    minimum_firmware_revision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    report: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Runner(Protocol):
    """A loaded artifact. `run` takes and returns arrays keyed by graph tensor name."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class Compiler(Protocol):
    """A compiler plugin (docs/plugins.md), found through the `tapeout.compilers` entry point."""

    name: str
    version: str

    def capabilities(self) -> Capabilities: ...

    def compile(
        self, model: QuantizedModel, target: TargetProfile, workdir: Path
    ) -> CompiledArtifact: ...

    def load(self, artifact: CompiledArtifact) -> Runner: ...
