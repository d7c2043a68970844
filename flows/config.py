"""The pipeline config (`pipeline.yaml`): parsed with pyyaml, validated into typed objects.

Every error names the file, the line, the field, what was expected and what was found. Paths
in the file are relative to the file's own folder.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.frontends import OnnxSource, PyTorchSource, SklearnSource, external_data_files
from tapeout.compilers.interface import TargetProfile, TensorSpec
from tapeout.compilers.versions import parse_version

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)]
GATE_METRICS = (
    "accuracy",
    "accuracy_drop",
    "top1_agreement",
    "latency_p50_ms",
    "latency_p95_ms",
    "artifact_size_bytes",
    # the evaluation's further metrics (flows/evaluate.py measures them)
    "accuracy_drop_relative",
    "output_sqnr_db",
    "output_cosine",
    "latency_p99_ms",
    "warmup_ms",
    "throughput_per_s",
    "peak_memory_bytes",
    "compile_seconds",
    "energy_per_inference_uj_estimate",  # an estimate from the target's cost_model (flows/energy.py)
    "npu_mac_share",  # reported by a compiler that places ops on an NPU or a host CPU (ethos-u)
)


class ConfigError(InvalidInput):
    """A pipeline config field is wrong: file, line, field, expected and found."""

    def __init__(self, path: Path, line: int | None, field: str, message: str) -> None:
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PyTorchSourceConfig(_Strict):
    factory: Annotated[str, StringConstraints(pattern=r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")] = Field(
        description="FILE.py:FUNCTION returning a torch.nn.Module"
    )
    weights: str = Field(description="state dict file, loaded with weights_only=True")


class SklearnSourceConfig(_Strict):
    factory: Annotated[str, StringConstraints(pattern=r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")] = Field(
        description="FILE.py:FUNCTION returning a fitted scikit-learn estimator (exported by skl2onnx)"
    )


class ModelSourceConfig(_Strict):
    pytorch: PyTorchSourceConfig | None = None
    onnx: str | None = None
    sklearn: SklearnSourceConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelSourceConfig":
        given = [self.pytorch, self.onnx, self.sklearn]
        if sum(value is not None for value in given) != 1:
            raise ValueError("expected exactly one of 'pytorch' or 'onnx' or 'sklearn'")
        return self


class InputConfig(_Strict):
    name: str
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    dtype: Literal["float32"] = "float32"


class ModelConfig(_Strict):
    name: Name
    source: ModelSourceConfig
    inputs: list[InputConfig] = Field(min_length=1)
    outputs: list[str] = Field(default_factory=list)


class CalibrationConfig(_Strict):
    set: str
    method: Literal["minmax", "entropy", "percentile", "mse"] = "minmax"
    samples: int = Field(default=1, ge=1, description="the set must hold at least this many")
    embed_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="a larger set is stored once in the artifact store and bundles hold a signed "
        "pointer to it (tapeout.artifacts.set_store); 0 stores every set",
    )


class ValidationConfig(_Strict):
    set: str
    labels: str = "label"
    metric: Literal["top1_accuracy"] = "top1_accuracy"


class Threshold(_Strict):
    """A gate bound: `max` for metrics that must stay low, `min` for those that must stay high."""

    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> "Threshold":
        if (self.max is None) == (self.min is None):
            raise ValueError("expected exactly one of 'max' or 'min'")
        return self


Gates = dict[Literal[GATE_METRICS], Threshold]  # type: ignore[valid-type]


class CostModel(_Strict):
    """The target's energy cost model: what the energy *estimate* is computed from."""

    energy_per_mac_pj: float = Field(gt=0, description="picojoules per int8 multiply-accumulate")
    energy_per_byte_pj: float = Field(ge=0, description="picojoules per byte moved to or from memory")


class TargetConfig(_Strict):
    name: Name
    compiler: str
    firmware_revision: str
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    memory_budget_bytes: int | None = Field(default=None, ge=1)
    gates: Gates | None = Field(default=None, description="replaces the pipeline's gates")
    cost_model: CostModel | None = Field(default=None, description="for the energy estimate gate")

    @field_validator("firmware_revision")
    @classmethod
    def _is_version(cls, value: str) -> str:
        try:
            parse_version(value, "firmware_revision")
        except InvalidInput as error:
            raise ValueError(str(error)) from None
        return value


