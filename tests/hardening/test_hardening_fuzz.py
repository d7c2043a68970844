"""The fuzz targets of fuzz/targets.py under Hypothesis: a short bounded run here (CI), a
longer one with TAPEOUT_FUZZ_EXAMPLES=N (docs/security.md, "Fuzzing"). Coverage-guided long
runs use atheris: fuzz/run_atheris.py."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPOSITORY

sys.path.insert(0, str(REPOSITORY / "fuzz"))
import targets  # noqa: E402

EXAMPLES = int(os.environ.get("TAPEOUT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="TAPEOUT_FUZZ_EXAMPLES" not in os.environ,  # CI: the same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- pipeline config ----------------------------------------------------------------------------

EXAMPLE_PIPELINE = (REPOSITORY / "examples" / "digits" / "pipeline.yaml").read_bytes()
YAML_PIECES = [
    b"model:", b"  name: digits-cnn", b"targets:", b"  - name: cpu", b"    firmware_revision: ",
    b"calibration:", b"gates:", b"signing:", b"registry:", b"{", b"}", b"[", b"]", b"&a ", b"*a",
    b"!!python/object:os.system", b"<<: *a", b"- ", b": ", b"\t", b"\xff\xfe", b"\x00", b"'", b'"',
    b"1e999", b"-1", b"0x10", b"null", b"~", b"yes", b"\n", b"  ", b"---", b"...", b"%YAML 1.1",
]


@st.composite
def yaml_bytes(draw) -> bytes:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=400))
    if kind == 1:
        return b"".join(draw(st.lists(st.sampled_from(YAML_PIECES) | st.binary(max_size=8), max_size=40)))
    # the example with a slice replaced: stays close to valid
    start = draw(st.integers(0, len(EXAMPLE_PIPELINE)))
    end = draw(st.integers(start, min(len(EXAMPLE_PIPELINE), start + 40)))
    return EXAMPLE_PIPELINE[:start] + draw(st.sampled_from(YAML_PIECES) | st.binary(max_size=12)) + EXAMPLE_PIPELINE[end:]


@FUZZ
@given(data=yaml_bytes())
def test_fuzz_pipeline_config_loader(data, tmp_path):
    targets.pipeline_config(data, tmp_path)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe not utf-8",
        b"[" * 5000,
        b"model: {name: digits-cnn, source: {onnx: m.onnx}, inputs: [{name: x, shape: [1]}]}\n"
        b"calibration: {set: c.npz}\nvalidation: {set: v.npz}\n"
        b"targets: [{name: cpu, compiler: onnxruntime, firmware_revision: '1.0'}]\n",
        b"a: &a [1, 2]\nb: *a\nmodel: *a\n",
        b"!!python/object/apply:os.system ['true']\n",
    ],
    ids=["not-utf8", "deep-nesting", "minimal-valid", "aliases", "python-tag"],
)
def test_pipeline_config_loader_regressions(data, tmp_path):
    targets.pipeline_config(data, tmp_path)


# -- artifact record ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
spec = st.fixed_dictionaries({"name": json_values, "shape": json_values, "dtype": json_values})
record = st.fixed_dictionaries(
    {
        "compiler": json_values, "compiler_version": json_values, "artifact_id": json_values,
        "files": st.lists(st.sampled_from(["model.ort.onnx", "../escape", "/etc/passwd", "missing", "."]) | st.text(max_size=8), max_size=3) | json_values,
        "options": st.dictionaries(st.text(max_size=6), json_values, max_size=3) | json_values,
        "target": json_values, "minimum_firmware_revision": json_values,
        "inputs": st.lists(spec | json_values, max_size=2), "outputs": st.lists(spec | json_values, max_size=2),
    },
    optional={"report": json_values},
)


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_artifact_record_bytes(data, tmp_path):
    targets.artifact_record(data, tmp_path)


@FUZZ
@given(document=record)
def test_fuzz_artifact_record_documents(document, tmp_path):
    targets.artifact_record_json(document, tmp_path)


# -- bundle verifier ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    return targets.signed_bundle(tmp_path_factory.mktemp("signed"))


mutation = st.tuples(
    st.sampled_from(targets.OPERATIONS), st.integers(0, 50), st.integers(0, 10_000), st.binary(max_size=32)
)


@FUZZ
@given(mutations=st.lists(mutation, max_size=3))
def test_fuzz_bundle_verifier(signed, mutations, tmp_path):
    targets.bundle_verifier(signed, mutations, tmp_path)


def test_untouched_and_rewritten_identically_bundles_verify(signed, tmp_path):
    targets.bundle_verifier(signed, [], tmp_path)
    data = (signed.path / "compiled" / "model.bin").read_bytes()
    index = signed.files.index("compiled/model.bin")
    targets.bundle_verifier(signed, [("overwrite", index, 0, data)], tmp_path)


# -- int8-ref image loader --------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_seed(tmp_path_factory):
    """A real int8-ref image (most kernel kinds) and its mutable fields."""
    image = targets.int8_seed_image(tmp_path_factory.mktemp("int8-seed"))
    return image, targets.image_fields(image)


@pytest.fixture(scope="module")
def image_worker():
    worker = targets.ImageWorker(timeout=10.0)
    yield worker
    worker.close()


# Around the limits the loader checks: signs, type codes, the window bound, int32 and int64.
EXTREMES = (-1, 0, 1 << 20, (1 << 31) - 1)
field_value = st.sampled_from(EXTREMES + (1, 2, 3, 255, 40000, 1 << 31, -(1 << 31), 1 << 62)) \
    | st.integers(-(1 << 63), (1 << 63) - 1)


@FUZZ
@given(mutations=st.lists(st.tuples(st.integers(0, 10_000), field_value), min_size=1,
                          max_size=3))
def test_fuzz_int8_image_fields(int8_seed, image_worker, mutations):
    image, fields = int8_seed
    targets.int8_image(image_worker, image, fields, mutations)


def test_every_int8_image_field_at_its_extremes(int8_seed, image_worker):
    """Every op parameter and tensor dtype of the seed image, alone, at each extreme (digest
    recomputed): refused, or loaded and run to the end within the time limit. A loop whose
    extent the loader does not bound shows up here as a timeout."""
    image, fields = int8_seed
    outcomes = Counter(targets.int8_image(image_worker, image, fields, [(i, value)])
                       for i in range(len(fields)) for value in EXTREMES)
    assert outcomes["rejected"] > 0 and outcomes["ran"] > 0


def test_a_forged_maxpool_window_is_refused_at_load(int8_seed, image_worker):
    """Regression: MAXPOOL's kh and kw had no bound, and kh = 2^31 - 1 kept the runtime in a
    loop with the GIL released and SIGINT unseen. The loader refuses the window by name."""
    from tapeout.compilers.int8_ref.artifact_format import read_image
    from tapeout.compilers.int8_ref.exceptions import ArtifactRejected

    image, fields = int8_seed
    for name in ("kh", "kw"):
        field = next(f for f in fields if f.where.endswith(f"MAXPOOL {name}"))
        forged = targets.forge(image, [(field, (1 << 31) - 1)])
        with pytest.raises(ArtifactRejected) as refused:
            read_image(forged, "forged.i8r")
        message = str(refused.value)
        assert "forged.i8r" in message and "MAXPOOL" in message
        assert f"{name}=2147483647" in message and "window" in message
        assert image_worker.check(forged, field.where) == "rejected"
