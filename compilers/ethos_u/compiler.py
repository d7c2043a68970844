"""The `ethos-u` compiler: Arm's Vela compiles the int8 TFLite model for an Ethos-U NPU.

Compiling is two steps: `tapeout.compilers.tflite.convert` turns the QDQ ONNX model into an int8
TFLite model keeping its quantization, then Vela (`ethos-u-vela`, pinned) compiles that for the
chosen accelerator, system config and memory mode. The artifact keeps both `.tflite` files,
Vela's summary and per-layer CSVs, its console output, the `vela.ini` it read and the exact
command with Vela's version.

Every number Vela reports (cycles, inferences per second, SRAM and flash bytes) is a *Vela
estimate* from its performance model, not a measurement: running the NPU binary needs Ethos-U
silicon or Arm's Corstone FVP simulator, neither of which this machine has. The report labels
them so. Vela never fails for lack of memory (it over-allocates and exits 0), so `compile`
checks the SRAM and flash budgets, the ops left on the CPU and the inferences-per-second SLA
itself. The Runner runs the pre-Vela int8 TFLite on the CPU through LiteRT, for accuracy gates.

Imports of the `ethos-u` extra (ethos-u-vela, flatbuffers, ai-edge-litert) happen inside
methods, so this module imports without it.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path

from tapeout.compilers.cost import Cost
from tapeout.compilers.ethos_u.placement import PlacedOperator, model_operators, npu_mac_share, placement
from tapeout.compilers.errors import CompilationFailed, InvalidInput, UnsupportedOperator
from tapeout.compilers.interface import Capabilities, CompiledArtifact, QuantizedModel, TargetProfile
from tapeout.compilers.tflite import FLOAT_OPS
from tapeout.compilers.versions import at_least, parse_version

VELA_VERSION = "5.2.0"
ESTIMATE = "Vela estimate"

INT8_MODEL = "model_int8.tflite"
IO_FILE = "model_int8.io.json"
VELA_MODEL = "model_vela.tflite"
VELA_SUMMARY = "vela_summary.csv"
VELA_PER_LAYER = "vela_per_layer.csv"
VELA_LOG = "vela_output.txt"
VELA_INI = "vela.ini"
VELA_COMMAND = "vela_command.json"
FILES = (INT8_MODEL, IO_FILE, VELA_MODEL, VELA_SUMMARY, VELA_PER_LAYER, VELA_LOG, VELA_INI, VELA_COMMAND)

ACCELERATORS = (
    "ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256",
    "ethos-u65-256", "ethos-u65-512",
    "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048",
)
# Per NPU family: the default system config and memory mode from Vela's Arm/vela.ini, and the
# first Arm Ethos-U software release ("YY.MM", ethos-u-core-driver tags) that drives it.
_FAMILY = {
    "ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram", "20.11"),
    "ethos-u65": ("Ethos_U65_High_End", "Dedicated_Sram", "21.05"),
    "ethos-u85": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB", "24.05"),
}
_OPTIMISE = ("Performance", "Size")
ANY_OP = "*"  # allowed_cpu_ops: every op may fall back to the CPU
_CPU_KERNELS = ("xnnpack", "reference")
_OPTION_NAMES = (
    "accelerator_config", "system_config", "memory_mode", "optimise", "sram_budget_bytes",
    "flash_budget_bytes", "allowed_cpu_ops", "min_inferences_per_second", "cpu_kernels", "float_ops",
)


@dataclass(frozen=True)
class EthosUOptions:
    """The resolved target options, every default written out (none hidden in the code paths)."""

    accelerator_config: str
    system_config: str
    memory_mode: str
    optimise: str
    sram_budget_bytes: int | None
    flash_budget_bytes: int | None
    allowed_cpu_ops: tuple[str, ...]
    min_inferences_per_second: float | None
    cpu_kernels: str
    float_ops: tuple[str, ...]

    @property
    def family(self) -> str:
        return self.accelerator_config.rsplit("-", 1)[0]

    def as_strings(self) -> dict[str, str]:
        return {
            "accelerator_config": self.accelerator_config,
            "system_config": self.system_config,
            "memory_mode": self.memory_mode,
            "optimise": self.optimise,
            "sram_budget_bytes": "" if self.sram_budget_bytes is None else str(self.sram_budget_bytes),
            "flash_budget_bytes": "" if self.flash_budget_bytes is None else str(self.flash_budget_bytes),
            "allowed_cpu_ops": ",".join(self.allowed_cpu_ops),
            "min_inferences_per_second": (
                "" if self.min_inferences_per_second is None else repr(self.min_inferences_per_second)
            ),
            "cpu_kernels": self.cpu_kernels,
            "float_ops": ",".join(self.float_ops),
        }


def vela_ini_path() -> Path:
    """The `vela.ini` shipped in the Vela wheel (system configs and memory modes)."""
    import ethosu.vela

    return Path(ethosu.vela.__file__).parents[1] / "config_files" / "Arm" / "vela.ini"


def _ini_sections(kind: str) -> tuple[str, ...]:
    import configparser

    parser = configparser.ConfigParser()
    parser.read(vela_ini_path())
    prefix = f"{kind}."
    return tuple(s[len(prefix):] for s in parser.sections() if s.startswith(prefix))


def resolve_options(given: Mapping[str, str]) -> EthosUOptions:
    """Validate the target's options and fill in every default.

    The target profile's `memory_budget_bytes` is not an SRAM budget here: the pipeline gates
    `peak_memory_bytes` (Vela's SRAM estimate) against it, as for every compiler, while the
    `sram_budget_bytes` option refuses the compile itself.

    Raises:
        InvalidInput: an unknown option, or a value out of range (names the option, expected
            and found).
    """
    unknown = sorted(set(given) - set(_OPTION_NAMES))
    if unknown:
        raise InvalidInput(
            f"compiler 'ethos-u': unknown option(s) {unknown}; known: {sorted(_OPTION_NAMES)}"
        )
    values = {key: str(value).strip() for key, value in given.items()}

    def bad(option: str, expected: str) -> InvalidInput:
        return InvalidInput(
            f"compiler 'ethos-u': option {option}: expected {expected}, found {values.get(option)!r}"
        )

    accelerator = values.get("accelerator_config", "ethos-u55-128")
    if accelerator not in ACCELERATORS:
        raise bad("accelerator_config", f"one of {list(ACCELERATORS)}")
    family = accelerator.rsplit("-", 1)[0]
    default_system, default_mode, _ = _FAMILY[family]
    system = values.get("system_config", default_system)
    systems = _ini_sections("System_Config")
    if system not in systems:
        raise bad("system_config", f"a system config of Vela's vela.ini {list(systems)}")
    if not system.startswith(family.replace("ethos-u", "Ethos_U")):
        raise bad("system_config", f"a system config for {family} (Ethos_U{family[-2:]}_...)")
    mode = values.get("memory_mode", default_mode)
    modes = _ini_sections("Memory_Mode")
    if mode not in modes:
        raise bad("memory_mode", f"a memory mode of Vela's vela.ini {list(modes)}")
    optimise = values.get("optimise", "Performance")
    if optimise not in _OPTIMISE:
        raise bad("optimise", f"one of {list(_OPTIMISE)}")

    def byte_count(option: str, fallback: int | None) -> int | None:
        text = values.get(option, "")
        if text == "":
            return fallback
        if not text.isdigit() or int(text) < 1:
            raise bad(option, "a positive number of bytes")
        return int(text)

    sram = byte_count("sram_budget_bytes", None)
    flash = byte_count("flash_budget_bytes", None)
    listed = values.get("allowed_cpu_ops", "").split(",")
    allowed = tuple(sorted({op.strip().upper() for op in listed if op.strip()}))
    if allowed != (ANY_OP,) and any(not op.replace("_", "").isalnum() for op in allowed):
        raise bad("allowed_cpu_ops", 'comma-separated TFLite op names such as SOFTMAX,QUANTIZE, or "*" for any')
    sla_text = values.get("min_inferences_per_second", "")
    sla = None
    if sla_text:
        try:
            sla = float(sla_text)
        except ValueError:
            raise bad("min_inferences_per_second", "a positive number") from None
        if not sla > 0:
            raise bad("min_inferences_per_second", "a positive number")
    kernels = values.get("cpu_kernels", "xnnpack")
    if kernels not in _CPU_KERNELS:
        raise bad("cpu_kernels", f"one of {list(_CPU_KERNELS)}")
    listed = {op.strip().upper() for op in values.get("float_ops", "").split(",") if op.strip()}
    float_ops = tuple(sorted(FLOAT_OPS if listed == {ANY_OP} else listed))
    if not set(float_ops) <= set(FLOAT_OPS):
        raise bad("float_ops", f'comma-separated TFLite ops of {list(FLOAT_OPS)}, or "*" for all of them')
    return EthosUOptions(accelerator, system, mode, optimise, sram, flash, allowed, sla, kernels, float_ops)


class EthosUCompiler:
    """Compiler plugin `ethos-u` (docs/plugins.md, docs/ethos-u.md): QDQ ONNX -> int8 TFLite -> Vela."""

    name = "ethos-u"
    version = VELA_VERSION  # the pinned Vela release; compile() checks the installed one

    def capabilities(self) -> Capabilities:
        from tapeout.compilers.tflite import SUPPORTED_OPS

        return Capabilities(
            # The QDQ pairs themselves become the int8 tensors' quantization parameters.
            operators=frozenset(SUPPORTED_OPS | {"QuantizeLinear", "DequantizeLinear"}),
            input_formats=frozenset({"qdq"}),
            tensor_dtypes=frozenset({"int8", "int32"}),
            firmware_range=(min((f[2] for f in _FAMILY.values()), key=parse_version), None),
            options={
                "accelerator_config": ACCELERATORS,
                "system_config": (),
                "memory_mode": (),
                "optimise": _OPTIMISE,
                "sram_budget_bytes": (),
                "flash_budget_bytes": (),
                "allowed_cpu_ops": (),
                "min_inferences_per_second": (),
                "cpu_kernels": _CPU_KERNELS,
                "float_ops": (),
            },
        )

    def compile(
        self, model: QuantizedModel, target: TargetProfile, workdir: Path
    ) -> CompiledArtifact:
        """Convert to int8 TFLite, run Vela, and check its estimates against the budgets.

        Raises:
            InvalidInput: a bad option, a firmware revision too old for the NPU, or the wrong
                Vela installed.
            UnsupportedOperator: a node the TFLite converter cannot lower (named).
            CompilationFailed: Vela fails, an op falls back to the CPU that `allowed_cpu_ops`
                does not allow, the SRAM or flash estimate exceeds its budget, or the
                inferences-per-second estimate is below `min_inferences_per_second`.
        """
        options = self._options(target)
        minimum_firmware = _FAMILY[options.family][2]
        if not at_least(target.firmware_revision, minimum_firmware):
            raise InvalidInput(
                f"target {target.name!r}: firmware_revision {target.firmware_revision} predates "
                f"{options.family} support; Ethos-U software {minimum_firmware} or newer is needed"
            )
        conversion = self._convert(model.path, workdir, options)
        estimates, cpu_ops = self._run_vela(options, workdir)
        macs_total, macs_on_cpu, share = npu_mac_share(workdir / INT8_MODEL, workdir / VELA_MODEL)
        report = {
            "estimate_source": f"{ESTIMATE}: Vela {VELA_VERSION} performance model, not measured "
            "(no Ethos-U silicon or Corstone FVP on the build machine)",
            "vela_estimate": estimates,
            "peak_memory_bytes": estimates["sram_bytes"],
            "peak_memory_source": ESTIMATE,
            "cost": Cost(
                macs=estimates["macs"], bytes_read=estimates["bytes_read"],
                bytes_written=estimates["bytes_written"], batch=model.inputs[0].shape[0] if model.inputs else 1,
                source=f"Vela {VELA_VERSION}'s count of the NPU program: nn_macs and every memory's "
                "feature-map and weight read/write bytes (vela_summary.csv)",
            ).to_report(),
            "tflite_int8_operators": list(conversion.operators),
            # Facts of the placement, not estimates (compilers/ethos_u/placement.py counts MACs).
            "cpu_operators": cpu_ops,
            "macs_total": macs_total,
            "macs_on_cpu": macs_on_cpu,
            "npu_mac_share": share,
            "accelerator_config": options.accelerator_config,
            "system_config": options.system_config,
            "memory_mode": options.memory_mode,
            "runner": f"pre-Vela int8 TFLite on the CPU through LiteRT (kernels={options.cpu_kernels}); "
            "the NPU binary is not run",
            "artifact_size_bytes": (workdir / VELA_MODEL).stat().st_size,
        }
        self._check(options, estimates, cpu_ops)
        return CompiledArtifact(
            compiler=self.name,
            compiler_version=self.version,
            artifact_id=f"{self.name}-{self.version}-{target.options_digest()[:12]}",
            directory=workdir,
            files=tuple(sorted(FILES)),
            options=options.as_strings(),
            target=target.name,
            minimum_firmware_revision=minimum_firmware,
            inputs=model.inputs,
            outputs=model.outputs,
            report=report,
        )

    def placement(self, model_path: Path, options: Mapping[str, str], workdir: Path) -> tuple[PlacedOperator, ...]:
        """Where Vela puts each op of the converted model (NPU or CPU, with MACs and Vela's
        reason), without building an artifact: `tapeout compat --compiler ethos-u` shows it.

        Raises:
            InvalidInput: a bad option or the wrong Vela installed.
            UnsupportedOperator: a node the TFLite converter cannot lower (named).
            CompilationFailed: Vela fails.
        """
        resolved = resolve_options(options)
        self._check_vela()
        self._convert(model_path, workdir, resolved)
        self._run_vela(resolved, workdir)
        return tuple(placement(workdir / INT8_MODEL, workdir / VELA_MODEL, (workdir / VELA_LOG).read_text()))

    def _check_vela(self) -> None:
        try:
            found = installed_version("ethos-u-vela")
        except PackageNotFoundError:
            raise InvalidInput(
                "compiler 'ethos-u' needs the ethos-u extra: pip install 'tapeout[ethos-u]'"
            ) from None
        if found != VELA_VERSION:
            raise InvalidInput(f"compiler 'ethos-u': expected ethos-u-vela {VELA_VERSION}, found {found}")

    def _options(self, target: TargetProfile) -> EthosUOptions:
        self._check_vela()
        return resolve_options(target.options)

    def _convert(self, model_path: Path, workdir: Path, options: EthosUOptions):
        from tapeout.compilers.tflite import convert

        workdir.mkdir(parents=True, exist_ok=True)
        try:
            conversion = convert(model_path, workdir / INT8_MODEL, frozenset(options.float_ops))
        except UnsupportedOperator as error:
            raise UnsupportedOperator(self.name, error.node, error.op_type, error.reason) from error
        (workdir / IO_FILE).write_text(conversion.io_json())
        shutil.copyfile(vela_ini_path(), workdir / VELA_INI)
        return conversion

    def _run_vela(self, options: EthosUOptions, workdir: Path) -> tuple[dict, list[dict]]:
        output_dir = workdir / "vela-output"
        shutil.rmtree(output_dir, ignore_errors=True)
        arguments = [
            INT8_MODEL,
            "--accelerator-config", options.accelerator_config,
            "--config", VELA_INI,
            "--system-config", options.system_config,
            "--memory-mode", options.memory_mode,
            "--optimise", options.optimise,
            "--output-dir", output_dir.name,
            "--show-cpu-operations",
            "--verbose-performance",  # also writes the per-layer CSV
        ]
        completed = subprocess.run(
            [sys.executable, "-m", "ethosu.vela", *arguments],
            cwd=workdir, capture_output=True, text=True, check=False,
        )
        (workdir / VELA_LOG).write_text(completed.stdout + completed.stderr)
        (workdir / VELA_COMMAND).write_text(json.dumps({
            "command": ["vela", *arguments],
            "cwd": "<artifact directory>",
            "vela_version": installed_version("ethos-u-vela"),
            "exit_code": completed.returncode,
        }, indent=2) + "\n")
        if completed.returncode != 0:
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
            raise CompilationFailed(
                f"vela exited {completed.returncode} for {options.accelerator_config}: " + " | ".join(tail)
            )
        stem = Path(INT8_MODEL).stem
        moves = {
            output_dir / f"{stem}_vela.tflite": VELA_MODEL,
            output_dir / f"{stem}_summary_{options.system_config}.csv": VELA_SUMMARY,
            output_dir / f"{stem}_per-layer.csv": VELA_PER_LAYER,
        }
        for source, name in moves.items():
            if not source.exists():
                raise CompilationFailed(f"vela wrote no {source.name} (expected in {output_dir})")
            shutil.move(source, workdir / name)
        shutil.rmtree(output_dir, ignore_errors=True)
        with (workdir / VELA_SUMMARY).open(newline="") as handle:
            summary = next(csv.DictReader(handle))
        cpu_ops = [
            {"op": op, "output": output, "macs": macs}
            for op, output, macs in model_operators(workdir / VELA_MODEL, skip_npu_op=True)
        ]
        kib = 1024.0
        estimates = {
            "label": ESTIMATE,
            "accelerator_config": options.accelerator_config,
            "core_clock_hz": float(summary["core_clock"]),
            "cycles_total": int(float(summary["cycles_total"])),
            "cycles_npu": int(float(summary["cycles_npu"])),
            "inference_time_s": float(summary["inference_time"]),
            "inferences_per_second": float(summary["inferences_per_second"]),
            "sram_bytes": int(round(float(summary["sram_memory_used"]) * kib)),
            "flash_bytes": int(round(
                (float(summary["on_chip_flash_memory_used"])
                 + float(summary["off_chip_flash_memory_used"])) * kib
            )),
            "dram_bytes": int(round(float(summary["dram_memory_used"]) * kib)),
            "weights_storage_area": summary["weights_storage_area"],
            "macs": int(float(summary["nn_macs"])),
            # Traffic per memory (sram, dram, on/off-chip flash) and kind (feature map, weight).
            "bytes_read": sum(int(float(value)) for key, value in summary.items() if key.endswith("_read_bytes")),
            "bytes_written": sum(int(float(value)) for key, value in summary.items() if key.endswith("_write_bytes")),
            "npu_passes": int(float(summary["passes_after_fusing"])),
            "cpu_operators": [op["op"] for op in cpu_ops],
        }
        return estimates, cpu_ops

    def _check(self, options: EthosUOptions, estimates: dict, cpu_ops: list[dict]) -> None:
        if options.allowed_cpu_ops == (ANY_OP,):
            return self._check_budgets(options, estimates)
        refused = [op for op in cpu_ops if op["op"] not in options.allowed_cpu_ops]
        if refused:
            listed = ", ".join(f"{op['op']} (output {op['output']!r})" for op in refused)
            allowed = (
                f" or in allowed_cpu_ops {list(options.allowed_cpu_ops)}" if options.allowed_cpu_ops else ""
            )
            raise CompilationFailed(
                f"{options.accelerator_config}: expected every op on the NPU{allowed}, "
                f"found on the CPU: {listed}"
            )
        self._check_budgets(options, estimates)

    def _check_budgets(self, options: EthosUOptions, estimates: dict) -> None:
        for what, budget, used in (
            ("SRAM", options.sram_budget_bytes, estimates["sram_bytes"]),
            ("flash", options.flash_budget_bytes, estimates["flash_bytes"]),
        ):
            if budget is not None and used > budget:
                raise CompilationFailed(
                    f"{options.accelerator_config} ({options.system_config}, {options.memory_mode}): "
                    f"{what} budget exceeded: expected at most {budget} bytes, found {used} bytes "
                    f"({ESTIMATE}; Vela itself over-allocates without failing)"
                )
        sla = options.min_inferences_per_second
        if sla is not None and estimates["inferences_per_second"] < sla:
            raise CompilationFailed(
                f"{options.accelerator_config}: inferences per second below the SLA: expected at "
                f"least {sla:g}, found {estimates['inferences_per_second']:.1f} ({ESTIMATE})"
            )

    def load(self, artifact: CompiledArtifact) -> "EthosURunner":
        return EthosURunner(artifact)


class EthosURunner:
    """Runs the artifact's pre-Vela int8 TFLite on the CPU through LiteRT (not the NPU binary:
    that needs Ethos-U silicon or Arm's FVP). Float32 NCHW in and out, keyed by ONNX names."""

    def __init__(self, artifact: CompiledArtifact) -> None:
        from tapeout.compilers.tflite import read_edges
        from tapeout.compilers.tflite.runner import TfliteRunner

        inputs, outputs = read_edges((artifact.directory / IO_FILE).read_text())
        kernels = dict(artifact.options).get("cpu_kernels", "xnnpack")
        self._runner = TfliteRunner(artifact.directory / INT8_MODEL, inputs, outputs, kernels)

    def run(self, inputs: Mapping[str, object]) -> dict[str, object]:
        return self._runner.run(inputs)
