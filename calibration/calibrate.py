"""Find the range of every activation tensor by running the fp32 model on the calibration set.

This first version drives ONNX Runtime's calibrators through a streaming data reader; the
table it produces is the seam the quantizer consumes, whatever observer made it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tapeout.calibration.dataset import SampleSet
from tapeout.calibration.table import CalibrationTable, TensorRange
from tapeout.compilers.errors import InvalidInput

METHODS = ("minmax", "entropy", "percentile")


class _StreamingReader:
    """ONNX Runtime's CalibrationDataReader over a sample set, one model batch at a time.

    A model with a fixed batch of B takes the set in chunks of B; a short last chunk is
    dropped rather than padded, since padding would add values the data never holds.
    """

    def __init__(self, samples: SampleSet, batch_size: int) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            batch
            for batch in samples.batches(batch_size)
            if all(array.shape[0] == batch_size for array in batch.values())
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def calibrate(
    model_path: Path,
    samples: SampleSet,
    *,
    method: str,
    batch_size: int,
    workdir: Path,
) -> CalibrationTable:
    """Compute a calibration table for every float activation of the model at `model_path`.

    Raises:
        InvalidInput: the method is unknown, or the set has fewer samples than one batch.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    ort_methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in ort_methods:
        raise InvalidInput(f"calibration method: expected one of {list(METHODS)}, found {method!r}")
    if samples.count < batch_size:
        raise InvalidInput(
            f"{samples.path}: expected at least one batch of {batch_size} samples, "
            f"found {samples.count}"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    calibrator = create_calibrator(
        model_path,
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=ort_methods[method],
        providers=["CPUExecutionProvider"],
    )
    calibrator.collect_data(_StreamingReader(samples, batch_size))
    computed = calibrator.compute_data()
    ranges = {
        name: TensorRange(float(np.asarray(low).min()), float(np.asarray(high).max()))
        for name, (low, high) in ((name, data.range_value) for name, data in computed.items())
    }
    return CalibrationTable(
        ranges=ranges,
        method=method,
        set_digest=samples.digest,
        sample_count=samples.count - samples.count % batch_size,
        options={"observer": f"onnxruntime.{ort_methods[method].name}", "batch_size": batch_size},
    )