class SigningConfig(_Strict):
    """How bundles are signed (docs/trust.md): `key` (offline default), `certificate` (key + leaf
    certificate + chain) or `sigstore` (keyless, CI's ambient OIDC identity)."""

    method: Literal["key", "certificate", "sigstore"] = "key"
    private_key: str | None = Field(
        default=None, description="key/certificate: EC private key; key default: <home>/keys/signing-key.pem"
    )
    certificate: str | None = Field(default=None, description="certificate: the leaf certificate (PEM)")
    certificate_chain: list[str] = Field(
        default_factory=list, description="certificate: intermediate (and root) certificates (PEM)"
    )
    trust_config: str | None = Field(
        default=None, description="sigstore: ClientTrustConfig JSON (default: the one shipped with tapeout)"
    )
    oidc_issuer: str | None = Field(default=None, description="sigstore: OIDC issuer (default: the trust config's)")
    policy: str | None = Field(
        default=None, description="trust policy YAML the build's own signature must satisfy before registering"
    )

    @model_validator(mode="after")
    def _fields_fit_method(self) -> "SigningConfig":
        certificate_fields = self.certificate is not None or bool(self.certificate_chain)
        keyless_fields = self.trust_config is not None or self.oidc_issuer is not None
        if self.method == "certificate" and (self.private_key is None or self.certificate is None):
            raise ValueError("method certificate needs 'private_key' and 'certificate'")
        if self.method != "certificate" and certificate_fields:
            raise ValueError(f"'certificate' and 'certificate_chain' need method certificate, not {self.method}")
        if self.method != "sigstore" and keyless_fields:
            raise ValueError(f"'trust_config' and 'oidc_issuer' need method sigstore, not {self.method}")
        if self.method == "sigstore" and self.private_key is not None:
            raise ValueError("method sigstore is keyless: remove 'private_key'")
        return self


class FallbackConfig(_Strict):
    """The accuracy-aware fallback (tapeout.flows.fallback): when an accuracy gate fails, keep
    the most sensitive layers out of int8, trying at most `budget` re-quantizations."""

    enabled: bool = True
    budget: int = Field(default=4, ge=0, le=64, description="re-quantizations per target, at most")


class SensitivityConfig(_Strict):
    """Per-layer sensitivity (tapeout.flows.sensitivity), on the validation set."""

    samples: int = Field(default=200, ge=1, description="validation samples used, at most")
    top_k: int = Field(default=3, ge=0, description="layers measured by re-quantizing (the expensive metric)")


class RegistryConfig(_Strict):
    tracking_uri: str | None = Field(default=None, description="default: sqlite:///<home>/mlflow.db")
    stage_store: bool | None = Field(
        default=None,
        description="keep stage outputs in the artifact store too, for workers with disks of their own "
        "(artifacts/stage_store.py); default: with a tracking server (http, https), not with a local store",
    )


class RunnerConfig(_Strict):
    """Where the targets run (tapeout.flows.runners): threads of the build's process, or the
    workers of a Dask scheduler. Not part of the config digest: it changes no built byte."""

    dask_scheduler: Annotated[str, StringConstraints(pattern=r"^(tcp|tls)://[^\s/]+:[0-9]+$")] | None = Field(
        default=None, description="tcp://HOST:PORT of a distributed scheduler; default: threads of the build process"
    )


class PipelineConfig(_Strict):
    model: ModelConfig
    calibration: CalibrationConfig
    validation: ValidationConfig
    targets: list[TargetConfig] = Field(min_length=1)
    gates: Gates = Field(default_factory=dict)
    signing: SigningConfig = SigningConfig()
    registry: RegistryConfig = RegistryConfig()
    fallback: FallbackConfig = FallbackConfig()
    sensitivity: SensitivityConfig = SensitivityConfig()
    runner: RunnerConfig = RunnerConfig()

    @model_validator(mode="after")
    def _unique_targets(self) -> "PipelineConfig":
        names = [target.name for target in self.targets]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"target names must be unique, found {duplicates} more than once")
        return self


