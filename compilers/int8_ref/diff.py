"""Compare two sets of outputs: count and histogram of differing elements, top-1 agreement.

Used by the tests and by a `tapeout diff` command: `diff_outputs(reference, candidate,
lsb={"logits": 0.05})` measures differences in units of the output's quantization step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def diff_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                 lsb: Mapping[str, float] | None = None) -> dict[str, dict]:
    """Per output: elements, differing count, histogram of |diff| in LSB, top-1 agreement."""
    result = {}
    for name, ref in reference.items():
        got = np.asarray(candidate[name])
        ref = np.asarray(ref)
        if got.shape != ref.shape:
            raise ValueError(f"output {name!r}: shapes differ {ref.shape} vs {got.shape}")
        step = float(lsb[name]) if lsb and name in lsb else None
        d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        units = np.rint(d / step).astype(np.int64) if step else (d > 0).astype(np.int64)
        values, counts = np.unique(units[units > 0], return_counts=True)
        entry = {
            "elements": int(ref.size),
            "differing": int((units > 0).sum()),
            "histogram": {int(v): int(c) for v, c in zip(values, counts)},
            "max_abs_diff": float(d.max()) if d.size else 0.0,
        }
        if ref.ndim >= 1 and ref.shape[-1] > 1:
            a = ref.reshape(-1, ref.shape[-1]).argmax(-1)
            b = got.reshape(-1, ref.shape[-1]).argmax(-1)
            entry["top1_agreement"] = float((a == b).mean())
        result[name] = entry
    return result


def compare_with_onnxruntime(runner, model_path, feeds, lsb: Mapping[str, float] | None = None
                             ) -> dict[str, dict]:
    """Run `runner` (a loaded int8-ref artifact) and ONNX Runtime (CPU, default optimisation)
    on the same quantized model and inputs; aggregate diff_outputs over all `feeds`.

    `lsb` is usually `artifact.report["output_scales"]`. Returns, per output: elements,
    differing, histogram (|diff| in LSB -> count), max_abs_diff, top1_agreement.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    total: dict[str, dict] = {}
    top1: dict[str, list[float]] = {}
    for feed in feeds:
        ref = dict(zip(names, sess.run(None, dict(feed))))
        for name, e in diff_outputs(ref, runner.run(feed), lsb).items():
            t = total.setdefault(name, {"elements": 0, "differing": 0, "histogram": {},
                                        "max_abs_diff": 0.0})
            t["elements"] += e["elements"]
            t["differing"] += e["differing"]
            t["max_abs_diff"] = max(t["max_abs_diff"], e["max_abs_diff"])
            for k, v in e["histogram"].items():
                t["histogram"][k] = t["histogram"].get(k, 0) + v
            if "top1_agreement" in e:
                top1.setdefault(name, []).append(e["top1_agreement"])
    for name, values in top1.items():
        total[name]["top1_agreement"] = float(np.mean(values))
    for t in total.values():
        t["histogram"] = dict(sorted(t["histogram"].items()))
    return total
