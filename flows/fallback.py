"""The accuracy-aware fallback: when an accuracy gate fails, keep the most sensitive layers
out of int8, in a bounded search, and stop at the smallest set that passes every gate.

Each target decides for itself, from its compiler's capabilities (data, read without compiling):

- `fp32`: the compiler takes float ops (`"float"` in `input_formats`, e.g. `onnxruntime`):
  layers are kept in fp32 (tapeout.flows.sensitivity.keep_out).
- `int16`: an integer-only compiler that declares `int16` tensors (`int8-ref`): the layers'
  output activations are quantized to int16 instead of int8 (ONNX Runtime's mixed precision,
  `calibration.quantizer.quantize(int16_activations=...)`), with the same calibrated ranges.
- neither (e.g. `ethos-u`): no attempt is possible; the target fails with its plain numbers
  and the report says why.

The candidates come from the sensitivity analysis (`Sensitivity.ranked()`): attempt k adds the
next ranked layer to those kept out, k = 1 … budget (each attempt is one re-quantization, one
compile and one evaluation, outside the stage cache). A layer whose attempt cannot be built (the
quantizer cannot widen that tensor, the compiler refuses it) is recorded and left out of later
attempts. Attempts need every gate to pass, not only the accuracy ones. Every attempt is
recorded; the bundle's reports/fallback.json says which layers were kept out and why; if none
passes, the best attempt's numbers are the run's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tapeout.compilers.errors import TapeoutError
from tapeout.compilers.interface import Capabilities, CompiledArtifact, QuantizedModel, TargetProfile
from tapeout.flows.gates import GateResult
from tapeout.flows.sensitivity import Sensitivity, keep_out, layers_by_node

if TYPE_CHECKING:  # annotations only: the stages import the whole pipeline's libraries
    from tapeout.flows.stages import SharedStages

SCHEMA = "tapeout.fallback/v1"
ACCURACY_METRICS = frozenset({"accuracy", "accuracy_drop", "top1_agreement", "output_sqnr_db", "output_cosine"})


def fallback_mode(capabilities: Capabilities) -> tuple[str | None, str]:
    """How a compiler can keep a layer out of int8, and why (from its capabilities only)."""
    if "float" in capabilities.input_formats and "float32" in capabilities.tensor_dtypes:
        return "fp32", "the compiler runs float ops: sensitive layers are kept in fp32"
    if "int16" in capabilities.tensor_dtypes:
        return "int16", (
            "the compiler is integer-only but runs int16 activations: sensitive layers' outputs "
            "are quantized to int16 instead of int8"
        )
    return None, (
        "the compiler is integer-only (input formats "
        f"{sorted(capabilities.input_formats)}, tensor dtypes {sorted(capabilities.tensor_dtypes)}): "
        "it can run neither fp32 layers nor int16 activations, so no layer can be kept out of int8"
    )


def plain_representation(capabilities: Capabilities) -> str:
    """What a compiler's artifact computes in with no layer kept out: int8 for a compiler of
    the quantized model, else the float type it converts the fp32 model to (fp16, fp32)."""
    if capabilities.input_formats & {"qdq", "qoperator"}:
        return "int8"
    return "fp16" if "float16" in capabilities.tensor_dtypes else "fp32"


@dataclass(frozen=True)
class Attempt:
    """One quantization of the model: which layers were kept out, and how it gated."""

    index: int
    kept_out: tuple[str, ...]
    representation: str  # "int8" for the plain model, else the fallback mode ("fp32", "int16")
    quantized_sha256: str | None
    metrics: dict[str, float]
    gates: tuple[GateResult, ...]
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.gates) and all(gate.passed for gate in self.gates)

    def score(self) -> tuple:
        """Best first when sorted descending: gates passed, then agreement, then accuracy."""
        metrics = self.metrics
        return (
            self.error is None,
            sum(gate.passed for gate in self.gates),
            metrics.get("top1_agreement", 0.0),
            -metrics.get("accuracy_drop", 1.0),
            -len(self.kept_out),
        )

    def to_document(self) -> dict[str, object]:
        return {
            "attempt": self.index,
            "kept_out": list(self.kept_out),
            "representation": self.representation,
            "quantized_model_sha256": self.quantized_sha256,
            "passed": self.passed,
            "error": self.error,
            "metrics": dict(self.metrics),
            "gates": [
                {"metric": g.metric, "bound": g.bound, "threshold": g.threshold, "observed": g.observed, "passed": g.passed}
                for g in self.gates
            ],
        }


@dataclass(frozen=True)
class FallbackResult:
    """The search's outcome. `chosen` is the index of the passing attempt (None: none passed);
    `best` is the attempt whose numbers the run reports. `quantized`, `artifact`, `gated` are
    the objects of `best` (the plain ones when it is attempt 0)."""

    mode: str | None
    reason: str
    budget: int
    attempts: tuple[Attempt, ...]
    chosen: int | None
    best: int
    reasons: dict[str, str] = field(default_factory=dict)  # node → why it was kept out
    quantized: QuantizedModel | None = None
    artifact: CompiledArtifact | None = None
    gated: object | None = None

    @property
    def passed(self) -> bool:
        return self.chosen is not None

    @property
    def kept_out(self) -> tuple[str, ...]:
        return self.attempts[self.best].kept_out

    def to_document(self) -> dict[str, object]:
        best = self.attempts[self.best]
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "why_this_mode": self.reason,
            "budget": self.budget,
            "attempts_made": len(self.attempts) - 1,
            "verdict": "pass" if self.passed else "fail",
            "chosen_attempt": self.chosen,
            "best_attempt": self.best,
            "kept_out": [
                {"node": node, "representation": best.representation, "why": self.reasons.get(node, "")}
                for node in best.kept_out
            ],
            "attempts": [attempt.to_document() for attempt in self.attempts],
        }

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_document(), indent=2, sort_keys=True) + "\n")
        return path


def accuracy_gate_failed(gates: tuple[GateResult, ...]) -> bool:
    return any(not gate.passed and gate.metric in ACCURACY_METRICS for gate in gates)


def _why(sensitivity: Sensitivity, node: str) -> str:
    layer = next(layer for layer in sensitivity.layers if layer.node == node)
    text = (
        f"{layer.op_type} {node}: output SQNR {layer.sqnr_db:.1f} dB, median channel SQNR "
        f"{layer.channel_sqnr_db:.1f} dB, adds {layer.sqnr_drop_db:.1f} dB of loss"
    )
    if layer.agreement_gain is not None:
        text += f"; alone in fp32 it moves top-1 agreement by {layer.agreement_gain:+.3f}"
    return text + f" ({sensitivity.data_name}, {sensitivity.samples_used} samples)"


def search(
    *,
    float_path: Path,
    table,
    quantized: QuantizedModel,
    artifact: CompiledArtifact,
    gated,
    sensitivity: Sensitivity,
    profile: TargetProfile,
    capabilities: Capabilities,
    budget: int,
    attempt_fn: Callable[[QuantizedModel, Path], tuple[CompiledArtifact, object]],
    workdir: Path,
    progress: Callable[[str], None] = lambda message: None,
) -> FallbackResult:
    """Keep one more ranked layer out of int8 per attempt, at most `budget` attempts, until
    every gate passes. `attempt_fn(quantized, workdir)` compiles and evaluates one attempt and
    returns (artifact, gated) — `gated` has `.evaluation.metrics`, `.gates` and `.passed`."""
    plain = Attempt(
        0, (), plain_representation(capabilities), quantized.digest, dict(gated.evaluation.metrics), tuple(gated.gates)
    )
    attempts = [plain]
    objects: dict[int, tuple[QuantizedModel, CompiledArtifact, object]] = {0: (quantized, artifact, gated)}
    mode, reason = fallback_mode(capabilities)
    ranked = [layer.node for layer in sensitivity.ranked()]
    reasons = {node: _why(sensitivity, node) for node in ranked}
    chosen = None
    if mode is not None:
        layers = layers_by_node(float_path, quantized.path)
        candidates = [node for node in ranked if node in layers]
        planned = min(budget, len(candidates))
        kept: list[str] = []
        for index, node in enumerate(candidates[:planned], start=1):
            trial = (*kept, node)
            folder = workdir / f"attempt-{index}"
            where = f"[{profile.name}] fallback attempt {index}/{planned}"
            progress(f"{where}: {', '.join(trial)} in {mode}, adding {reasons[node]}")
            try:
                model = _requantize(
                    mode, float_path, table, [layers[name] for name in trial], quantized, folder / "model.qdq.onnx"
                )
                compiled, result = attempt_fn(model, folder / "compiled")
            except TapeoutError as error:  # recorded; later attempts go on without this layer
                progress(f"{where}: {node} dropped, later attempts go on without it: it cannot be built in {mode} ({error})")
                attempts.append(Attempt(index, trial, mode, None, {}, (), error=str(error)))
                continue
            kept.append(node)
            attempt = Attempt(index, trial, mode, model.digest, dict(result.evaluation.metrics), tuple(result.gates))
            attempts.append(attempt)
            objects[index] = (model, compiled, result)
            if attempt.passed:
                chosen = index
                break
            failing = "; ".join(gate.describe() for gate in attempt.gates if not gate.passed)
            progress(f"{where}: still failing: {failing}")
    best = chosen if chosen is not None else max(attempts, key=Attempt.score).index
    model, compiled, result = objects[best]
    return FallbackResult(
        mode, reason, budget, tuple(attempts), chosen, best, reasons, model, compiled, result
    )


def _requantize(mode: str, float_path: Path, table, layers, quantized: QuantizedModel, output_path: Path) -> QuantizedModel:
    """The model with `layers` kept out of int8 the way `mode` says."""
    if mode == "fp32":
        return keep_out(
            float_path, table, layers, inputs=quantized.inputs, outputs=quantized.outputs, output_path=output_path
        )
    from tapeout.calibration.quantizer import quantize

    return quantize(
        float_path, table, inputs=quantized.inputs, outputs=quantized.outputs, output_path=output_path,
        int16_activations=tuple(layer.float_tensor for layer in layers),
    )


def repair_target(
    pipeline, target, profile: TargetProfile, shared: SharedStages, artifact: CompiledArtifact, gated, workdir: Path,
    progress,
):
    """The pipeline's hook (flows/pipeline.build_target): when an accuracy gate failed and the
    fallback is enabled, search; returns (quantized, artifact, gated, fallback document or
    None) — the chosen attempt's, else the best attempt's."""
    from tapeout.compilers.registry import load_compiler
    from tapeout.flows import stages

    quantized = shared.quantized
    settings = pipeline.config.fallback
    document = shared.sensitivity
    if gated.passed or not settings.enabled or not accuracy_gate_failed(gated.gates) or document is None:
        return quantized, artifact, gated, None

    def attempt(model: QuantizedModel, folder: Path):
        compiled = stages.compile_stage(model, profile, folder)
        evaluation = stages.evaluate_stage(compiled, shared.validation, shared.reference)
        return compiled, stages.gate_stage(pipeline, target, evaluation, model, compiled)

    result = search(
        float_path=shared.model.path, table=shared.calibrated.table, quantized=quantized,
        artifact=artifact, gated=gated, sensitivity=Sensitivity.from_document(document), profile=profile,
        capabilities=load_compiler(profile.compiler).capabilities(), budget=settings.budget,
        attempt_fn=attempt, workdir=workdir, progress=progress,
    )
    if result.passed:
        progress(f"[{target.name}] fallback passed with {', '.join(result.kept_out)} in {result.mode}")
    else:
        progress(f"[{target.name}] fallback found no passing attempt: {result.reason}")
    return result.quantized, result.artifact, result.gated, result.to_document()
