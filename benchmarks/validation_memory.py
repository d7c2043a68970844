"""Peak memory of evaluate, the sensitivity analysis and `tapeout diff` at 2,000 and 20,000 validation samples.

    .venv/bin/python benchmarks/validation_memory.py [--sizes 2000 20000] [--json OUT.json]

torchvision's mobilenet_v3_small (torchvision 0.28.0's own initialisation, seeded; 1,000
classes) exported by tapeout's PyTorch front end at a fixed input of [1, 3, 64, 64], its
calibration (MinMax, 64 samples) and quantization (QDQ int8) and its onnxruntime build done
once; then one validation set per size (standard-normal images, 48 KiB each, random labels:
20,000 of them are a 938 MiB .npz) and every (tool, size) in its own process, whose peak
resident set (VmHWM) is read when the tool returns:

- evaluate: the pipeline's stages for one target: open and hash the validation set, the fp32
  reference pass (flows.stages.reference_stage) and the onnxruntime artifact's evaluation
  (flows.stages.evaluate_stage: top-1, accuracy, output SQNR and cosine, latency);
- sensitivity: flows.sensitivity.analyse on every sample of the set (its `samples` limit set
  to the set's size), the `--top-k` most sensitive layers quantized again (default 3, the
  pipeline's; each is one more pass over the set, read the same way: `--top-k 0` measures the
  same reading with fewer passes);
- diff: `tapeout diff`'s flows.diff.run_diff of the onnxruntime artifact against int8-ref
  (firmware 1.2.0) on the whole set;
- whole set (the peer): the set's arrays loaded whole with numpy (np.load), which is what
  each tool held, at least, when it read `samples.arrays()`.

Bar (checked and printed): each tool's peak RSS at the largest size within 1.2x of its peak at
the size before it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from calibration import peak_rss_bytes, report

ROOT = Path(__file__).resolve().parents[1]
FACTORY = ROOT / "tests" / "real_models" / "torchvision_zoo.py"
ARCHITECTURE = "mobilenet_v3_small"
INPUT_SHAPE = (1, 3, 64, 64)
CLASSES = 1000
SIZES = (2000, 20000)
TOOLS = ("evaluate", "sensitivity", "diff", "whole set")
CALIBRATION_SAMPLES = 64
TOP_K = 3
RSS_BAR = 1.2
INT8_REF_FIRMWARE = "1.2.0"  # the first int8-ref firmware with REDUCE_MEAN (the squeeze-excite pooling)
WRITE_ROWS = 1000  # samples generated and written at a time, so this process stays small


# ---- set-up, once ----------------------------------------------------------------------------


def prepare(workdir: Path) -> dict[str, str]:
    """Export, calibrate, quantize and compile once; returns the paths the workers read."""
    import torch

    from tapeout.artifacts.compiled import write_record
    from tapeout.calibration.calibrate import calibrate
    from tapeout.calibration.dataset import load_sample_set
    from tapeout.calibration.quantizer import quantize
    from tapeout.compilers.frontends import PyTorchSource, export_model
    from tapeout.compilers.interface import TargetProfile, TensorSpec
    from tapeout.compilers.registry import load_compiler

    sys.path.insert(0, str(FACTORY.parent))
    import torchvision_zoo

    torch.manual_seed(0)
    weights = workdir / "weights.pt"
    torch.save(getattr(torchvision_zoo, ARCHITECTURE)().state_dict(), weights)
    model = export_model(
        PyTorchSource(FACTORY, ARCHITECTURE, weights),
        (TensorSpec("image", INPUT_SHAPE, "float32"),), ("logits",), workdir / "model.onnx",
    )
    calibration = workdir / "calibration.npz"
    np.savez(calibration, image=np.random.default_rng(1).standard_normal((CALIBRATION_SAMPLES, *INPUT_SHAPE[1:]), dtype=np.float32))
    table = calibrate(
        model.path, load_sample_set(calibration, model.inputs), method="minmax", batch_size=1,
        workdir=workdir / "calibrate",
    )
    table_path = table.write(workdir / "table.json")
    quantized = quantize(model.path, table, inputs=model.inputs, outputs=model.outputs, output_path=workdir / "model.qdq.onnx")
    profile = TargetProfile("cpu", "onnxruntime", "1.32.0", {"threads": "1"})
    artifact = load_compiler("onnxruntime").compile(quantized, profile, workdir / "compiled")
    write_record(artifact, profile.firmware_revision)
    return {
        "model": str(model.path), "quantized": str(quantized.path), "table": str(table_path),
        "compiled": str(artifact.directory),
    }


def write_set(count: int, path: Path, seed: int = 2) -> Path:
    """`count` standard-normal images and random labels, as np.savez lays them out, written
    WRITE_ROWS samples at a time."""
    generator = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("label.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, generator.integers(0, CLASSES, count, dtype=np.int64))
        with archive.open("image.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (count, *INPUT_SHAPE[1:])}
            np.lib.format.write_array_header_1_0(member, header)
            for start in range(0, count, WRITE_ROWS):
                rows = min(WRITE_ROWS, count - start)
                member.write(generator.standard_normal((rows, *INPUT_SHAPE[1:]), dtype=np.float32).tobytes())
    return path


# ---- one measurement (runs in its own process) ---------------------------------------------


def worker(tool: str, paths: dict[str, str], set_path: Path, workdir: Path, top_k: int) -> dict:
    from tapeout.artifacts.compiled import read_record
    from tapeout.calibration.dataset import load_sample_set
    from tapeout.calibration.table import CalibrationTable
    from tapeout.compilers.frontends import check_model
    from tapeout.compilers.interface import QuantizedModel
    from tapeout.flows import stages
    from tapeout.flows.diff import run_diff
    from tapeout.flows.sensitivity import analyse

    model = check_model(Path(paths["model"]))
    described = check_model(Path(paths["quantized"]))
    quantized = QuantizedModel(described.path, described.digest, model.path, described.inputs, described.outputs)
    settled = peak_rss_bytes()  # the imports and the models: what every size pays
    start = time.perf_counter()
    if tool == "whole set":
        with np.load(set_path, allow_pickle=False) as archive:
            held = {name: archive[name] for name in archive.files}
        count, result = len(held["label"]), {}
    elif tool == "evaluate":
        samples = load_sample_set(set_path, model.inputs, label_key="label")
        reference = stages.reference_stage(model, samples, workdir / "reference")
        artifact, _ = read_record(Path(paths["compiled"]))
        metrics = stages.evaluate_stage(artifact, samples, reference).metrics
        count, result = samples.count, {"top1_agreement": metrics["top1_agreement"], "output_sqnr_db": metrics["output_sqnr_db"]}
    elif tool == "sensitivity":
        samples = load_sample_set(set_path, model.inputs, label_key="label")
        analysis = analyse(
            model.path, quantized, samples, table=CalibrationTable.read(Path(paths["table"])),
            samples_limit=samples.count, top_k=top_k, workdir=workdir,
        )
        count, result = analysis.samples_used, {"layers": len(analysis.layers), "baseline_top1_agreement": analysis.baseline_top1_agreement}
    elif tool == "diff":
        report = run_diff(
            Path(paths["compiled"]), "int8-ref", model=quantized.path, sample_set=set_path,
            firmware=INT8_REF_FIRMWARE, workdir=workdir,
        )
        (output,) = report.outputs
        count, result = report.samples, {"max_lsb": output.max_lsb, "top1_agreement": output.top1_agreement}
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    seconds = time.perf_counter() - start
    return {
        "tool": tool, "samples": count, "seconds": seconds, "settled_rss_bytes": settled,
        "peak_rss_bytes": peak_rss_bytes(), **result,
    }


# ---- the driver ----------------------------------------------------------------------------


def measure(sizes: tuple[int, ...], tools: tuple[str, ...], top_k: int) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="tapeout-bench-validation-") as tmp:
        workdir = Path(tmp)
        paths = prepare(workdir)
        for size in sizes:
            set_path = write_set(size, workdir / f"validation-{size}.npz")
            for tool in tools:
                run_dir = workdir / f"{tool.replace(' ', '-')}-{size}"
                run_dir.mkdir()
                command = [
                    sys.executable, __file__, "_worker", tool, json.dumps(paths), str(set_path), str(run_dir), str(top_k),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{tool} {size} failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(result)
                print(
                    f"  {tool:<12} {size:>6}: {result['seconds']:7.1f} s  peak {result['peak_rss_bytes'] / 2**20:6.0f} MiB "
                    f"(settled {result['settled_rss_bytes'] / 2**20:.0f} MiB)",
                    file=sys.stderr, flush=True,
                )
            set_path.unlink()
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| tool | samples | wall s | peak RSS MiB | RSS before the work MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['tool']} | {r['samples']:,} | {r['seconds']:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
            f"{r['settled_rss_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines)


def bars(results: list[dict], sizes: tuple[int, ...]) -> list[tuple[str, bool]]:
    by = {(r["tool"], r["samples"]): r for r in results}
    checks = []
    small, large = sizes[-2], sizes[-1]
    for tool in sorted({r["tool"] for r in results} - {"whole set"}):
        ratio = by[tool, large]["peak_rss_bytes"] / by[tool, small]["peak_rss_bytes"]
        checks.append((f"peak RSS {large:,} / {small:,}, {tool}: {ratio:.2f}x <= {RSS_BAR}x", ratio <= RSS_BAR))
    return checks


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        tool, paths, set_path, workdir, top_k = argv[1:6]
        print(json.dumps(worker(tool, json.loads(paths), Path(set_path), Path(workdir), int(top_k))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--top-k", type=int, default=TOP_K, help="sensitivity: layers quantized again")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if len(args.sizes) < 2:
        parser.error("--sizes: give at least two sizes, the bar compares the last two")
    sizes = tuple(args.sizes)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    results = measure(sizes, tuple(args.tools), args.top_k)
    return report(table(results), results, bars(results, sizes), args.json)


if __name__ == "__main__":
    sys.exit(main())
