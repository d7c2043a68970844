"""Sample sets: the three formats, digest stability, streaming reads and every bad-input case."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tapeout.calibration.dataset import (
    DIGEST_SCHEME,
    FOLDER_MANIFEST,
    ImagePreprocessing,
    digest_arrays,
    load_sample_set,
)
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TensorSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"
IMAGE = (TensorSpec("image", (1, 1, 4, 4), "float32"),)


def _images(count: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 4, 4), dtype=np.float32)


def _npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _npy_folder(path: Path, images: np.ndarray, names: list[str] | None = None) -> Path:
    path.mkdir()
    for index, image in enumerate(images):
        np.save(path / f"{(names or [])[index] if names else f's{index:03d}'}.npy", image)
    return path


# ---- digest ------------------------------------------------------------------------------


def test_digest_does_not_depend_on_zip_entry_order_or_compression(tmp_path):
    images, labels = _images(), np.arange(10)
    first = _npz(tmp_path / "a.npz", image=images, label=labels)
    second = tmp_path / "b.npz"
    with zipfile.ZipFile(second, "w", zipfile.ZIP_DEFLATED) as archive:  # labels first
        for name, array in (("label", labels), ("image", images)):
            with archive.open(name + ".npy", "w") as member:
                np.lib.format.write_array(member, array)
    third = _npz(tmp_path / "c.npz", compressed=True, label=labels, image=images)
    digests = {
        load_sample_set(path, IMAGE, label_key="label").digest for path in (first, second, third)
    }
    assert len(digests) == 1


def test_digest_does_not_depend_on_sample_or_file_order(tmp_path):
    images = _images()
    order = np.random.default_rng(1).permutation(10)
    one = load_sample_set(_npz(tmp_path / "a.npz", image=images), IMAGE)
    two = load_sample_set(_npz(tmp_path / "b.npz", image=images[order]), IMAGE)
    folder = _npy_folder(tmp_path / "f", images[order], [f"x{i}" for i in np.argsort(order)])
    three = load_sample_set(folder, IMAGE)
    assert one.digest == two.digest
    assert three.digest == digest_arrays({"": images})


def test_digest_changes_with_one_value_dtype_or_labels(tmp_path):
    images = _images()
    base = load_sample_set(_npz(tmp_path / "a.npz", image=images), IMAGE).digest
    changed = images.copy()
    changed[7, 0, 2, 3] = np.nextafter(changed[7, 0, 2, 3], np.float32(2))
    assert load_sample_set(_npz(tmp_path / "b.npz", image=changed), IMAGE).digest != base
    duplicated = images.copy()
    duplicated[1] = duplicated[0]
    assert load_sample_set(_npz(tmp_path / "c.npz", image=duplicated), IMAGE).digest != base
    labelled = load_sample_set(
        _npz(tmp_path / "d.npz", image=images, label=np.arange(10)), IMAGE, label_key="label"
    )
    relabelled = load_sample_set(
        _npz(tmp_path / "e.npz", image=images, label=np.arange(10)[::-1].copy()), IMAGE,
        label_key="label",
    )
    assert len({base, labelled.digest, relabelled.digest}) == 3


def test_big_endian_data_has_the_same_digest(tmp_path):
    images = _images()
    little = load_sample_set(_npz(tmp_path / "a.npz", image=images), IMAGE)
    big = load_sample_set(_npz(tmp_path / "b.npz", image=images.astype(">f4")), IMAGE)
    assert little.digest == big.digest
    np.testing.assert_array_equal(next(big.batches(10))["image"], images)


# ---- formats and reading ------------------------------------------------------------------


def test_example_set_manifest_and_streaming_batches():
    inputs = (TensorSpec("image", (1, 1, 16, 16), "float32"),)
    samples = load_sample_set(EXAMPLE / "data" / "validation.npz", inputs, label_key="label")
    manifest = samples.manifest()
    assert manifest["count"] == 500 and manifest["format"] == "npz"
    assert manifest["digest_scheme"] == DIGEST_SCHEME and manifest["labels"] == "label"
    assert manifest["inputs"] == [{"name": "image", "shape": [1, 16, 16], "dtype": "float32"}]
    with np.load(EXAMPLE / "data" / "validation.npz") as archive:
        expected = archive["image"]
    batches = list(samples.batches(64))
    assert [len(b["image"]) for b in batches] == [64] * 7 + [52]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), expected)
    np.testing.assert_array_equal(samples.arrays()["image"], expected)


def test_folder_of_npy_files(tmp_path):
    images = _images(5)
    folder = _npy_folder(tmp_path / "set", images)
    (folder / FOLDER_MANIFEST).write_text(json.dumps({"metadata": {"license": "CC0"}}))
    samples = load_sample_set(folder, IMAGE)
    assert samples.format == "npy" and samples.count == 5
    assert samples.files == tuple(f"s{i:03d}.npy" for i in range(5))
    assert samples.manifest()["metadata"] == {"license": "CC0"}
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in samples.batches(2)]), images)


def test_folder_of_npy_files_for_two_inputs(tmp_path):
    inputs = (TensorSpec("a", (1, 3), "float32"), TensorSpec("b", (1, 2), "int64"))
    for name, array in (("a", np.ones((4, 3), np.float32)), ("b", np.ones((4, 2), np.int64))):
        (tmp_path / "set" / name).mkdir(parents=True)
        for index in range(4):
            np.save(tmp_path / "set" / name / f"{index}.npy", array[index])
    samples = load_sample_set(tmp_path / "set", inputs)
    batch = next(samples.batches(3))
    assert batch["a"].shape == (3, 3) and batch["b"].dtype == np.int64
    (tmp_path / "set" / "b" / "3.npy").unlink()
    with pytest.raises(InvalidInput, match="sub-folder 'b' holds 3 files"):
        load_sample_set(tmp_path / "set", inputs)


def _image_folder(path: Path, count: int = 4, preprocessing: dict | None = None) -> Path:
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels).save(path / f"img{index}.png")
    if preprocessing is not None:
        (path / FOLDER_MANIFEST).write_text(json.dumps({"format": "images", "preprocessing": preprocessing}))
    return path


def test_folder_of_images_applies_and_hashes_its_preprocessing(tmp_path):
    from PIL import Image

    declared = {"size": [4, 4], "mode": "L", "scale": 1 / 255, "mean": [0.5], "std": [0.25]}
    folder = _image_folder(tmp_path / "set", preprocessing=declared)
    samples = load_sample_set(folder, IMAGE)
    assert samples.format == "images"
    assert samples.manifest()["preprocessing"]["mean"] == [0.5]
    with Image.open(folder / "img0.png") as image:
        expected = np.asarray(image.resize((4, 4), Image.Resampling.BILINEAR), np.float32)
    expected = (expected * np.float32(1 / 255) - np.float32(0.5)) / np.float32(0.25)
    np.testing.assert_allclose(next(samples.batches(1))["image"][0, 0], expected, rtol=1e-6)
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (other / FOLDER_MANIFEST).write_text(
        json.dumps({"format": "images", "preprocessing": {**declared, "std": [0.5]}})
    )
    assert load_sample_set(other, IMAGE).digest != samples.digest


def test_hwc_rgb_preprocessing_gives_its_shape():
    spec = ImagePreprocessing(size=(5, 7), mode="RGB", layout="HWC", mean=(0.1, 0.2, 0.3))
    assert spec.shape == (5, 7, 3)


# ---- bad input ----------------------------------------------------------------------------


def test_missing_set(tmp_path):
    with pytest.raises(InvalidInput, match="not found"):
        load_sample_set(tmp_path / "nope.npz", IMAGE)


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(InvalidInput, match="not a readable .npz"):
        load_sample_set(tmp_path / "x.npz", IMAGE)


def test_missing_input_array(tmp_path):
    with pytest.raises(InvalidInput, match="no array named 'image'.*'pixels'"):
        load_sample_set(_npz(tmp_path / "a.npz", pixels=_images()), IMAGE)


def test_wrong_shape_and_dtype(tmp_path):
    with pytest.raises(InvalidInput, match=r"expected samples of shape \[1, 4, 4\].*\[10, 1, 4, 5\]"):
        load_sample_set(_npz(tmp_path / "a.npz", image=np.zeros((10, 1, 4, 5), np.float32)), IMAGE)
    with pytest.raises(InvalidInput, match="expected dtype float32, found float64"):
        load_sample_set(_npz(tmp_path / "b.npz", image=np.zeros((10, 1, 4, 4))), IMAGE)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_the_sample(tmp_path, bad):
    images = np.zeros((3000, 1, 4, 4), np.float32)
    images[2345, 0, 1, 1] = bad
    with pytest.raises(InvalidInput, match="sample 2345 holds NaN or infinite"):
        load_sample_set(_npz(tmp_path / "a.npz", image=images), IMAGE)


def test_nan_in_a_folder_names_the_file(tmp_path):
    images = _images(4)
    images[2, 0, 0, 0] = np.nan
    with pytest.raises(InvalidInput, match=r"sample 2 \(s002.npy\) holds NaN"):
        load_sample_set(_npy_folder(tmp_path / "f", images), IMAGE)


def test_wrong_shape_in_a_folder_names_the_file(tmp_path):
    folder = _npy_folder(tmp_path / "f", _images(3))
    np.save(folder / "s001.npy", np.zeros((1, 4, 3), np.float32))
    with pytest.raises(InvalidInput, match=r"sample 1 \(s001.npy\): expected a sample of shape"):
        load_sample_set(folder, IMAGE)


def test_empty_sets(tmp_path):
    with pytest.raises(InvalidInput, match="at least 1 samples, found 0"):
        load_sample_set(_npz(tmp_path / "a.npz", image=np.zeros((0, 1, 4, 4), np.float32)), IMAGE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="at least 1 samples, found 0"):
        load_sample_set(tmp_path / "empty", IMAGE)


def test_fewer_samples_than_the_config_asks_for(tmp_path):
    with pytest.raises(InvalidInput, match="expected at least 20 samples, found 10"):
        load_sample_set(_npz(tmp_path / "a.npz", image=_images()), IMAGE, minimum_count=20)


def test_bad_labels(tmp_path):
    with pytest.raises(InvalidInput, match="1-D integer"):
        load_sample_set(
            _npz(tmp_path / "a.npz", image=_images(), label=np.zeros(10, np.float32)), IMAGE,
            label_key="label",
        )
    with pytest.raises(InvalidInput, match="has 9 samples, expected 10"):
        load_sample_set(
            _npz(tmp_path / "b.npz", image=_images(), label=np.arange(9)), IMAGE, label_key="label"
        )


def test_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, image=np.array([object()] * 2, dtype=object))
    with pytest.raises(InvalidInput, match="pickle"):
        load_sample_set(path, IMAGE)


def test_images_without_preprocessing_or_unreadable(tmp_path):
    folder = _image_folder(tmp_path / "set")
    with pytest.raises(InvalidInput, match="needs tapeout-set.json with a 'preprocessing'"):
        load_sample_set(folder, IMAGE)
    (folder / FOLDER_MANIFEST).write_text(json.dumps({"preprocessing": {"size": [4, 4]}}))
    (folder / "img9.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInput, match="img9.png: not a readable image"):
        load_sample_set(folder, IMAGE)


def test_bad_preprocessing_names_the_field(tmp_path):
    folder = _image_folder(tmp_path / "set", preprocessing={"size": [4, 4], "layout": "NCHW"})
    with pytest.raises(InvalidInput, match="layout: expected 'CHW' or 'HWC'"):
        load_sample_set(folder, IMAGE)
    with pytest.raises(InvalidInput, match="unknown"):
        ImagePreprocessing.from_dict({"size": [4, 4], "crop": 2}, "x")
