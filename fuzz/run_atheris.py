"""Coverage-guided long fuzzing runs with atheris (libFuzzer) over fuzz/targets.py.

    pip install atheris                       # has wheels for CPython 3.11 on x86-64 Linux
    python fuzz/run_atheris.py config  fuzz/corpus/config  -max_total_time=3600
    python fuzz/run_atheris.py record  fuzz/corpus/record  -max_total_time=3600
    python fuzz/run_atheris.py bundle  fuzz/corpus/bundle  -max_total_time=3600 -timeout=30
    python fuzz/run_atheris.py int8-image fuzz/corpus/int8 -max_total_time=3600 -timeout=10
    python fuzz/run_atheris.py config crash-<sha1>           # replay one finding

Everything after the target name goes to libFuzzer (corpus folders, -runs=N,
-max_total_time=S, -jobs=N). A finding is written as crash-<sha1> in the working directory
(timeout-<sha1> for an input that ran longer than -timeout: `int8-image` loads and runs the
image in this process, and libFuzzer's timer sees a kernel that never returns); turn it into
a regression case in tests/hardening/test_hardening_fuzz.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import atheris  # noqa: E402

with atheris.instrument_imports():
    import yaml  # noqa: F401  (instrumented: the config loader's parser)

    import tapeout.artifacts.compiled  # noqa: F401
    import tapeout.artifacts.policy  # noqa: F401
    import tapeout.artifacts.signing  # noqa: F401
    import tapeout.compilers.int8_ref.artifact_format  # noqa: F401
    import tapeout.compilers.int8_ref.validate  # noqa: F401
    import tapeout.flows.config  # noqa: F401

import targets  # noqa: E402

WORKDIR = Path(tempfile.mkdtemp(prefix="tapeout-atheris-"))
_SIGNED: list[targets.SignedBundle] = []


def config(data: bytes) -> None:
    targets.pipeline_config(data, WORKDIR)


def record(data: bytes) -> None:
    targets.artifact_record(data, WORKDIR)


def bundle(data: bytes) -> None:
    if not _SIGNED:
        _SIGNED.append(targets.signed_bundle(WORKDIR / "signed"))
    provider = atheris.FuzzedDataProvider(data)
    mutations = [
        (
            targets.OPERATIONS[provider.ConsumeIntInRange(0, len(targets.OPERATIONS) - 1)],
            provider.ConsumeIntInRange(0, 50),
            provider.ConsumeIntInRange(0, 10_000),
            provider.ConsumeBytes(provider.ConsumeIntInRange(0, 32)),
        )
        for _ in range(provider.ConsumeIntInRange(0, 3))
    ]
    targets.bundle_verifier(_SIGNED[0], mutations, WORKDIR)


_SEED: list[tuple[bytes, list[targets.ImageField]]] = []


def int8_image(data: bytes) -> None:
    if not _SEED:
        seed = targets.int8_seed_image(WORKDIR / "int8")
        _SEED.append((seed, targets.image_fields(seed)))
    seed, fields = _SEED[0]
    provider = atheris.FuzzedDataProvider(data)
    changes = [(fields[provider.ConsumeIntInRange(0, len(fields) - 1)], provider.ConsumeInt(8))
               for _ in range(provider.ConsumeIntInRange(1, 3))]
    targets.load_and_run(targets.forge(seed, changes))


TARGETS = {"config": config, "record": record, "bundle": bundle, "int8-image": int8_image}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer arguments]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
