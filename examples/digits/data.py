"""The digits example's data: scikit-learn's 8x8 digits, upsampled to 16x16, split three ways.

numpy only (no torch), deterministic, no download: `sklearn.datasets.load_digits()` reads a file
shipped inside scikit-learn. Run as a script to (re)write the committed sample sets:

    python examples/digits/data.py

writes `data/calibration.npz` (key `image`) and `data/validation.npz` (keys `image`, `label`)
beside this file, byte for byte the same on every run with the same numpy and zlib.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE_SIZE = 8
IMAGE_SIZE = 16
# sklearn's digits hold integer pixel counts 0..16 (blocks of 4x4 bitmap pixels that are set).
PIXEL_MAX = 16

SPLIT_SEED = 20_240_601
CALIBRATION_COUNT = 300
VALIDATION_COUNT = 500

DATA_DIR = Path(__file__).resolve().parent / "data"
# A fixed zip entry time (the zip format's earliest, 1980-01-01 00:00:00) so the files do not
# depend on when they were written; `np.savez_compressed` stamps the current local time instead.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, eq=False)
class Subset:
    """Samples of one split: images [n, 1, 16, 16] float32, labels [n] int64, and their row
    indices into `load_images()`'s arrays."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


@dataclass(frozen=True, eq=False)
class Split:
    """Three pairwise disjoint subsets covering every sample once."""

    train: Subset
    calibration: Subset
    validation: Subset


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """The [size_out, size_in] float64 matrix of 1-D bilinear resampling, half-pixel centres.

    Output pixel i samples the source at x = (i + 0.5) * size_in / size_out - 0.5, clamped to
    [0, size_in - 1], and mixes pixels floor(x) and floor(x) + 1 with weights 1 - frac(x) and
    frac(x). This is ONNX Resize's `half_pixel` / `linear` mode and PyTorch's
    `interpolate(mode="bilinear", align_corners=False)` (which clamps the same way at the edges).
    For 8 -> 16 the weights are 1, 3/4 and 1/4: exact in binary floating point.
    """
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    for i in range(size_out):
        x = min(max((i + 0.5) * size_in / size_out - 0.5, 0.0), size_in - 1.0)
        lo = int(np.floor(x))
        hi = min(lo + 1, size_in - 1)
        frac = x - lo
        matrix[i, lo] += 1.0 - frac
        matrix[i, hi] += frac
    return matrix


def upsample(images_8x8: np.ndarray) -> np.ndarray:
    """[n, 8, 8] -> [n, 16, 16] separable bilinear upsampling, rows then columns: A @ X @ A^T.

    With integer inputs 0..16 and weights in {0, 1/4, 3/4, 1}, every product and partial sum is
    a multiple of 1/16 below 2**5, exact in float64 whatever the summation order; the result
    does not depend on the BLAS library.
    """
    a = bilinear_matrix(SOURCE_SIZE, IMAGE_SIZE)
    return np.einsum("oi,nij,pj->nop", a, images_8x8, a)


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: images float32 [1797, 1, 16, 16] in [0, 1], labels int64 [1797].

    Pixels are divided by 16 (their maximum) and upsampled 8x8 -> 16x16 with `upsample`. The
    values are multiples of 1/256 in [0, 1], so the float32 cast is exact.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn; no download

    digits = load_digits()
    raw = np.asarray(digits.images, dtype=np.float64)  # [1797, 8, 8], integers 0..16
    images = (upsample(raw) / PIXEL_MAX).astype(np.float32)[:, np.newaxis, :, :]
    labels = np.asarray(digits.target, dtype=np.int64)
    return np.ascontiguousarray(images), labels


def split(images: np.ndarray, labels: np.ndarray, *, seed: int = SPLIT_SEED) -> Split:
    """One fixed permutation (`numpy.random.default_rng(seed).permutation`) cut into three.

    The first 300 permuted samples are the calibration set, the next 500 the validation set,
    the rest the training set; each keeps the permuted order.

    Raises:
        ValueError: images and labels differ in length, or there are too few samples.
    """
    count = len(images)
    if len(labels) != count:
        raise ValueError(f"expected as many labels as images ({count}), found {len(labels)}")
    if count <= CALIBRATION_COUNT + VALIDATION_COUNT:
        raise ValueError(
            f"expected more than {CALIBRATION_COUNT + VALIDATION_COUNT} samples, found {count}"
        )
    order = np.random.default_rng(seed).permutation(count)
    cuts = np.split(order, [CALIBRATION_COUNT, CALIBRATION_COUNT + VALIDATION_COUNT])
    calibration, validation, train = (
        Subset(images=images[idx], labels=labels[idx], indices=idx) for idx in cuts
    )
    return Split(train=train, calibration=calibration, validation=validation)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as a compressed `.npz` that `np.load` reads, with fixed zip metadata.

    Same layout as `np.savez_compressed` (one `<key>.npy` entry per array, deflated), but
    every entry carries `_ZIP_DATE_TIME` and fixed permissions, so equal arrays give equal bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, whatever the writing platform
            info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
            archive.writestr(info, buffer.getvalue())


def sample_sets() -> dict[str, dict[str, np.ndarray]]:
    """The committed sample sets' contents, by file name."""
    parts = split(*load_images())
    return {
        "calibration.npz": {"image": parts.calibration.images},
        "validation.npz": {"image": parts.validation.images, "label": parts.validation.labels},
    }


def main(out_dir: Path = DATA_DIR) -> None:
    for name, arrays in sample_sets().items():
        path = out_dir / name
        write_npz(path, arrays)
        shapes = ", ".join(f"{k} {a.dtype}{list(a.shape)}" for k, a in arrays.items())
        print(f"wrote {path} ({shapes})")


if __name__ == "__main__":
    main()
