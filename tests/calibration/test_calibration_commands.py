"""`tapeout calibrate` and `tapeout calib inspect|pack`, through their handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from tapeout.calibration.calibrate import model_inputs
from tapeout.flows.cli.calibration import add_commands
from tapeout.calibration.dataset import FOLDER_MANIFEST, load_sample_set
from tapeout.calibration.table import CalibrationTable
from tapeout.compilers.errors import InvalidInput

EXAMPLE_SET = Path(__file__).resolve().parents[2] / "examples" / "digits" / "data" / "calibration.npz"


def _run(*arguments: object) -> int:
    parser = argparse.ArgumentParser(prog="tapeout")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args([str(a) for a in arguments])
    return args.func(args)


def test_calibrate_writes_the_table(exported_model, tmp_path, capsys):
    output = tmp_path / "out" / "table.json"
    code = _run("calibrate", exported_model.path, "--set", EXAMPLE_SET, "--method", "percentile",
                "--percentile", "99.9", "-o", output, "--json")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    table = CalibrationTable.read(output)
    assert summary["tensors"] == len(table.ranges) == 11 and summary["samples"] == 300
    assert table.method == "percentile" and table.options["percentile"] == 99.9


def test_calibrate_refuses_bad_input(exported_model, tmp_path):
    with pytest.raises(InvalidInput, match="at least 1000 samples, found 300"):
        _run("calibrate", exported_model.path, "--set", EXAMPLE_SET, "--min-samples", 1000,
             "-o", tmp_path / "t.json")
    with pytest.raises(InvalidInput, match="percentile"):
        _run("calibrate", exported_model.path, "--set", EXAMPLE_SET, "--method", "percentile",
             "--percentile", 20, "-o", tmp_path / "t.json")
    with pytest.raises(InvalidInput, match="not found"):
        _run("calibrate", tmp_path / "none.onnx", "--set", EXAMPLE_SET, "-o", tmp_path / "t.json")
    np.savez(tmp_path / "wrong.npz", image=np.zeros((3, 1, 8, 8), np.float32))
    with pytest.raises(InvalidInput, match=r"expected samples of shape \[1, 16, 16\]"):
        _run("calibrate", exported_model.path, "--set", tmp_path / "wrong.npz", "-o", tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_model_inputs_reads_the_graph(exported_model):
    (spec,) = model_inputs(exported_model.path)
    assert (spec.name, spec.shape, spec.dtype) == ("image", (1, 1, 16, 16), "float32")


def test_inspect_prints_the_manifest(capsys):
    assert _run("calib", "inspect", EXAMPLE_SET, "--json") == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["count"] == 300 and manifest["inputs"][0]["shape"] == [1, 16, 16]
    assert _run("calib", "inspect", EXAMPLE_SET) == 0
    text = capsys.readouterr().out
    assert manifest["digest"] in text and "samples   300" in text


def test_pack_is_seeded_recorded_and_reproducible(tmp_path, capsys):
    for name in ("a.npz", "b.npz"):
        assert _run("calib", "pack", EXAMPLE_SET, "-o", tmp_path / name, "--count", 50, "--seed", 7,
                    "--meta", "license=CC-BY-4.0", "--meta", "sampled=uniform") == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    capsys.readouterr()
    _run("calib", "inspect", tmp_path / "a.npz", "--json")
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["count"] == 50
    assert manifest["metadata"] == {"license": "CC-BY-4.0", "sampled": "uniform"}
    assert manifest["source"]["name"] == "calibration.npz" and manifest["source"]["count"] == 300
    assert manifest["source"]["sampling"]["seed"] == 7
    chosen = np.sort(np.random.default_rng(7).choice(300, 50, replace=False))
    with np.load(EXAMPLE_SET) as source, np.load(tmp_path / "a.npz") as packed:
        np.testing.assert_array_equal(packed["image"], source["image"][chosen])
    _run("calib", "pack", EXAMPLE_SET, "-o", tmp_path / "c.npz", "--count", 50, "--seed", 8)
    assert (tmp_path / "c.npz").read_bytes() != (tmp_path / "a.npz").read_bytes()


def test_pack_images_with_preprocessing_into_a_folder_and_an_npz(tmp_path, capsys):
    from PIL import Image

    raw = tmp_path / "raw"
    raw.mkdir()
    with np.load(EXAMPLE_SET) as archive:
        images = archive["image"][:12]
    for index, image in enumerate(images):
        Image.fromarray(np.rint(image[0] * 255).astype(np.uint8)).save(raw / f"{index:02d}.png")
    _run("calib", "pack", raw, "-o", tmp_path / "set", "--count", 5, "--size", 16, 16,
         "--input-name", "image", "--meta", "license=CC-BY-4.0")
    declared = json.loads((tmp_path / "set" / FOLDER_MANIFEST).read_text())
    assert declared["format"] == "images" and declared["preprocessing"]["size"] == [16, 16]
    assert len(list((tmp_path / "set").glob("*.png"))) == 5
    _run("calib", "pack", tmp_path / "set", "-o", tmp_path / "set.npz")
    capsys.readouterr()
    _run("calib", "inspect", tmp_path / "set.npz", "--json")
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["count"] == 5 and manifest["inputs"][0] == {"name": "image", "shape": [1, 16, 16], "dtype": "float32"}
    with np.load(tmp_path / "set.npz") as packed:
        chosen = np.sort(np.random.default_rng(0).choice(12, 5, replace=False))
        # PNG holds round(x * 255); same-size resize keeps it; scale 1/255 brings it back.
        np.testing.assert_allclose(packed["image"], images[chosen], atol=0.5 / 255 + 1e-6)


def test_pack_npy_folder_keeps_files_and_names_the_input(tmp_path, exported_model):
    raw = tmp_path / "raw"
    raw.mkdir()
    with np.load(EXAMPLE_SET) as archive:
        for index, image in enumerate(archive["image"][:20]):
            np.save(raw / f"{index:02d}.npy", image)
    _run("calib", "pack", raw, "-o", tmp_path / "set", "--count", 8, "--input-name", "image")
    samples = load_sample_set(tmp_path / "set", exported_model.inputs)
    assert samples.count == 8 and samples.format == "npy"
    assert json.loads((tmp_path / "set" / FOLDER_MANIFEST).read_text())["inputs"] == ["image"]


def test_pack_refuses_bad_input(tmp_path):
    with pytest.raises(InvalidInput, match="expected at least 400 samples to draw from, found 300"):
        _run("calib", "pack", EXAMPLE_SET, "-o", tmp_path / "a.npz", "--count", 400)
    (tmp_path / "exists.npz").write_bytes(b"")
    with pytest.raises(InvalidInput, match="already exists"):
        _run("calib", "pack", EXAMPLE_SET, "-o", tmp_path / "exists.npz", "--count", 4)
    with pytest.raises(InvalidInput, match="KEY=VALUE"):
        _run("calib", "pack", EXAMPLE_SET, "-o", tmp_path / "b.npz", "--meta", "oops")
    with pytest.raises(InvalidInput, match="give -o NAME.npz"):
        _run("calib", "pack", EXAMPLE_SET, "-o", tmp_path / "folder", "--count", 4)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.png").write_bytes(b"")
    with pytest.raises(InvalidInput, match="preprocessing"):
        _run("calib", "pack", raw, "-o", tmp_path / "c", "--count", 1)


def test_pack_carries_labels_along(tmp_path, capsys):
    validation = EXAMPLE_SET.with_name("validation.npz")
    _run("calib", "pack", validation, "-o", tmp_path / "v.npz", "--count", 40, "--labels", "label")
    capsys.readouterr()
    _run("calib", "inspect", tmp_path / "v.npz", "--labels", "label", "--json")
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["labels"] == "label" and [i["name"] for i in manifest["inputs"]] == ["image"]
    chosen = np.sort(np.random.default_rng(0).choice(500, 40, replace=False))
    with np.load(validation) as source, np.load(tmp_path / "v.npz") as packed:
        np.testing.assert_array_equal(packed["label"], source["label"][chosen])


def test_pack_takes_and_renames_arrays_of_a_multi_array_npz(tmp_path, capsys, exported_model):
    """One .npz holding a train and a test split, as many data sets ship (scikit-learn's
    digits here), becomes a calibration set and a validation set the model reads."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((1, 2, 2)))[:, None].astype(np.float32) / 16  # 16x16, as the model
    labels = digits.target.astype(np.int64)
    np.savez(tmp_path / "digits.npz", Xtr=images[:1400], ytr=labels[:1400], Xte=images[1400:], yte=labels[1400:])
    with pytest.raises(InvalidInput, match=r"different numbers of samples .*--array INPUT=ARRAY"):
        _run("calib", "pack", tmp_path / "digits.npz", "-o", tmp_path / "all.npz")

    assert _run("calib", "pack", tmp_path / "digits.npz", "-o", tmp_path / "calibration.npz",
                "--array", "image=Xtr", "--count", 300, "--seed", 0) == 0
    assert _run("calib", "pack", tmp_path / "digits.npz", "-o", tmp_path / "validation.npz",
                "--array", "image=Xte", "--labels", "label=yte") == 0
    capsys.readouterr()
    calibration = load_sample_set(tmp_path / "calibration.npz", exported_model.inputs, minimum_count=300)
    validation = load_sample_set(tmp_path / "validation.npz", exported_model.inputs, label_key="label")
    assert (calibration.count, validation.count) == (300, 397)
    assert calibration.source["arrays"] == {"image": "Xtr"}
    with np.load(tmp_path / "validation.npz") as packed:
        assert sorted(packed.files) == ["__tapeout__", "image", "label"]
        np.testing.assert_array_equal(packed["label"], labels[1400:])
        np.testing.assert_array_equal(packed["image"], images[1400:])

    # inspect shows the labels as labels, without being told their name
    assert _run("calib", "inspect", tmp_path / "validation.npz") == 0
    text = capsys.readouterr().out
    assert "labels    label: one integer label per sample (not a model input)" in text
    assert "input     label" not in text and "input     image: float32 [1, 16, 16]" in text
    with pytest.raises(InvalidInput, match=r"no arrays named \['Xval'\]"):
        _run("calib", "pack", tmp_path / "digits.npz", "-o", tmp_path / "x.npz", "--array", "image=Xval")
    with pytest.raises(InvalidInput, match="--array: expected KEY=VALUE"):
        _run("calib", "pack", tmp_path / "digits.npz", "-o", tmp_path / "x.npz", "--array", "image")
