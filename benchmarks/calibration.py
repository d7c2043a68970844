"""tapeout's calibrators against ONNX Runtime's, on the digits example, at 200 / 2,000 / 20,000 samples.

    .venv/bin/python benchmarks/calibration.py [--sizes 200 2000 20000] [--repeat N] [--json OUT.json]

Exports the example model once into a temporary directory, writes one calibration set per
size (the 300 committed calibration images, repeated and augmented by one-pixel shifts and a
brightness scale so no two samples are equal), then runs every (calibrator, method, size) in
its own subprocess, so peak RSS (VmHWM, taken right after calibration) is that method's
alone. Wall time covers opening the set and calibrating, not the interpreter start or imports.
Each table is then used to quantize the model (tapeout's quantizer, the same for both) and the
int8 model is measured on the example's 500 validation images: top-1 accuracy, top-1 agreement
with the fp32 model, and the RMS difference of its logits from fp32's (one image is 0.002 of
top-1, so the last two tell methods apart where top-1 cannot).

ONNX Runtime's calibrators run as a user would run them: `create_calibrator` with its
defaults, fed one sample at a time (the exported model's batch is fixed at 1).

Bars (checked and printed): peak RSS at the largest size within 1.2x of the size before it for
every tapeout method; tapeout's time per sample no worse than ONNX Runtime's MinMax at the
same size; int8 accuracy at least ONNX Runtime's for the same method (mse against MinMax).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits"
INPUT_SHAPE = (1, 1, 16, 16)
SIZES = (200, 2000, 20000)
RUNS = (
    ("onnxruntime", "minmax"),
    ("onnxruntime", "percentile"),
    ("onnxruntime", "entropy"),
    ("tapeout", "minmax"),
    ("tapeout", "percentile"),
    ("tapeout", "entropy"),
    ("tapeout", "mse"),
)
RSS_BAR = 1.2


def _inputs():
    from tapeout.compilers.interface import TensorSpec

    return (TensorSpec("image", INPUT_SHAPE, "float32"),)


def export(workdir: Path) -> Path:
    from tapeout.compilers.frontends import PyTorchSource, export_model

    source = PyTorchSource(EXAMPLE / "model.py", "build_model", EXAMPLE / "weights.pt")
    return export_model(source, _inputs(), ("logits",), workdir / "model.onnx").path


def augmented_set(count: int, path: Path, seed: int = 0) -> Path:
    """`count` samples: the committed images first, then shifted and rescaled copies."""
    with np.load(EXAMPLE / "data" / "calibration.npz", allow_pickle=False) as archive:
        base = archive["image"]
    rng = np.random.default_rng(seed)
    chunks, total = [], 0
    while total < count:
        if total == 0:
            chunk = base
        else:
            dy, dx = rng.integers(-1, 2, size=2)
            chunk = np.roll(base, (int(dy), int(dx)), axis=(2, 3))
            chunk = chunk * rng.uniform(0.85, 1.0, size=(len(base), 1, 1, 1))
        chunks.append(chunk.astype(np.float32))
        total += len(chunk)
    images = np.concatenate(chunks)[:count]
    np.savez(path, image=images)
    return path


# ---- one measurement (runs in its own process) ---------------------------------------------


def worker(impl: str, method: str, model: Path, set_path: Path, workdir: Path) -> dict:
    import onnxruntime  # noqa: F401 — imported before the clock starts, for both calibrators

    from tapeout.calibration.calibrate import calibrate
    from tapeout.calibration.dataset import load_sample_set

    start = time.perf_counter()
    samples = load_sample_set(set_path, _inputs())
    if impl == "tapeout":
        table = calibrate(model, samples, method=method, batch_size=1, workdir=workdir)
    else:
        table = _ort_calibrate(model, samples, method, workdir)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    return {
        "impl": impl,
        "method": method,
        "samples": samples.count,
        "seconds": seconds,
        "peak_rss_bytes": peak,
        **_int8_accuracy(model, table, workdir),
    }


def report(table_text: str, results: list[dict], checks: list[tuple[str, bool]], json_path: Path | None) -> int:
    """Print the table and each bar's verdict, write the raw results to `json_path` if given;
    the exit code: 0 when every bar passed."""
    print(table_text)
    print()
    for text, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    if json_path:
        json_path.write_text(json.dumps({"results": results, "bars": checks}, indent=2))
    return 0 if all(passed for _, passed in checks) else 1


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM, of this process image only.

    (`getrusage().ru_maxrss` would not do: Linux carries the high-water mark over `execve`, so a
    worker started by a parent that had loaded torch to export the model reports the parent's.)
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ort_calibrate(model: Path, samples, method: str, workdir: Path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from tapeout.calibration.table import CalibrationTable, TensorRange

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }

    class Reader:
        def __init__(self) -> None:
            self.batches = samples.batches(1)

        def get_next(self):
            return next(self.batches, None)

    calibrator = create_calibrator(
        model,
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=methods[method],
        providers=["CPUExecutionProvider"],
    )
    calibrator.collect_data(Reader())
    computed = calibrator.compute_data()
    ranges = {
        name: TensorRange(float(np.asarray(low).min()), float(np.asarray(high).max()))
        for name, (low, high) in ((name, data.range_value) for name, data in computed.items())
    }
    return CalibrationTable(ranges, f"onnxruntime.{method}", samples.digest, samples.count)


def _int8_accuracy(model: Path, table, workdir: Path) -> dict[str, float]:
    """Top-1 of the int8 model on the validation set, its top-1 agreement with the fp32 model,
    and the RMS difference of its logits from the fp32 logits (finer than top-1 on 500 images)."""
    import logging

    import onnxruntime

    from tapeout.calibration.quantizer import quantize

    logging.getLogger().setLevel(logging.ERROR)
    quantized = quantize(
        model, table, inputs=_inputs(), outputs=(), output_path=workdir / "model.qdq.onnx"
    )
    with np.load(EXAMPLE / "data" / "validation.npz", allow_pickle=False) as archive:
        images, labels = archive["image"], archive["label"]

    def logits(path: Path) -> np.ndarray:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate(
            [session.run(None, {"image": images[i : i + 1]})[0] for i in range(len(images))]
        )

    int8, fp32 = logits(quantized.path), logits(model)
    return {
        "accuracy": float(np.mean(int8.argmax(axis=1) == labels)),
        "agreement": float(np.mean(int8.argmax(axis=1) == fp32.argmax(axis=1))),
        "logit_rmse": float(np.sqrt(np.mean((int8 - fp32) ** 2))),
    }


# ---- the driver ----------------------------------------------------------------------------


def measure(sizes: tuple[int, ...], repeat: int = 1) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="tapeout-bench-calib-") as tmp:
        workdir = Path(tmp)
        model = export(workdir)
        for size in sizes:
            set_path = augmented_set(size, workdir / f"set-{size}.npz")
            for impl, method in RUNS:
                run_dir = workdir / f"{impl}-{method}-{size}"
                run_dir.mkdir()
                command = [
                    sys.executable, __file__, "_worker", impl, method,
                    str(model), str(set_path), str(run_dir),
                ]
                runs = []
                for _ in range(repeat):  # each in a fresh process; keep the fastest
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        raise SystemExit(f"{impl} {method} {size} failed:\n{done.stderr[-3000:]}")
                    runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                result = min(runs, key=lambda run: run["seconds"])
                result["peak_rss_bytes"] = max(run["peak_rss_bytes"] for run in runs)
                results.append(result)
                print(
                    f"  {impl:<12} {method:<11} {size:>6}: {result['seconds']:7.2f} s "
                    f"{result['peak_rss_bytes'] / 2**20:8.0f} MiB  acc {result['accuracy']:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| calibrator | method | samples | wall s | µs/sample | peak RSS MiB | int8 top-1 | agrees with fp32 | logit RMSE |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['impl']} | {r['method']} | {r['samples']:,} | {r['seconds']:.2f} | "
            f"{r['seconds'] / r['samples'] * 1e6:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
            f"{r['accuracy']:.3f} | {r['agreement']:.3f} | {r['logit_rmse']:.3f} |"
        )
    return "\n".join(lines)


def bars(results: list[dict], sizes: tuple[int, ...]) -> list[tuple[str, bool]]:
    by = {(r["impl"], r["method"], r["samples"]): r for r in results}
    checks: list[tuple[str, bool]] = []
    methods = sorted({m for impl, m in RUNS if impl == "tapeout"})
    if len(sizes) >= 2:
        small, large = sizes[-2], sizes[-1]
        for method in methods:
            ratio = by["tapeout", method, large]["peak_rss_bytes"] / by["tapeout", method, small]["peak_rss_bytes"]
            checks.append((f"peak RSS {large:,} / {small:,}, tapeout {method}: {ratio:.2f}x <= {RSS_BAR}x", ratio <= RSS_BAR))
    for size in sizes:
        reference = by["onnxruntime", "minmax", size]["seconds"] / size
        for method in methods:
            per = by["tapeout", method, size]["seconds"] / size
            checks.append((
                f"time/sample at {size:,}, tapeout {method}: {per * 1e6:.0f} µs <= ORT minmax {reference * 1e6:.0f} µs",
                per <= reference,
            ))
        for method in methods:
            against = method if method in {"minmax", "percentile", "entropy"} else "minmax"
            ours = by["tapeout", method, size]["accuracy"]
            theirs = by["onnxruntime", against, size]["accuracy"]
            checks.append((
                f"int8 top-1 at {size:,}, tapeout {method} {ours:.3f} >= ORT {against} {theirs:.3f}",
                ours >= theirs,
            ))
    return checks


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        impl, method, model, set_path, workdir = argv[1:6]
        print(json.dumps(worker(impl, method, Path(model), Path(set_path), Path(workdir))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--repeat", type=int, default=1,
                        help="processes per measurement; the fastest time and the largest peak RSS are kept")
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    results = measure(sizes, args.repeat)
    return report(table(results), results, bars(results, sizes), args.json)


if __name__ == "__main__":
    sys.exit(main())
