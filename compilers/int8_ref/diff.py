"""Compare two sets of outputs: count and histogram of differing elements, top-1 agreement
(counted with tapeout.compilers.measure, as `tapeout diff` counts them).

Used by the tests: `diff_outputs(reference, candidate, lsb={"logits": 0.05})` measures
differences in units of the output's quantization step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..measure import LsbHistogram


def _entry(counted: LsbHistogram) -> dict:
    """The report of one output: elements, differing, histogram of |diff| in LSB (differing
    elements only), max_abs_diff and, for class scores, top1_agreement."""
    entry = {
        "elements": counted.elements,
        "differing": counted.differing,
        "histogram": {value: count for value, count in sorted(counted.histogram.items()) if value > 0},
        "max_abs_diff": counted.max_abs_diff,
    }
    if counted.top1_agreement is not None:
        entry["top1_agreement"] = counted.top1_agreement
    return entry


def _count(counted: dict[str, LsbHistogram], reference: Mapping[str, np.ndarray],
           candidate: Mapping[str, np.ndarray], lsb: Mapping[str, float] | None) -> None:
    for name, ref in reference.items():
        got, ref = np.asarray(candidate[name]), np.asarray(ref)
        if got.shape != ref.shape:
            raise ValueError(f"output {name!r}: shapes differ {ref.shape} vs {got.shape}")
        counted.setdefault(name, LsbHistogram()).add(ref, got, (lsb or {}).get(name))


def diff_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                 lsb: Mapping[str, float] | None = None) -> dict[str, dict]:
    """Per output: elements, differing count, histogram of |diff| in LSB, top-1 agreement."""
    counted: dict[str, LsbHistogram] = {}
    _count(counted, reference, candidate, lsb)
    return {name: _entry(item) for name, item in counted.items()}


def compare_with_onnxruntime(runner, model_path, feeds, lsb: Mapping[str, float] | None = None
                             ) -> dict[str, dict]:
    """Run `runner` (a loaded int8-ref artifact) and ONNX Runtime (CPU, default optimisation)
    on the same quantized model and inputs; the differences over all `feeds`, as `diff_outputs`
    reports them (top-1 agreement over every row of every feed).

    `lsb` is usually `artifact.report["output_scales"]`.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    counted: dict[str, LsbHistogram] = {}
    for feed in feeds:
        _count(counted, dict(zip(names, sess.run(None, dict(feed)))), runner.run(feed), lsb)
    return {name: _entry(item) for name, item in counted.items()}
