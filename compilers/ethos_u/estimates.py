"""Print Vela's estimates for one QDQ model on several Ethos-U configurations, as Markdown.

    python -m tapeout.compilers.ethos_u.estimates MODEL.qdq.onnx [ACCELERATOR ...]

Each row is one `ethos-u` compile with that accelerator's default system config and memory
mode (Vela's Arm/vela.ini). Every number is a Vela estimate (performance model), not a
measurement. benchmarks/README.md's "Ethos-U (Vela estimates)" table is this output for the
example model.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

from tapeout.compilers.ethos_u.compiler import EthosUCompiler
from tapeout.compilers.interface import QuantizedModel, TargetProfile

DEFAULT_ACCELERATORS = (
    "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
    "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024",
)


def estimate_table(model_path: Path, accelerators=DEFAULT_ACCELERATORS) -> str:
    model = QuantizedModel(
        model_path, hashlib.sha256(model_path.read_bytes()).hexdigest(), model_path, (), ()
    )
    rows = [
        "| Accelerator | System config | Memory mode | Clock | Cycles | Inference (µs) | "
        "Inferences/s | SRAM (B) | Flash (B) | DRAM (B) | Ops on CPU |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for accelerator in accelerators:
            profile = TargetProfile(accelerator, "ethos-u", "25.08", {"accelerator_config": accelerator})
            artifact = EthosUCompiler().compile(model, profile, Path(scratch) / accelerator)
            e = artifact.report["vela_estimate"]
            rows.append(
                f"| {accelerator} | {artifact.options['system_config']} | "
                f"{artifact.options['memory_mode']} | {e['core_clock_hz'] / 1e6:.0f} MHz | "
                f"{e['cycles_total']} | {e['inference_time_s'] * 1e6:.1f} | "
                f"{e['inferences_per_second']:,.0f} | {e['sram_bytes']} | {e['flash_bytes']} | "
                f"{e['dram_bytes']} | {', '.join(e['cpu_operators']) or 'none'} |"
            )
    return "\n".join(rows)


def main(arguments: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if arguments is None else arguments
    if not arguments:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(estimate_table(Path(arguments[0]), tuple(arguments[1:]) or DEFAULT_ACCELERATORS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
