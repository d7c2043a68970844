"""The validation set read a chunk at a time: the evaluation, the sensitivity analysis and
`tapeout diff` count exactly what the whole set in memory gives, whatever the chunk size.

The example CNN is exported with a fixed batch of 4 and evaluated on 103 of its validation
images (not a whole number of batches); reads are shrunk to 12 samples, so batches, chunks
and the sensitivity's sample limit all end in different places. The peak memory this buys
is measured in benchmarks/validation_memory.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tapeout.calibration import dataset
from tapeout.calibration.calibrate import calibrate
from tapeout.calibration.dataset import load_sample_set
from tapeout.calibration.quantizer import quantize
from tapeout.compilers.frontends import PyTorchSource, export_model
from tapeout.compilers.interface import TargetProfile, TensorSpec
from tapeout.compilers.measure import cosines, sqnr_db
from tapeout.compilers.registry import load_compiler
from tapeout.artifacts.compiled import write_record
from tapeout.flows.diff import run_diff
from tapeout.flows.evaluate import evaluate
from tapeout.flows.sensitivity import analyse
from tapeout.flows.stages import reference_stage

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"
BATCH = 4
COUNT = 103
SAMPLE_BYTES = 16 * 16 * 4
SMALL_READ = 13 * SAMPLE_BYTES  # 13 samples: 12 of them, a whole number of batches


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    inputs = (TensorSpec("image", (BATCH, 1, 16, 16), "float32"),)
    model = export_model(
        PyTorchSource(EXAMPLE / "model.py", "build_model", EXAMPLE / "weights.pt"), inputs, ("logits",),
        root / "model.onnx",
    )
    calibration = load_sample_set(EXAMPLE / "data" / "calibration.npz", model.inputs)
    table = calibrate(model.path, calibration, method="minmax", batch_size=BATCH, workdir=root / "calibrate")
    quantized = quantize(model.path, table, inputs=model.inputs, outputs=model.outputs, output_path=root / "model.qdq.onnx")
    with np.load(EXAMPLE / "data" / "validation.npz") as archive:
        np.savez(root / "validation.npz", image=archive["image"][:COUNT], label=archive["label"][:COUNT])
    samples = load_sample_set(root / "validation.npz", model.inputs, label_key="label")
    profile = TargetProfile("cpu", "onnxruntime", "1.32.0", {"threads": "1"})
    artifact = load_compiler("onnxruntime").compile(quantized, profile, root / "compiled")
    write_record(artifact, profile.firmware_revision)
    return {"root": root, "model": model, "table": table, "quantized": quantized, "samples": samples, "artifact": artifact}


def _whole_set_outputs(model_path: Path, images: np.ndarray) -> np.ndarray:
    """The model's output on every image, the set in memory, padded to whole batches."""
    import onnxruntime

    padded = np.concatenate([images, np.repeat(images[-1:], -len(images) % BATCH, axis=0)])
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(None, {"image": padded[i : i + BATCH]})[0] for i in range(0, len(padded), BATCH)]
    )[: len(images)]


def test_a_set_is_read_in_chunks_of_whole_batches_and_its_labels_alone(example, monkeypatch):
    samples = example["samples"]
    monkeypatch.setattr(dataset, "READ_BYTES", SMALL_READ)
    chunks = list(samples.chunks(BATCH))
    assert [len(chunk["image"]) for chunk in chunks] == [12] * 8 + [7]
    assert all(set(chunk) == {"image"} for chunk in chunks)
    whole = samples.arrays()
    np.testing.assert_array_equal(np.concatenate([chunk["image"] for chunk in chunks]), whole["image"])
    np.testing.assert_array_equal(samples.labels(), whole["label"])


def test_the_evaluation_counts_what_the_whole_set_in_memory_gives(example, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "READ_BYTES", SMALL_READ)
    samples, artifact = example["samples"], example["artifact"]
    reference = reference_stage(example["model"], samples, tmp_path / "reference")
    runner = load_compiler("onnxruntime").load(artifact)
    metrics = evaluate(runner, samples, artifact.inputs, reference, [artifact.directory / f for f in artifact.files]).metrics

    whole = samples.arrays()
    fp32 = _whole_set_outputs(example["model"].path, whole["image"]).astype(np.float64)
    int8 = _whole_set_outputs(example["quantized"].path, whole["image"]).astype(np.float64)
    np.testing.assert_array_equal(np.load(reference.outputs), fp32.astype(np.float32))
    np.testing.assert_array_equal(reference.top1, fp32.argmax(axis=1))
    assert metrics["accuracy_fp32"] == np.mean(fp32.argmax(axis=1) == whole["label"])
    assert metrics["accuracy"] == np.mean(int8.argmax(axis=1) == whole["label"])
    assert metrics["top1_agreement"] == np.mean(int8.argmax(axis=1) == fp32.argmax(axis=1))
    signal, noise = float(np.sum(fp32**2)), float(np.sum((fp32 - int8) ** 2))
    assert noise > 0  # int8 is not fp32: the SQNR below is a real measurement
    assert metrics["output_sqnr_db"] == pytest.approx(sqnr_db(signal, noise), rel=1e-12)
    assert metrics["output_cosine"] == pytest.approx(float(np.mean(cosines(fp32, int8))), rel=1e-12)


def test_the_sensitivity_analysis_does_not_depend_on_how_the_set_is_read(example, tmp_path, monkeypatch):
    def run(folder: str):
        return analyse(
            example["model"].path, example["quantized"], example["samples"], table=example["table"],
            samples_limit=50, top_k=1, workdir=tmp_path / folder,
        ).to_document()

    whole = run("whole")
    monkeypatch.setattr(dataset, "READ_BYTES", SMALL_READ)
    assert run("chunked") == whole
    assert whole["data"]["samples_used"] == 50 and whole["layers"][0]["agreement_gain"] is not None


def test_diff_does_not_depend_on_how_the_set_is_read(example, tmp_path, monkeypatch):
    def run(folder: str):
        report = run_diff(
            example["artifact"].directory, "int8-ref", model=example["quantized"].path,
            sample_set=example["root"] / "validation.npz", workdir=tmp_path / folder,
        )
        return report.to_json()

    whole = run("whole")
    monkeypatch.setattr(dataset, "READ_BYTES", SMALL_READ)
    chunked = run("chunked")
    assert chunked["samples"] == whole["samples"] == COUNT
    assert chunked["outputs"] == whole["outputs"]
    assert whole["outputs"][0]["elements"] == COUNT * 10
