"""Sample sets: the calibration set and the validation set, content-addressed, with a manifest.

Three formats (docs/calibration.md has the details):

- `.npz` — one array per model input (first axis: samples) and, for a validation set, one array
  of integer labels. An optional `__tapeout__` entry (a 0-d unicode array holding JSON) carries
  the set's source and free-form metadata (license, how it was sampled); `tapeout calib pack`
  writes it.
- a folder of `.npy` files — one file per sample (its shape is the per-sample shape); for a
  model with several inputs, one sub-folder per input name with the same file names in each.
- a folder of images (PNG/JPEG, read with Pillow) with a `tapeout-set.json` that declares the
  preprocessing (resize, mode, scale, mean/std, layout); the preprocessing is part of the digest.

A folder may hold a `tapeout-set.json` with `source` and `metadata`. Samples of a folder are
taken in sorted file-name order.

The digest (scheme `DIGEST_SCHEME`) is the sha256 of a header (array names as the set stores
them — none for a folder's single input —, dtypes, per-sample shapes, count, preprocessing) followed by the sorted sha256 digests of every sample's
canonical bytes (C-order, little-endian, arrays by name). It depends on the samples and
nothing else: not on zip entry order, file names, file order on disk or the order of samples
— which the streaming observers do not depend on either. One changed value changes it.

Sets are read in chunks of about `READ_BYTES`: opening, validating, calibrating and
evaluating hold one chunk in memory, whatever the number of samples.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TensorSpec

DIGEST_SCHEME = "sha256-sample-multiset-v1"
META_KEY = "__tapeout__"
FOLDER_MANIFEST = "tapeout-set.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Bytes of samples per read: a chunk and its copy are what reading a set holds in memory
# (a 224x224 RGB float32 sample is 602 KB: 55 of them per read).
READ_BYTES = 32 << 20


def rows_per_read(sample_bytes: int, multiple_of: int = 1) -> int:
    """Samples per read: about READ_BYTES of them, a whole number of `multiple_of` (a model's
    batch), at least one."""
    rows = max(READ_BYTES // max(sample_bytes, 1), 1)
    return max(rows // multiple_of, 1) * multiple_of


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an image file becomes one model input sample, in this order:

    convert to `mode` ("L" grey or "RGB") → resize to `size` (height, width) with `resample`
    (a Pillow filter name) → float32 → multiply by `scale` → subtract `mean` and divide by
    `std` (one value, or one per channel) → `layout` "CHW" (channels first) or "HWC".
    """

    size: tuple[int, int]
    mode: str = "L"
    resample: str = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "CHW"

    @classmethod
    def from_dict(cls, value: Mapping[str, object], where: str) -> "ImagePreprocessing":
        """Raises: InvalidInput naming the field and what is expected."""
        if not isinstance(value, Mapping):
            raise InvalidInput(f"{where}: preprocessing: expected a mapping, found {value!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidInput(f"{where}: preprocessing: unknown {unknown}; expected some of {sorted(known)}")
        try:
            size = tuple(int(v) for v in value["size"])  # type: ignore[union-attr]
            spec = cls(
                size=size,  # type: ignore[arg-type]
                mode=str(value.get("mode", "L")),
                resample=str(value.get("resample", "bilinear")),
                scale=float(value.get("scale", 1.0 / 255.0)),  # type: ignore[arg-type]
                mean=tuple(float(v) for v in value.get("mean", (0.0,))),  # type: ignore[union-attr]
                std=tuple(float(v) for v in value.get("std", (1.0,))),  # type: ignore[union-attr]
                layout=str(value.get("layout", "CHW")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInput(
                f"{where}: preprocessing: expected size [height, width] and numeric scale, "
                f"mean, std ({error})"
            ) from error
        spec.check(where)
        return spec

    def check(self, where: str) -> None:
        from PIL import Image

        channels = 1 if self.mode == "L" else 3
        problems = []
        if len(self.size) != 2 or min(self.size) < 1:
            problems.append(f"size: expected [height, width] > 0, found {list(self.size)}")
        if self.mode not in ("L", "RGB"):
            problems.append(f"mode: expected 'L' or 'RGB', found {self.mode!r}")
        if self.layout not in ("CHW", "HWC"):
            problems.append(f"layout: expected 'CHW' or 'HWC', found {self.layout!r}")
        if self.resample.upper() not in Image.Resampling.__members__:
            problems.append(
                f"resample: expected one of {sorted(m.lower() for m in Image.Resampling.__members__)}, "
                f"found {self.resample!r}"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, channels):
                problems.append(f"{name}: expected 1 or {channels} values, found {len(values)}")
        if any(v == 0 for v in self.std):
            problems.append("std: expected non-zero values")
        if problems:
            raise InvalidInput(f"{where}: preprocessing: " + "; ".join(problems))

    @property
    def shape(self) -> tuple[int, ...]:
        channels = 1 if self.mode == "L" else 3
        height, width = self.size
        return (channels, height, width) if self.layout == "CHW" else (height, width, channels)

    def apply(self, path: Path) -> np.ndarray:
        """Raises: InvalidInput naming the file when Pillow cannot read it."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
                height, width = self.size
                image = image.resize((width, height), Image.Resampling[self.resample.upper()])
                array = np.asarray(image, dtype=np.float32)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise InvalidInput(f"{path}: not a readable image ({error})") from error
        if array.ndim == 2:
            array = array[:, :, None]
        array = array * np.float32(self.scale)
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "CHW":
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array, dtype=np.float32)

    def to_dict(self) -> dict[str, object]:
        value = asdict(self)
        return {key: list(v) if isinstance(v, tuple) else v for key, v in value.items()}


@dataclass(frozen=True)
class SampleSet:
    """A validated sample set. `inputs` carry per-sample shapes (no sample axis).

    `path` is the `.npz` file or the folder; `files` the sample files of a folder, in order
    (relative to `path`); `metadata` and `source` come from the set itself.
    """

    path: Path
    digest: str
    count: int
    inputs: tuple[TensorSpec, ...]
    label_key: str | None = None
    format: str = "npz"
    files: tuple[str, ...] = ()
    source: Mapping[str, object] | None = None
    metadata: Mapping[str, object] = field(default_factory=dict)
    preprocessing: ImagePreprocessing | None = None

    def manifest(self) -> dict[str, object]:
        """The manifest written beside the set in every bundle."""
        manifest: dict[str, object] = {
            "digest": self.digest,
            "digest_scheme": DIGEST_SCHEME,
            "count": self.count,
            "format": self.format,
            "file": self.path.name,
            "inputs": [
                {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}
                for spec in self.inputs
            ],
            "labels": self.label_key,
            "source": dict(self.source) if self.source is not None else None,
            "metadata": dict(self.metadata),
        }
        if self.preprocessing is not None:
            manifest["preprocessing"] = self.preprocessing.to_dict()
        return manifest

    def arrays(self) -> dict[str, np.ndarray]:
        """Every input array (and the labels, if any), loaded into memory."""
        chunks = list(self._chunks(self._names(), max(self.count, 1)))
        return {name: np.concatenate([c[name] for c in chunks]) for name in self._names()}

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Input batches of `batch_size` samples, read as they are needed; the last may be short."""
        if batch_size < 1:
            raise InvalidInput(f"batch size: expected >= 1, found {batch_size}")
        yield from self._chunks([spec.name for spec in self.inputs], batch_size)

    def chunks(self, multiple_of: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Every sample's inputs, read about READ_BYTES at a time, each chunk a whole number of
        `multiple_of` samples (a model's batch) but the last."""
        sample_bytes = _sample_bytes((spec.shape, spec.dtype) for spec in self.inputs)
        return self.batches(rows_per_read(sample_bytes, multiple_of))

    def labels(self) -> np.ndarray | None:
        """The labels, one integer per sample, read without the inputs; None for a set without."""
        if self.label_key is None:
            return None
        chunks = list(self._chunks([self.label_key], max(self.count, 1)))
        return np.concatenate([chunk[self.label_key] for chunk in chunks])

    def _names(self) -> list[str]:
        names = [spec.name for spec in self.inputs]
        return names + ([self.label_key] if self.label_key else [])

    def _chunks(self, names: Sequence[str], size: int) -> Iterator[dict[str, np.ndarray]]:
        if self.format == "npz":
            yield from _npz_chunks(self.path, names, size)
            return
        for start in range(0, self.count, size):
            stop = min(start + size, self.count)
            yield {name: self._read_folder(name, start, stop) for name in names}

    def _read_folder(self, name: str, start: int, stop: int) -> np.ndarray:
        files = self.files[start:stop]
        if self.format == "images":
            assert self.preprocessing is not None
            return np.stack([self.preprocessing.apply(self.path / f) for f in files])
        folder = self.path / name if len(self.inputs) > 1 else self.path
        return np.stack([_load_npy(folder / f) for f in files])


# --------------------------------------------------------------------------------------------
# Opening a set


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
        InvalidInput: the set is missing or unreadable, an input or the labels are missing,
            a shape or dtype differs, a value is NaN or infinite, the set is empty or has
            fewer than `minimum_count` samples. The message names the set, the array and,
            for values, the offending sample (its index, and its file for a folder).
    """
    if path.is_dir():
        return _load_folder(path, model_inputs, label_key, minimum_count)
    if not path.is_file():
        raise InvalidInput(f"{path}: sample set not found")
    return _load_npz(path, model_inputs, label_key, minimum_count)


def _load_npz(
    path: Path, model_inputs: tuple[TensorSpec, ...], label_key: str | None, minimum_count: int
) -> SampleSet:
    headers = _npz_headers(path)
    available = sorted(name for name in headers if name != META_KEY)
    count: int | None = None
    specs: list[TensorSpec] = []
    for model_input in model_inputs:
        if model_input.name not in headers:
            raise InvalidInput(f"{path}: no array named {model_input.name!r}; the file holds {available}")
        shape, dtype = headers[model_input.name]
        _check_spec(path, model_input, shape, dtype)
        count = _check_count(path, model_input.name, shape[0], count)
        specs.append(TensorSpec(model_input.name, tuple(shape[1:]), dtype.name))
    names = [spec.name for spec in specs]
    if label_key is not None:
        if label_key not in headers:
            raise InvalidInput(f"{path}: no array named {label_key!r}; the file holds {available}")
        shape, dtype = headers[label_key]
        if len(shape) != 1 or not np.issubdtype(dtype, np.integer):
            raise InvalidInput(
                f"{path}: labels {label_key!r}: expected a 1-D integer array, "
                f"found {dtype.name} of shape {list(shape)}"
            )
        count = _check_count(path, label_key, shape[0], count)
        names.append(label_key)
    assert count is not None  # model_inputs is never empty: the config requires one input
    _check_minimum(path, count, minimum_count)
    hasher = _SetHasher(
        {name: (headers[name][1], tuple(headers[name][0][1:])) for name in names}, count, None
    )
    start = 0
    sample_bytes = _sample_bytes((headers[name][0][1:], headers[name][1]) for name in names)
    for chunk in _npz_chunks(path, names, rows_per_read(sample_bytes)):
        for spec in specs:
            _check_finite(path, spec.name, chunk[spec.name], start, None)
        hasher.update(chunk)
        start += len(chunk[names[0]])
    meta = _npz_meta(path)
    return SampleSet(
        path, hasher.hexdigest(), count, tuple(specs), label_key, "npz",
        source=meta.get("source"), metadata=meta.get("metadata", {}),
    )


def _load_folder(
    path: Path, model_inputs: tuple[TensorSpec, ...], label_key: str | None, minimum_count: int
) -> SampleSet:
    declared = _folder_manifest(path)
    if label_key is not None:
        raise InvalidInput(f"{path}: labels {label_key!r}: only .npz sets carry labels")
    fmt = declared.get("format")
    preprocessing = None
    if fmt == "images" or (fmt is None and _list(path, IMAGE_SUFFIXES)):
        if "preprocessing" not in declared:
            raise InvalidInput(
                f"{path}: a folder of images needs {FOLDER_MANIFEST} with a 'preprocessing' "
                "entry (size, mode, scale, mean, std, layout)"
            )
        preprocessing = ImagePreprocessing.from_dict(declared["preprocessing"], str(path / FOLDER_MANIFEST))
        if len(model_inputs) != 1:
            raise InvalidInput(f"{path}: a folder of images feeds one model input, the model has {len(model_inputs)}")
        files = tuple(_list(path, IMAGE_SUFFIXES))
        fmt = "images"
    else:
        fmt = "npy"
        if len(model_inputs) == 1:
            files = tuple(_list(path, (".npy",)))
        else:
            per_input = {spec.name: _list(path / spec.name, (".npy",)) for spec in model_inputs}
            files = tuple(per_input[model_inputs[0].name])
            for name, listed in per_input.items():
                if listed != list(files):
                    raise InvalidInput(
                        f"{path}: sub-folder {name!r} holds {len(listed)} files, expected the same "
                        f"{len(files)} file names as {model_inputs[0].name!r}"
                    )
    count = len(files)
    _check_minimum(path, count, minimum_count)
    partial = SampleSet(
        path, "", count, tuple(TensorSpec(s.name, tuple(s.shape[1:]), s.dtype) for s in model_inputs),
        None, fmt, files, declared.get("source"), declared.get("metadata", {}), preprocessing,
    )
    specs = []
    for model_input in model_inputs:
        first = partial._read_folder(model_input.name, 0, 1)
        _check_spec(path, model_input, first.shape, first.dtype, sample=_sample_name(files, 0))
        specs.append(TensorSpec(model_input.name, tuple(first.shape[1:]), first.dtype.name))
    # A folder's single input has no stored name (the model gives it one): hash it as "".
    stored = {s.name: (s.name if len(specs) > 1 else "") for s in specs}
    hasher = _SetHasher(
        {stored[s.name]: (np.dtype(s.dtype), s.shape) for s in specs},
        count,
        preprocessing.to_dict() if preprocessing else None,
    )
    step = rows_per_read(_sample_bytes((spec.shape, spec.dtype) for spec in specs))
    for start in range(0, count, step):
        stop = min(start + step, count)
        chunk = {}
        for model_input in model_inputs:
            chunk[stored[model_input.name]] = _read_checked(partial, path, model_input, files, start, stop)
        hasher.update(chunk)
    return SampleSet(
        path, hasher.hexdigest(), count, tuple(specs), None, fmt, files,
        declared.get("source"), declared.get("metadata", {}), preprocessing,
    )


def _read_checked(
    partial: SampleSet, path: Path, model_input: TensorSpec, files: Sequence[str], start: int, stop: int
) -> np.ndarray:
    arrays = []
    folder = path / model_input.name if len(partial.inputs) > 1 else path
    for index in range(start, stop):
        if partial.format == "images":
            assert partial.preprocessing is not None
            array = partial.preprocessing.apply(path / files[index])
        else:
            array = _load_npy(folder / files[index])
        _check_spec(path, model_input, (1, *array.shape), array.dtype, sample=_sample_name(files, index))
        arrays.append(array)
    stacked = np.stack(arrays)
    _check_finite(path, model_input.name, stacked, start, files)
    return stacked


def _sample_name(files: Sequence[str], index: int) -> str:
    return f"sample {index} ({files[index]})"


# --------------------------------------------------------------------------------------------
# Checks


def _check_spec(
    path: Path, model_input: TensorSpec, shape: Sequence[int], dtype: np.dtype, sample: str | None = None
) -> None:
    where = f"{path}: input {model_input.name!r}" + (f", {sample}" if sample else "")
    expected_shape = list(model_input.shape[1:])
    if dtype.name != model_input.dtype:
        raise InvalidInput(f"{where}: expected dtype {model_input.dtype}, found {dtype.name}")
    if list(shape[1:]) != expected_shape or len(shape) != len(model_input.shape):
        if sample:
            raise InvalidInput(
                f"{where}: expected a sample of shape {expected_shape}, found {list(shape[1:])}"
            )
        raise InvalidInput(
            f"{where}: expected samples of shape {expected_shape} "
            f"(array [N, {', '.join(map(str, expected_shape))}]), found array shape {list(shape)}"
        )


def _check_finite(
    path: Path, name: str, array: np.ndarray, start: int, files: Sequence[str] | None
) -> None:
    if not np.issubdtype(array.dtype, np.floating) or array.shape[0] == 0:
        return
    finite = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
    if not finite.all():
        index = start + int(np.flatnonzero(~finite)[0])
        sample = _sample_name(files, index) if files else f"sample {index}"
        raise InvalidInput(
            f"{path}: input {name!r}: {sample} holds NaN or infinite values "
            f"({int((~finite).sum())} samples affected in samples {start}..{start + len(finite) - 1})"
        )


def _check_count(path: Path, name: str, found: int, count: int | None) -> int:
    if count is not None and found != count:
        raise InvalidInput(
            f"{path}: array {name!r} has {found} samples, expected {count} like the arrays before it"
        )
    return found


def _check_minimum(path: Path, count: int, minimum_count: int) -> None:
    if count < max(minimum_count, 1):
        raise InvalidInput(f"{path}: expected at least {max(minimum_count, 1)} samples, found {count}")


# --------------------------------------------------------------------------------------------
# The digest


class _SetHasher:
    """Per-sample sha256 digests, sorted and hashed after a header (see the module docstring)."""

    def __init__(
        self,
        arrays: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
        count: int,
        preprocessing: Mapping[str, object] | None,
    ) -> None:
        self.names = sorted(arrays)
        header = {
            "scheme": DIGEST_SCHEME,
            "count": count,
            "arrays": [
                [name, np.dtype(arrays[name][0]).newbyteorder("<").str, list(arrays[name][1])]
                for name in self.names
            ],
            "preprocessing": preprocessing,
        }
        self.header = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        self.samples: list[bytes] = []

    def update(self, chunk: Mapping[str, np.ndarray]) -> None:
        canonical = [
            np.ascontiguousarray(chunk[name], dtype=chunk[name].dtype.newbyteorder("<"))
            for name in self.names
        ]
        for index in range(canonical[0].shape[0]):
            digest = hashlib.sha256()
            for array in canonical:
                digest.update(array[index].tobytes())
            self.samples.append(digest.digest())

    def hexdigest(self) -> str:
        digest = hashlib.sha256(self.header)
        for sample in sorted(self.samples):
            digest.update(sample)
        return digest.hexdigest()


def digest_arrays(
    arrays: Mapping[str, np.ndarray], preprocessing: Mapping[str, object] | None = None
) -> str:
    """The set digest of in-memory arrays (first axis: samples)."""
    first = next(iter(arrays.values()))
    hasher = _SetHasher(
        {name: (array.dtype, tuple(array.shape[1:])) for name, array in arrays.items()},
        first.shape[0],
        preprocessing,
    )
    hasher.update(arrays)
    return hasher.hexdigest()


# --------------------------------------------------------------------------------------------
# Reading files


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in the archive, from the .npy headers alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    shape, _, dtype = _read_npy_header(member, f"{path}: {info.filename}")
                headers[info.filename[: -len(".npy")]] = (shape, dtype)
    except (OSError, zipfile.BadZipFile) as error:
        raise InvalidInput(f"{path}: not a readable .npz file ({error})") from error
    return headers


def _read_npy_header(stream, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except ValueError as error:
        raise InvalidInput(f"{where}: not a readable .npy array ({error})") from error
    if dtype.hasobject:
        raise InvalidInput(f"{where}: holds Python objects, which need pickle; it is never loaded")
    return tuple(shape), fortran, dtype


def _sample_bytes(arrays: Iterable[tuple[Sequence[int], object]]) -> int:
    """The bytes of one sample: (per-sample shape, dtype) of each of its arrays."""
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in arrays)


def _npz_chunks(path: Path, names: Sequence[str], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Read the named arrays `size` samples at a time, straight from the zip members."""
    with zipfile.ZipFile(path) as archive:
        readers = [_member_chunks(archive, path, name, size) for name in names]
        while True:
            chunk = {name: next(reader, None) for name, reader in zip(names, readers)}
            if any(value is None for value in chunk.values()):
                return
            yield chunk  # type: ignore[misc]


def _member_chunks(archive: zipfile.ZipFile, path: Path, name: str, size: int) -> Iterator[np.ndarray]:
    with archive.open(name + ".npy") as member:
        shape, fortran, dtype = _read_npy_header(member, f"{path}: {name}")
        native = dtype.newbyteorder("=")
        if fortran and len(shape) > 1:  # rare: load whole, then slice
            array = np.load(path, allow_pickle=False)[name]
            for start in range(0, shape[0], size):
                yield np.ascontiguousarray(array[start : start + size], dtype=native)
            return
        per_sample = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], size):
            rows = min(size, shape[0] - start)
            data = member.read(rows * per_sample)
            if len(data) != rows * per_sample:
                raise InvalidInput(f"{path}: array {name!r} is truncated at sample {start}")
            array = np.frombuffer(data, dtype=dtype).reshape((rows, *shape[1:]))
            yield array.astype(native, copy=False) if dtype != native else array.copy()


def _npz_meta(path: Path) -> dict[str, object]:
    with np.load(path, allow_pickle=False) as archive:
        if META_KEY not in archive.files:
            return {}
        try:
            meta = json.loads(str(archive[META_KEY]))
        except (ValueError, json.JSONDecodeError) as error:
            raise InvalidInput(f"{path}: {META_KEY}: not JSON ({error})") from error
    if not isinstance(meta, dict):
        raise InvalidInput(f"{path}: {META_KEY}: expected a JSON object")
    return meta


def _folder_manifest(path: Path) -> dict[str, object]:
    manifest = path / FOLDER_MANIFEST
    if not manifest.is_file():
        return {}
    try:
        document = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{manifest}: not readable JSON ({error})") from error
    if not isinstance(document, dict):
        raise InvalidInput(f"{manifest}: expected a JSON object")
    return document


def _list(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{path}: not a readable .npy array ({error})") from error
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
