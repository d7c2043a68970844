"""Fuzz targets: each takes raw bytes (or a few structured values) and checks that tapeout
either accepts the input or refuses it with its own error — never an unexpected exception,
never a crash, never "verified" for something that is not what was signed.

The same targets are driven three ways:
- by Hypothesis from `tests/hardening/test_hardening_fuzz.py` (a short bounded run in CI;
  `TAPEOUT_FUZZ_EXAMPLES=N` for a longer one);
- by atheris (libFuzzer, coverage-guided) from `fuzz/run_atheris.py` for long runs;
- by hand, to replay a crash: `python fuzz/run_atheris.py TARGET crash-file`.

A finding is an exception that is not a `TapeoutError` (or, for the verifier, a tampered
bundle that verifies). docs/security.md lists what the fuzzers cover.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tapeout.compilers.errors import TapeoutError


class Finding(AssertionError):
    """What a fuzz target reports: an input tapeout mishandled."""


# -- the pipeline config loader ----------------------------------------------------------------


def pipeline_config(data: bytes, workdir: Path) -> None:
    """`load_pipeline` on arbitrary bytes: a Pipeline or a ConfigError naming the file."""
    from tapeout.flows.config import ConfigError, load_pipeline

    path = workdir / "pipeline.yaml"
    path.write_bytes(data)
    try:
        pipeline = load_pipeline(path)
    except ConfigError as error:
        if str(path) not in str(error):
            raise Finding(f"the error does not name the file: {error}") from error
        return
    except TapeoutError as error:
        raise Finding(f"expected a ConfigError, found {type(error).__name__}: {error}") from error
    # Whatever validated must be usable: every later stage calls these.
    pipeline.resolved()
    for target in pipeline.config.targets:
        pipeline.digest(target)
        pipeline.target_profile(target)
        pipeline.gates_for(target)


# -- the compiled-artifact record loader -----------------------------------------------------------


def artifact_record(data: bytes, workdir: Path) -> None:
    """`read_record` (compiled/compiler.json, what `tapeout infer|bench` and the gates load)
    on arbitrary bytes: a CompiledArtifact whose files are inside the folder, or InvalidInput."""
    from tapeout.artifacts.compiled import RECORD_FILE, read_record
    from tapeout.compilers.errors import InvalidInput

    folder = workdir / "compiled"
    folder.mkdir(exist_ok=True)
    (folder / "model.ort.onnx").write_bytes(b"\x08\x07")
    (folder / RECORD_FILE).write_bytes(data)
    try:
        artifact, _ = read_record(folder)
    except InvalidInput:
        return
    for name in artifact.files:
        resolved = (folder / name).resolve()
        if not resolved.is_relative_to(folder.resolve()):
            raise Finding(f"artifact file {name!r} escapes the folder")


def artifact_record_json(document: object, workdir: Path) -> None:
    """`artifact_record` on a JSON document (reaches deeper than bytes do)."""
    artifact_record(json.dumps(document).encode(), workdir)


# -- the bundle verifier ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedBundle:
    """A small bundle signed once, and the public key that verifies it."""

    path: Path
    public_key: Path
    files: tuple[str, ...]


def signed_bundle(root: Path) -> SignedBundle:
    from tapeout.artifacts.signing import init_keys, sign_bundle

    pair, _ = init_keys(root / "keys")
    bundle = root / "bundle"
    (bundle / "model").mkdir(parents=True)
    (bundle / "compiled").mkdir()
    (bundle / "reports").mkdir()
    (bundle / "model" / "model.onnx").write_bytes(b"\x08\x07\x12\x05onnx" * 20)
    (bundle / "compiled" / "model.bin").write_bytes(bytes(range(256)))
    (bundle / "reports" / "gates.json").write_text(json.dumps({"verdict": "pass", "gates": []}))
    (bundle / "provenance.json").write_text(json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "predicate": {"buildDefinition": {"externalParameters": {"model": "digits-cnn", "target": "cpu"}}},
    }))
    sign_bundle(bundle, pair.private_key)
    files = tuple(sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()))
    return SignedBundle(bundle, pair.public_key, files)


# One mutation: (operation, which file, a number, bytes).
Mutation = tuple[str, int, int, bytes]
OPERATIONS = ("overwrite", "flip", "truncate", "append", "delete", "add", "symlink", "rename", "mkdir-over")


def bundle_verifier(original: SignedBundle, mutations: list[Mutation], workdir: Path) -> None:
    """Mutate a copy of a signed bundle and verify it the way `tapeout verify DIR` does.

    It must verify exactly when the copy still holds the signed files byte for byte (the
    signature file included), and otherwise refuse with VerificationFailed.
    """
    from tapeout.artifacts.policy import TrustPolicy
    from tapeout.artifacts.signing import VerificationFailed

    bundle = workdir / "copy"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(original.path, bundle, symlinks=True)
    outside = workdir / "outside.bin"
    outside.write_bytes(b"outside the bundle")
    for operation, which, number, data in mutations:
        _mutate(bundle, original.files, operation, which, number, data, outside)
    unchanged = _snapshot(bundle) == _snapshot(original.path)
    try:
        TrustPolicy.single_key(original.public_key).verify(bundle)
    except VerificationFailed:
        if unchanged:
            raise Finding(f"an untouched bundle failed to verify after {mutations}") from None
        return
    except TapeoutError as error:
        raise Finding(f"expected VerificationFailed, found {type(error).__name__}: {error}") from error
    if not unchanged:
        raise Finding(f"a changed bundle verified: {mutations}")


def _mutate(bundle: Path, files: tuple[str, ...], operation: str, which: int, number: int, data: bytes, outside: Path) -> None:
    present = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() or p.is_symlink())
    if not present:
        return
    path = bundle / present[which % len(present)]
    if path.is_symlink() and operation not in ("delete", "rename"):
        return
    if operation == "overwrite":
        path.write_bytes(data)
    elif operation == "flip":
        content = bytearray(path.read_bytes())
        if content:
            content[number % len(content)] ^= 1 << (number % 8)
            path.write_bytes(bytes(content))
    elif operation == "truncate":
        content = path.read_bytes()
        path.write_bytes(content[: number % (len(content) + 1)])
    elif operation == "append":
        with path.open("ab") as stream:
            stream.write(data or b"\0")
    elif operation == "delete":
        path.unlink()
    elif operation == "add":
        name = "".join(c for c in data.decode("latin-1") if c.isalnum() or c in "._-")[:40] or "extra"
        folder = bundle / ("reports", "compiled", ".", ".git")[number % 4]
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    elif operation == "symlink":
        target = outside if number % 2 else bundle / files[number % len(files)]
        path.unlink()
        path.symlink_to(target)
    elif operation == "rename":
        destination = bundle / present[number % len(present)]
        if destination != path:
            os.replace(path, destination)
    elif operation == "mkdir-over":
        path.unlink()
        path.mkdir()
        (path / "inner").write_bytes(data)


def _snapshot(root: Path) -> dict[str, object]:
    state: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[relative] = ("symlink", os.readlink(path))
        elif path.is_file():
            state[relative] = path.read_bytes()
    return state


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="tapeout-fuzz-"))