class Pipeline:
    """A loaded pipeline: the validated config plus the folder its paths are relative to."""

    def __init__(self, path: Path, config: PipelineConfig, text: str) -> None:
        self.path = path
        self.config = config
        self.text = text
        self.base = path.parent

    def resolve(self, relative: str) -> Path:
        return (self.base / relative).resolve()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(item.name, tuple(item.shape), item.dtype) for item in self.config.model.inputs
        )

    @property
    def batch_size(self) -> int:
        return self.config.model.inputs[0].shape[0]

    def model_source(self) -> PyTorchSource | OnnxSource | SklearnSource:
        source = self.config.model.source
        if source.onnx is not None:
            return OnnxSource(self.resolve(source.onnx))
        if source.sklearn is not None:
            file_name, function = source.sklearn.factory.rsplit(":", 1)
            return SklearnSource(self.resolve(file_name), function)
        assert source.pytorch is not None  # guaranteed by ModelSourceConfig._exactly_one
        file_name, function = source.pytorch.factory.rsplit(":", 1)
        return PyTorchSource(self.resolve(file_name), function, self.resolve(source.pytorch.weights))

    def input_files(self) -> dict[str, Path]:
        """Every file a build reads, by the config field that names it ("pipeline": this
        file): the model source, weights and factory module, and the two sample sets. A build
        is dirty when one of them differs from the commit (tapeout.flows.source)."""
        source = self.config.model.source
        files = {"pipeline": self.path}
        if source.onnx is not None:
            files["model.source.onnx"] = self.resolve(source.onnx)
            try:
                weights = external_data_files(files["model.source.onnx"])
            except InvalidInput:
                weights = ()  # the export names the problem
            for index, path in enumerate(weights):
                files[f"model.source.onnx (external weights {index + 1})"] = path
        if source.pytorch is not None:
            files["model.source.pytorch.factory"] = self.resolve(source.pytorch.factory.rsplit(":", 1)[0])
            files["model.source.pytorch.weights"] = self.resolve(source.pytorch.weights)
        if source.sklearn is not None:
            files["model.source.sklearn.factory"] = self.resolve(source.sklearn.factory.rsplit(":", 1)[0])
        files["calibration.set"] = self.resolve(self.config.calibration.set)
        files["validation.set"] = self.resolve(self.config.validation.set)
        return files

    def line_of(self, field: str) -> int | None:
        """The line of a dotted field (`targets[1].compiler`) in the file, where it is written."""
        location = tuple(
            int(part) if part.isdigit() else part
            for part in field.replace("[", ".").replace("]", "").split(".")
        )
        return _line_of(yaml.compose(self.text, Loader=yaml.SafeLoader), location)

    def target_profile(self, target: TargetConfig) -> TargetProfile:
        return TargetProfile(
            name=target.name,
            compiler=target.compiler,
            firmware_revision=target.firmware_revision,
            options={key: _option_text(value) for key, value in target.options.items()},
            memory_budget_bytes=target.memory_budget_bytes,
        )

    def gates_for(self, target: TargetConfig) -> dict[str, Threshold]:
        """The target's gates (its own, else the pipeline's). A target with a
        `memory_budget_bytes` also gates `peak_memory_bytes` at that budget, unless it sets
        that gate itself: a budget nothing checks would be a comment, and a compiler that
        cannot report its peak then fails the gate as "not measured" instead of passing."""
        gates = dict(target.gates if target.gates is not None else self.config.gates)
        if target.memory_budget_bytes is not None and "peak_memory_bytes" not in gates:
            gates["peak_memory_bytes"] = Threshold(max=float(target.memory_budget_bytes))
        return gates

    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in, as plain data (goes into the bundle), but
        where the targets run: threads or Dask workers build the same bytes."""
        return self.config.model_dump(mode="json", exclude={"runner"})

    def digest(self, target: TargetConfig | None = None) -> str:
        """sha256 of the resolved config; with `target`, of everything that builds that target.

        Two commits whose configs differ only in another target's section give the same
        per-target digest, so only the changed target is rebuilt.
        """
        document = self.resolved()
        if target is not None:
            document["targets"] = [target.model_dump(mode="json")]
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def load_pipeline(path: Path) -> Pipeline:
    """Read and validate a pipeline file.

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or a field is unknown,
            missing or of the wrong type/value.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(path, None, "", f"cannot read the pipeline file ({error.strerror})") from error
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ConfigError(
            path, line, "", f"not UTF-8 text: byte 0x{error.object[error.start]:02x} at offset {error.start}"
        ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(path, line, "", f"not valid YAML: {problem}") from error
    except RecursionError:
        raise ConfigError(path, None, "", "not a pipeline: the YAML is nested too deeply") from None
    if not isinstance(document, dict):
        raise ConfigError(path, 1, "", f"expected a mapping at the top, found {type(document).__name__}")
    try:
        config = PipelineConfig.model_validate(document)
    except ValidationError as error:
        # A misspelled key is reported as itself, not as the field it was meant to be (which
        # pydantic also reports, as missing).
        errors = error.errors()
        first = next((item for item in errors if item["type"] == "extra_forbidden"), errors[0])
        location = tuple(first["loc"])
        raise ConfigError(
            path, _line_of(root, location), _dotted(location), _explain(first)
        ) from None
    return Pipeline(path.resolve(), config, text)


def _explain(error: dict[str, Any]) -> str:
    found = error.get("input")
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        location = tuple(error["loc"])
        fields = _fields_at(location[:-1])
        close = difflib.get_close_matches(str(location[-1]), fields, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field{hint}; expected one of: {', '.join(fields)}" if fields else "unknown field"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(found, (dict, list)):
        return message
    return f"{message} (found {found!r})"


def _fields_at(location: tuple[Any, ...]) -> list[str]:
    """The field names of the config section at `location`, following sections, list items,
    mapping values (a gate's threshold) and optional values."""
    annotation: Any = PipelineConfig
    for part in location:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field is not None else None
        elif get_origin(annotation) in (list, dict):
            annotation = get_args(annotation)[-1]  # a list's item, a mapping's value
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`X | None` → X."""
    arguments = [item for item in get_args(annotation) if item is not type(None)]
    if get_origin(annotation) not in (list, dict) and len(arguments) == 1:
        return arguments[0]
    return annotation


def _dotted(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(node: yaml.Node | None, location: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node on `location` that exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in location:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _option_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
