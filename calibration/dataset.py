"""Sample sets: the calibration set and the validation set, as content-addressed `.npz` files.

A set is one `.npz` file with one array per model input (first axis: samples) and, for a
validation set, one array of integer labels. Its digest covers the canonical bytes of every
array (name, dtype, shape, C-order little-endian data), so it does not depend on how the
zip file was written; one changed value changes it.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TensorSpec

DIGEST_SCHEME = "sha256-npz-canonical-v1"


@dataclass(frozen=True)
class SampleSet:
    """A validated sample set. `inputs` carry per-sample shapes (no sample axis)."""

    path: Path
    digest: str
    count: int
    inputs: tuple[TensorSpec, ...]
    label_key: str | None = None

    def manifest(self) -> dict[str, object]:
        """The manifest written beside the set in every bundle."""
        return {
            "digest": self.digest,
            "digest_scheme": DIGEST_SCHEME,
            "count": self.count,
            "format": "npz",
            "file": self.path.name,
            "inputs": [
                {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}
                for spec in self.inputs
            ],
            "labels": self.label_key,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Every input array (and the labels, if any), loaded into memory."""
        with np.load(self.path, allow_pickle=False) as archive:
            names = [spec.name for spec in self.inputs]
            if self.label_key:
                names.append(self.label_key)
            return {name: archive[name] for name in names}

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Input batches of `batch_size` samples; the last one may be short."""
        arrays = self.arrays()
        for start in range(0, self.count, batch_size):
            yield {
                spec.name: arrays[spec.name][start : start + batch_size] for spec in self.inputs
            }


def load_sample_set(
    path: Path,
    model_inputs: tuple[TensorSpec, ...],
    *,
    label_key: str | None = None,
    minimum_count: int = 1,
) -> SampleSet:
    """Open and validate a sample set against the model's inputs, before any model runs.

    `model_inputs` carry the model's full shapes (batch axis first); each sample must match
    the shape without the batch axis and the dtype exactly.

    Raises:
        InvalidInput: the file is missing or not an npz, an input or the labels are missing,
            a shape or dtype differs, a value is NaN or infinite, the set is empty or has
            fewer than `minimum_count` samples. The message names the file, the array and,
            for values, the first offending sample.
    """
    if not path.is_file():
        raise InvalidInput(f"{path}: sample set not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InvalidInput(f"{path}: not a readable .npz file ({error})") from error
    with archive:
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InvalidInput(f"{path}: expected an .npz archive, found a single array")
        available = sorted(archive.files)
        digested: dict[str, np.ndarray] = {}
        count: int | None = None
        specs: list[TensorSpec] = []
        for model_input in model_inputs:
            array = _read(archive, path, model_input.name, available)
            _check_input(path, model_input, array)
            count = _check_count(path, model_input.name, array, count)
            digested[model_input.name] = array
            specs.append(TensorSpec(model_input.name, tuple(array.shape[1:]), array.dtype.name))
        if label_key is not None:
            labels = _read(archive, path, label_key, available)
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise InvalidInput(
                    f"{path}: labels {label_key!r}: expected a 1-D integer array, "
                    f"found {labels.dtype.name} of shape {list(labels.shape)}"
                )
            count = _check_count(path, label_key, labels, count)
            digested[label_key] = labels
    assert count is not None  # model_inputs is never empty: the config requires one input
    if count < max(minimum_count, 1):
        raise InvalidInput(
            f"{path}: expected at least {max(minimum_count, 1)} samples, found {count}"
        )
    return SampleSet(path, _digest(digested), count, tuple(specs), label_key)


def _read(archive: np.lib.npyio.NpzFile, path: Path, name: str, available: list[str]) -> np.ndarray:
    if name not in archive.files:
        raise InvalidInput(f"{path}: no array named {name!r}; the file holds {available}")
    try:
        return archive[name]
    except ValueError as error:  # object arrays need pickle, which is never allowed
        raise InvalidInput(f"{path}: array {name!r} cannot be read safely ({error})") from error


def _check_input(path: Path, model_input: TensorSpec, array: np.ndarray) -> None:
    expected_shape = list(model_input.shape[1:])
    if array.dtype.name != model_input.dtype:
        raise InvalidInput(
            f"{path}: input {model_input.name!r}: expected dtype {model_input.dtype}, "
            f"found {array.dtype.name}"
        )
    if list(array.shape[1:]) != expected_shape or array.ndim != len(model_input.shape):
        raise InvalidInput(
            f"{path}: input {model_input.name!r}: expected samples of shape {expected_shape} "
            f"(array [N, {', '.join(map(str, expected_shape))}]), found array shape "
            f"{list(array.shape)}"
        )
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
        if not finite.all():
            sample = int(np.flatnonzero(~finite)[0])
            raise InvalidInput(
                f"{path}: input {model_input.name!r}: sample {sample} holds NaN or infinite "
                f"values ({int((~finite).sum())} samples affected)"
            )


def _check_count(path: Path, name: str, array: np.ndarray, count: int | None) -> int:
    if count is not None and array.shape[0] != count:
        raise InvalidInput(
            f"{path}: array {name!r} has {array.shape[0]} samples, expected {count} "
            "like the arrays before it"
        )
    return array.shape[0]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over name, dtype, shape and little-endian C-order bytes, arrays sorted by name."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = arrays[name]
        canonical = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        header = f"{name}\0{canonical.dtype.str}\0{','.join(map(str, array.shape))}\0"
        digest.update(header.encode())
        digest.update(canonical.tobytes())
    return digest.hexdigest()
