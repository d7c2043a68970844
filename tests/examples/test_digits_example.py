"""The digits example: its data split, its committed sample sets and its committed weights."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

torch = pytest.importorskip("torch")

EXAMPLE_DIR = Path(__file__).parents[2] / "examples" / "digits"


def _load(name: str) -> ModuleType:
    module_name = f"tapeout_examples_digits_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data() -> ModuleType:
    return _load("data")


@pytest.fixture(scope="module")
def loaded(data):
    return data.load_images()


@pytest.fixture(scope="module")
def committed_validation() -> dict[str, np.ndarray]:
    with np.load(EXAMPLE_DIR / "data" / "validation.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def test_images_are_upsampled_scaled_digits(loaded):
    images, labels = loaded
    assert images.dtype == np.float32 and images.shape == (1797, 1, 16, 16)
    assert labels.dtype == np.int64 and labels.shape == (1797,)
    assert images.min() == 0.0 and images.max() == 1.0
    assert set(np.unique(labels)) == set(range(10))


def test_upsampling_matches_torch_bilinear_half_pixel(data, loaded):
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images / 16.0).float()[:, None]
    expected = torch.nn.functional.interpolate(
        raw, size=(16, 16), mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_array_equal(loaded[0], expected)


def test_split_is_disjoint_and_covers_every_sample(data, loaded):
    parts = data.split(*loaded)
    sizes = [len(s.indices) for s in (parts.train, parts.calibration, parts.validation)]
    assert sizes == [1797 - 800, 300, 500]
    every = np.concatenate(
        [parts.train.indices, parts.calibration.indices, parts.validation.indices]
    )
    assert np.array_equal(np.sort(every), np.arange(1797))
    for subset in (parts.train, parts.calibration, parts.validation):
        assert np.array_equal(subset.images, loaded[0][subset.indices])
        assert np.array_equal(subset.labels, loaded[1][subset.indices])


def test_split_is_deterministic(data, loaded):
    first, second = data.split(*loaded), data.split(*data.load_images())
    for name in ("train", "calibration", "validation"):
        a, b = getattr(first, name), getattr(second, name)
        assert np.array_equal(a.indices, b.indices)
        assert np.array_equal(a.images, b.images)
        assert np.array_equal(a.labels, b.labels)


def test_split_rejects_mismatched_labels(data, loaded):
    with pytest.raises(ValueError, match="labels"):
        data.split(loaded[0], loaded[1][:-1])


@pytest.mark.parametrize("name", ["calibration.npz", "validation.npz"])
def test_committed_sample_sets_equal_regenerated(data, name):
    expected = data.sample_sets()[name]
    with np.load(EXAMPLE_DIR / "data" / name, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(expected)
        for key, array in expected.items():
            assert archive[key].dtype == array.dtype
            assert archive[key].shape == array.shape
            np.testing.assert_array_equal(archive[key], array)


def test_written_npz_is_byte_reproducible(data, tmp_path):
    arrays = {"image": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "label": np.arange(2)}
    data.write_npz(tmp_path / "a.npz", arrays)
    data.write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["image"], arrays["image"])


@pytest.fixture(scope="module")
def trained():
    model = _load("model").build_model()
    state = torch.load(EXAMPLE_DIR / "weights.pt", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_model_maps_images_to_ten_logits(trained):
    with torch.no_grad():
        logits = trained(torch.zeros(3, 1, 16, 16))
    assert logits.shape == (3, 10) and logits.dtype == torch.float32


def test_committed_weights_reach_validation_accuracy(trained, committed_validation):
    images = committed_validation["image"]
    labels = committed_validation["label"]
    with torch.no_grad():
        predicted = trained(torch.from_numpy(images)).argmax(dim=1).numpy()
    assert float(np.mean(predicted == labels)) >= 0.95
