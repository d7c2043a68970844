"""Build a calibration set from raw files with a recorded sampling rule; describe any set.

`pack` draws `count` samples without replacement with `numpy.random.default_rng(seed)` from the
source's samples in their canonical order (array rows for `.npz`, sorted file names for a
folder), keeps them in that order, and records the rule, the seed and the source (name, format,
count, digest) in the new set: inside an `.npz` as its `__tapeout__` entry, in a folder as
`tapeout-set.json`. The same source, count and seed give the same set, byte for byte.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tapeout.calibration.dataset import (
    FOLDER_MANIFEST,
    IMAGE_SUFFIXES,
    META_KEY,
    ImagePreprocessing,
    SampleSet,
    _folder_manifest,
    _list,
    _npz_headers,
    _npz_meta,
    load_sample_set,
)
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TensorSpec

SAMPLING_RULE = "uniform without replacement: numpy.random.default_rng(seed).choice(n, count, replace=False), sorted"
DEFAULT_INPUT = "input"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def describe(path: Path, *, label_key: str | None = None, input_names: tuple[str, ...] = ()) -> SampleSet:
    """Open a set without a model: its own arrays (or files) say the inputs' shapes and dtypes.

    Raises:
        InvalidInput: as `load_sample_set`, or the set's format cannot be recognised.
    """
    return load_sample_set(path, _own_inputs(path, label_key, input_names), label_key=label_key)


def labels_of(path: Path) -> str | None:
    """The labels array of an `.npz` set: the one `pack` recorded, else its only 1-D integer
    array beside other arrays (what a validation set's labels look like). None for folders."""
    if not path.is_file():
        return None
    recorded = _npz_meta(path).get("labels")
    if isinstance(recorded, str):
        return recorded
    headers = {name: value for name, value in _npz_headers(path).items() if name != META_KEY}
    candidates = [
        name for name, (shape, dtype) in headers.items() if len(shape) == 1 and np.issubdtype(dtype, np.integer)
    ]
    return candidates[0] if len(candidates) == 1 and len(headers) > 1 else None


def _own_inputs(path: Path, label_key: str | None, input_names: tuple[str, ...]) -> tuple[TensorSpec, ...]:
    if path.is_file():
        headers = _npz_headers(path)
        names = input_names or tuple(sorted(n for n in headers if n not in (META_KEY, label_key)))
        missing = [n for n in names if n not in headers]
        if missing or not names:
            raise InvalidInput(f"{path}: no arrays named {missing or 'as inputs'}; the file holds {sorted(headers)}")
        counts = {n: headers[n][0][0] if headers[n][0] else None for n in (*names, *([label_key] if label_key else []))}
        if not input_names and len(set(counts.values())) > 1:
            raise InvalidInput(
                f"{path}: its arrays hold different numbers of samples ({', '.join(f'{n}: {c}' for n, c in counts.items())}); "
                "name the ones that form the set: calib pack --array INPUT=ARRAY --labels LABELS=ARRAY"
            )
        return tuple(TensorSpec(n, (1, *headers[n][0][1:]), headers[n][1].name) for n in names)
    if not path.is_dir():
        raise InvalidInput(f"{path}: sample set not found")
    declared = _folder_manifest(path)
    names = input_names or tuple(declared.get("inputs", ())) or (DEFAULT_INPUT,)
    if declared.get("format") == "images" or _list(path, IMAGE_SUFFIXES):
        if "preprocessing" not in declared:
            raise InvalidInput(f"{path}: a folder of images needs {FOLDER_MANIFEST} with 'preprocessing'")
        spec = ImagePreprocessing.from_dict(declared["preprocessing"], str(path / FOLDER_MANIFEST))
        return (TensorSpec(names[0], (1, *spec.shape), "float32"),)
    specs = []
    for name in names:
        folder = path / name if len(names) > 1 else path
        files = _list(folder, (".npy",))
        if not files:
            raise InvalidInput(f"{folder}: expected .npy files (one per sample), found none")
        first = np.load(folder / files[0], allow_pickle=False, mmap_mode="r")
        specs.append(TensorSpec(name, (1, *first.shape), first.dtype.name))
    return tuple(specs)


def pack(
    source: Path,
    output: Path,
    *,
    count: int | None,
    seed: int,
    input_name: str | None = None,
    preprocessing: ImagePreprocessing | None = None,
    metadata: Mapping[str, object] | None = None,
    label_key: str | None = None,
    arrays: Mapping[str, str] | None = None,
    label_array: str | None = None,
) -> SampleSet:
    """Write a set of `count` samples drawn from `source` to `output` and return it, opened.

    `output` ending in `.npz` gives an `.npz` set (images are decoded and preprocessed into
    float32 arrays, the preprocessing recorded); any other `output` a folder of the source's
    kind holding copies of the chosen files. `input_name` names the array a folder's samples
    become (default: the folder's declared input, else "input"). From an `.npz` holding more
    than one set (`Xtr, ytr, Xte, yte`), `arrays` maps each model input to its source array
    (`{"input": "Xtr"}`) and `label_array` names the labels' source array, written as
    `label_key`; the set records both.

    Raises:
        InvalidInput: the source is unreadable or holds fewer than `count` samples, `output`
            already exists, a named array is missing, or a folder of images has no
            preprocessing.
    """
    if output.exists():
        raise InvalidInput(f"{output}: already exists; pack never overwrites a set")
    if (arrays or label_array) and not (source.is_file() and source.suffix == ".npz"):
        raise InvalidInput(f"{source}: arrays can be chosen from an .npz file only (--input-name names a folder's)")
    declared = _folder_manifest(source) if source.is_dir() else {}
    if preprocessing is None and "preprocessing" in declared:
        preprocessing = ImagePreprocessing.from_dict(declared["preprocessing"], str(source / FOLDER_MANIFEST))
    names = tuple((arrays or {}).values()) or ((input_name,) if input_name else ())
    if source.is_dir() and _list(source, IMAGE_SUFFIXES) and preprocessing is None:
        raise InvalidInput(f"{source}: a folder of images needs a preprocessing (--size and friends)")
    label_source = label_array or label_key
    original = _open_source(source, names, preprocessing, label_source)
    # Source array → the name it gets in the set.
    renamed = {value: key for key, value in (arrays or {}).items()}
    if label_source is not None and label_key is not None:
        renamed[label_source] = label_key
    total = original.count
    chosen = _choose(total, count, seed, source)
    record = {
        "source": {
            "name": source.name,
            "format": original.format,
            "count": total,
            "digest": original.digest,
            "sampling": {"rule": SAMPLING_RULE, "count": len(chosen), "seed": seed},
        },
        "metadata": dict(metadata or declared.get("metadata", {}) or {}),
    }
    label = label_key if original.format == "npz" else None
    if renamed:
        record["source"]["arrays"] = {renamed.get(name, name): name for name in renamed}  # type: ignore[index]
    if label is not None:
        record["labels"] = label
    if output.suffix == ".npz":
        _write_npz(original, chosen, output, record, renamed)
        return load_sample_set(
            output,
            tuple(TensorSpec(renamed.get(s.name, s.name), (1, *s.shape), s.dtype) for s in original.inputs),
            label_key=label,
        )
    if original.format == "npz":
        raise InvalidInput(f"{output}: an .npz source packs into an .npz set; give -o NAME.npz")
    _write_folder(original, chosen, output, record)
    return describe(output)


def _open_source(
    source: Path, names: tuple[str, ...], preprocessing: ImagePreprocessing | None, label_key: str | None
) -> SampleSet:
    if source.is_dir() and preprocessing is not None:
        declared = _folder_manifest(source)
        if "preprocessing" not in declared:  # raw images: declare the preprocessing in memory
            inputs = (TensorSpec(names[0] if names else DEFAULT_INPUT, (1, *preprocessing.shape), "float32"),)
            return _images_with(source, inputs, preprocessing)
    return describe(source, label_key=label_key, input_names=names)


def _images_with(source: Path, inputs: tuple[TensorSpec, ...], preprocessing: ImagePreprocessing) -> SampleSet:
    """A folder of images that has no manifest, opened with the given preprocessing."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tapeout-pack-") as tmp:
        view = Path(tmp) / "set"
        view.mkdir()
        for name in _list(source, IMAGE_SUFFIXES):
            (view / name).symlink_to((source / name).resolve())
        (view / FOLDER_MANIFEST).write_text(
            json.dumps({"format": "images", "preprocessing": preprocessing.to_dict()})
        )
        opened = load_sample_set(view, inputs)
    # Same files, same order: point the set back at the source.
    return SampleSet(
        source, opened.digest, opened.count, opened.inputs, None, "images", opened.files,
        None, {}, preprocessing,
    )


def _choose(total: int, count: int | None, seed: int, source: Path) -> np.ndarray:
    if count is None:
        return np.arange(total)
    if count < 1:
        raise InvalidInput(f"count: expected at least 1, found {count}")
    if count > total:
        raise InvalidInput(f"{source}: expected at least {count} samples to draw from, found {total}")
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def _write_npz(
    original: SampleSet, chosen: np.ndarray, output: Path, record: dict, renamed: Mapping[str, str]
) -> None:
    """Uncompressed, fixed zip times: the same inputs give the same bytes. `renamed`: source
    array name → its name in the set."""
    arrays = original.arrays()
    output.parent.mkdir(parents=True, exist_ok=True)
    if original.preprocessing is not None:
        record["preprocessing"] = original.preprocessing.to_dict()
    entries = {renamed.get(name, name): np.ascontiguousarray(array[chosen]) for name, array in arrays.items()}
    entries[META_KEY] = np.array(json.dumps(record, sort_keys=True))
    with zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, entries[name], allow_pickle=False)


def _write_folder(original: SampleSet, chosen: np.ndarray, output: Path, record: dict) -> None:
    output.mkdir(parents=True)
    files = [original.files[i] for i in chosen.tolist()]
    names = [spec.name for spec in original.inputs]
    for name in names:
        src = original.path / name if len(names) > 1 and original.format == "npy" else original.path
        dst = output / name if len(names) > 1 and original.format == "npy" else output
        dst.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copyfile(src / file, dst / file)
    manifest = {"format": original.format, "inputs": names, **record}
    if original.preprocessing is not None:
        manifest["preprocessing"] = original.preprocessing.to_dict()
    (output / FOLDER_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
