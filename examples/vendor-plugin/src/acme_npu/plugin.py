"""The tapeout plugin `acme-npu`: runs the vendor's `acme-npuc` and packages what it wrote.

What tapeout needs from any command-line toolchain, done here once:
- the exact command, the toolchain's own version and its exit code go into `toolchain.json`,
  and everything it printed into `toolchain.log`: both are artifact files, so they are copied
  into the bundle and signed with it;
- the toolchain runs with a timeout (`timeout_seconds`); when it expires, the process is
  killed and the failure names the toolchain, the timeout and the last lines it printed;
- its diagnostics become tapeout errors: `ACME-E104` (an op it cannot map) is an
  UnsupportedOperator naming the node, any other failure a CompilationFailed carrying the
  diagnostic line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acme_npu.toolchain import HOST_OPS, NPU_OPS, VERSION
from tapeout.compilers.errors import CompilationFailed, InvalidInput, UnsupportedOperator
from tapeout.compilers.interface import Capabilities, CompiledArtifact, QuantizedModel, TargetProfile

BLOB = "model.acme"
LOG = "toolchain.log"
COMMAND = "toolchain.json"
MINIMUM_FIRMWARE = "3.0"  # the ACME runtime release that reads blob format 1
_OPTION_NAMES = ("toolchain", "timeout_seconds", "sram_kib")
_UNSUPPORTED = re.compile(r"ACME-E104: node '(?P<node>[^']*)' \(op (?P<op>[^)]*)\)")


@dataclass(frozen=True)
class AcmeOptions:
    toolchain: str
    timeout_seconds: float
    sram_kib: int

    def recorded(self) -> dict[str, str]:
        # The toolchain's path is where it was found, not what it does: it stays out of the
        # artifact id (its version is recorded instead).
        return {"timeout_seconds": f"{self.timeout_seconds:g}", "sram_kib": str(self.sram_kib)}


def resolve_options(given: Mapping[str, str]) -> AcmeOptions:
    """Raises InvalidInput on an unknown option or a bad value."""
    unknown = sorted(set(given) - set(_OPTION_NAMES))
    if unknown:
        raise InvalidInput(f"compiler 'acme-npu': unknown option(s) {unknown}; known: {sorted(_OPTION_NAMES)}")
    timeout_text = str(given.get("timeout_seconds", "300"))
    try:
        timeout = float(timeout_text)
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise InvalidInput(
            f"compiler 'acme-npu': option timeout_seconds: expected a positive number, found {timeout_text!r}"
        )
    sram = str(given.get("sram_kib", "512"))
    if not sram.isdigit() or int(sram) < 1:
        raise InvalidInput(f"compiler 'acme-npu': option sram_kib: expected a positive integer, found {sram!r}")
    return AcmeOptions(str(given.get("toolchain", "")), timeout, int(sram))


class AcmeNpuCompiler:
    """Compiler plugin `acme-npu` (tapeout's docs/plugins.md), registered through the entry point."""

    name = "acme-npu"
    version = VERSION  # the acme-npuc release this plugin is built for; compile() checks it

    def capabilities(self) -> Capabilities:
        return Capabilities(
            operators=NPU_OPS | HOST_OPS,
            input_formats=frozenset({"qdq"}),
            tensor_dtypes=frozenset({"int8", "int32"}),
            firmware_range=(MINIMUM_FIRMWARE, None),
            options={"toolchain": (), "timeout_seconds": (), "sram_kib": ()},
        )

    def compile(self, model: QuantizedModel, target: TargetProfile, workdir: Path) -> CompiledArtifact:
        """Run `acme-npuc` on the QDQ model.

        Raises:
            InvalidInput: a bad option, or the toolchain is missing or of another version.
            UnsupportedOperator: the toolchain reported a node it cannot map (ACME-E104).
            CompilationFailed: the toolchain timed out, or failed for another reason (its
                diagnostic line is in the message and its log in `toolchain.log`).
        """
        options = resolve_options(target.options)
        command = self._command(options)
        found = self._toolchain_version(command, options.timeout_seconds)
        if found != VERSION:
            raise InvalidInput(f"compiler 'acme-npu': expected acme-npuc {VERSION}, found {found!r}")
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.path, workdir / "input.onnx")
        arguments = ["input.onnx", "-o", BLOB, "--sram-kib", str(options.sram_kib)]
        try:
            # One stream, as a terminal would show it: the log keeps the toolchain's order.
            completed = subprocess.run(
                [*command, *arguments], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, timeout=options.timeout_seconds, check=False,
            )
            output, exit_code = completed.stdout, completed.returncode
        except subprocess.TimeoutExpired as expired:
            output, exit_code = _text(expired.stdout), None
        finally:
            (workdir / "input.onnx").unlink(missing_ok=True)
        (workdir / LOG).write_text(output)
        (workdir / COMMAND).write_text(json.dumps({
            "command": ["acme-npuc", *arguments],
            "cwd": "<artifact directory>",
            "toolchain_version": found,
            "exit_code": exit_code,
            "timeout_seconds": options.timeout_seconds,
        }, indent=2, sort_keys=True) + "\n")
        lines = output.strip().splitlines()
        if exit_code is None:
            tail = " | ".join(lines[-3:]) or "no output"
            raise CompilationFailed(
                f"compiler 'acme-npu': acme-npuc {found} did not finish within "
                f"{options.timeout_seconds:g} s (option timeout_seconds) and was killed; "
                f"last output: {tail}; log: {workdir / LOG}"
            )
        if exit_code != 0:
            diagnostic = next(
                (line.strip() for line in lines if line.startswith("error:")), lines[-1] if lines else "no output"
            )
            match = _UNSUPPORTED.search(diagnostic)
            if match:
                raise UnsupportedOperator(self.name, match["node"], match["op"], f"acme-npuc: {diagnostic}")
            raise CompilationFailed(
                f"compiler 'acme-npu': acme-npuc {found} exited {exit_code}: {diagnostic}; log: {workdir / LOG}"
            )
        if not (workdir / BLOB).is_file():
            raise CompilationFailed(f"compiler 'acme-npu': acme-npuc exited 0 but wrote no {BLOB}")
        from acme_npu.blob import unpack

        header, _ = unpack((workdir / BLOB).read_bytes())
        return CompiledArtifact(
            compiler=self.name,
            compiler_version=found,
            artifact_id=f"{self.name}-{found}-{target.options_digest()[:12]}",
            directory=workdir,
            files=tuple(sorted((BLOB, LOG, COMMAND))),
            options=options.recorded(),
            target=target.name,
            minimum_firmware_revision=MINIMUM_FIRMWARE,
            inputs=model.inputs,
            outputs=model.outputs,
            report={
                "artifact_size_bytes": (workdir / BLOB).stat().st_size,
                "peak_memory_bytes": header["sram_bytes"],
                "npu_ops": header["npu_ops"],
                "host_ops": header["host_ops"],
                "toolchain_log": LOG,
            },
        )

    def load(self, artifact: CompiledArtifact) -> "AcmeRunner":
        return AcmeRunner(artifact.directory / BLOB)

    @staticmethod
    def _command(options: AcmeOptions) -> list[str]:
        if options.toolchain:
            path = Path(options.toolchain)
            if not path.is_file():
                raise InvalidInput(f"compiler 'acme-npu': option toolchain: {path} not found")
            return [str(path)]
        installed = shutil.which("acme-npuc") or str(Path(sys.executable).parent / "acme-npuc")
        if Path(installed).is_file():
            return [installed]
        return [sys.executable, "-m", "acme_npu.toolchain"]

    @staticmethod
    def _toolchain_version(command: list[str], timeout: float) -> str:
        try:
            completed = subprocess.run(
                [*command, "--version"], capture_output=True, text=True, timeout=min(timeout, 60), check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise InvalidInput(f"compiler 'acme-npu': cannot run {command[0]} --version ({error})") from error
        words = completed.stdout.split()
        return words[1] if completed.returncode == 0 and len(words) == 2 else completed.stdout.strip()


class AcmeRunner:
    def __init__(self, blob: Path) -> None:
        from acme_npu.blob import BlobError
        from acme_npu.runtime import AcmeRuntime

        try:
            self._runtime = AcmeRuntime(blob)
        except BlobError as error:
            raise InvalidInput(f"{blob}: not a loadable ACME blob ({error})") from error

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runtime.run(inputs)

    def trace(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every int8 tensor the NPU writes, by graph tensor name (for `tapeout diff`)."""
        return self._runtime.trace(inputs)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
