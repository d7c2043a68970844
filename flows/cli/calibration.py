"""`tapeout calibrate` and `tapeout calib inspect|pack|fetch`: the calibration stage by hand
(tapeout.calibration). Bad input raises `InvalidInput` (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tapeout.calibration.calibrate import calibrate, model_inputs
from tapeout.calibration.dataset import ImagePreprocessing, SampleSet, load_sample_set
from tapeout.calibration.observers import METHODS, options_for
from tapeout.calibration.pack import describe, labels_of, pack
from tapeout.flows.cli.common import open_registry, pairs


def add_commands(subparsers) -> None:
    """Add `calibrate` and `calib {inspect,pack,fetch}` to the given subparsers."""
    run = subparsers.add_parser(
        "calibrate",
        help="compute a calibration table for an ONNX model from a calibration set",
        description="Run MODEL over SET with one streaming observer per activation and write "
        "the calibration table (tensor -> range, method, options, set digest) as JSON.",
    )
    run.add_argument("model", type=Path, metavar="MODEL.onnx")
    run.add_argument("--set", dest="set_path", type=Path, required=True, metavar="SET")
    run.add_argument("--method", choices=METHODS, default="entropy")
    run.add_argument("-o", "--output", type=Path, required=True, metavar="TABLE.json")
    run.add_argument("--percentile", type=float, help="percentile method: percent of values kept")
    run.add_argument("--bins", type=int, help="histogram bins (percentile, entropy, mse)")
    run.add_argument("--levels", type=int, help="quantization levels (entropy, mse; 256 for int8)")
    run.add_argument("--symmetric", action="store_true", help="ranges symmetric about zero")
    run.add_argument("--batch", type=int, default=256, help="samples per model run (default 256)")
    run.add_argument("--min-samples", type=int, default=1, help="refuse sets with fewer samples")
    run.add_argument("--workdir", type=Path, help="where the augmented model goes (default: a temporary directory)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.set_defaults(func=calibrate_command)

    calib = subparsers.add_parser("calib", help="calibration sets: inspect, pack, fetch")
    calib_commands = calib.add_subparsers(dest="calib_command", metavar="{inspect,pack,fetch}", required=True)

    inspect = calib_commands.add_parser("inspect", help="print a set's manifest")
    inspect.add_argument("set_path", type=Path, metavar="SET")
    inspect.add_argument("--labels", help="the name of the labels array (.npz); default: the one "
                         "calib pack recorded, else the only 1-D integer array")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    inspect.set_defaults(func=inspect_command)

    fetch = calib_commands.add_parser(
        "fetch",
        help="download the set a bundle points to from the artifact store, and check it",
        description="A set larger than calibration.embed_max_bytes is stored once in the "
        "artifact store and the bundle holds calibration/pointer.json. This downloads it into "
        "OUTPUT and checks every file's sha256 against the (signed) pointer and the set's "
        "content digest against the bundle's manifest. Run `tapeout verify` on the bundle first.",
    )
    fetch.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder")
    fetch.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT")
    fetch.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<home>/mlflow.db)")
    fetch.set_defaults(func=fetch_command)

    build = calib_commands.add_parser(
        "pack",
        help="build a set from raw files with a sampling rule",
        description="Draw COUNT samples (seeded, without replacement) from SRC: an .npz, a "
        "folder of .npy files, or a folder of images (give the preprocessing). -o NAME.npz "
        "writes an .npz; any other name a folder of copies with tapeout-set.json. From an .npz "
        "holding several sets (Xtr, ytr, Xte, yte), choose and name the arrays: "
        "--array input=Xtr --labels label=ytr.",
    )
    build.add_argument("source", type=Path, metavar="SRC")
    build.add_argument("-o", "--output", type=Path, required=True, metavar="SET")
    build.add_argument("--count", type=int, help="samples to draw (default: all)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--input-name", help="the model input the samples feed (folders)")
    build.add_argument("--array", action="append", default=[], metavar="INPUT=ARRAY",
                       help="the model input INPUT is the source .npz's array ARRAY (repeatable)")
    build.add_argument("--labels", metavar="NAME[=ARRAY]",
                       help="the labels to carry along (.npz): named NAME in the set, from the source's ARRAY")
    build.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                       help="free-form metadata, e.g. license=CC-BY-4.0 (repeatable)")
    images = build.add_argument_group("images: preprocessing, recorded in the set and its digest")
    images.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"))
    images.add_argument("--mode", choices=("L", "RGB"), default="L")
    images.add_argument("--resample", default="bilinear")
    images.add_argument("--scale", type=float, default=1.0 / 255.0)
    images.add_argument("--mean", type=float, nargs="+", default=[0.0])
    images.add_argument("--std", type=float, nargs="+", default=[1.0])
    images.add_argument("--layout", choices=("CHW", "HWC"), default="CHW")
    build.add_argument("--json", action="store_true", help="print the new set's manifest as JSON")
    build.set_defaults(func=pack_command)


def calibrate_command(args: argparse.Namespace) -> int:
    values = {
        key: getattr(args, key)
        for key in ("percentile", "bins", "levels")
        if getattr(args, key, None) is not None
    }
    if args.symmetric:
        values["symmetric"] = True
    options = options_for(args.method, **values)
    inputs = model_inputs(args.model)
    samples = load_sample_set(args.set_path, inputs, minimum_count=args.min_samples)
    batch = inputs[0].shape[0] if inputs and inputs[0].shape else 1
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tapeout-calibrate-") as tmp:
        table = calibrate(
            args.model,
            samples,
            method=args.method,
            batch_size=batch,
            workdir=args.workdir or Path(tmp),
            options=options,
            chunk_size=args.batch,
        )
    seconds = time.perf_counter() - start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table.write(args.output)
    summary = {
        "table": str(args.output),
        "method": table.method,
        "tensors": len(table.ranges),
        "samples": table.sample_count,
        "set_digest": table.set_digest,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{args.output}: {len(table.ranges)} tensors, method {table.method}, "
            f"{table.sample_count} samples of set {table.set_digest[:12]}, {seconds:.2f} s"
        )
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    samples = describe(args.set_path, label_key=args.labels or labels_of(args.set_path))
    _print_manifest(samples, as_json=args.json)
    return 0


def fetch_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.set_store import fetch_bundle_set

    samples = fetch_bundle_set(lambda: open_registry(args), args.bundle, args.output)
    print(f"{samples.path}: {samples.count} samples, digest {samples.digest} matches the bundle's manifest")
    return 0


def pack_command(args: argparse.Namespace) -> int:
    preprocessing = None
    if args.size is not None:
        preprocessing = ImagePreprocessing(
            size=tuple(args.size), mode=args.mode, resample=args.resample, scale=args.scale,
            mean=tuple(args.mean), std=tuple(args.std), layout=args.layout,
        )
        preprocessing.check("--size/--mode/--scale/--mean/--std/--layout")
    label_key, _, label_array = (args.labels or "").partition("=")
    samples = pack(
        args.source,
        args.output,
        count=args.count,
        seed=args.seed,
        input_name=args.input_name,
        preprocessing=preprocessing,
        metadata=pairs(args.meta, "--meta"),
        label_key=label_key or None,
        arrays=pairs(args.array, "--array", values_required=True),
        label_array=label_array or None,
    )
    _print_manifest(samples, as_json=args.json)
    return 0


def _print_manifest(samples: SampleSet, *, as_json: bool) -> None:
    manifest = samples.manifest()
    if as_json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return
    out = sys.stdout
    out.write(f"set       {samples.path}\n")
    out.write(f"format    {manifest['format']}\n")
    out.write(f"digest    {manifest['digest']} ({manifest['digest_scheme']})\n")
    out.write(f"samples   {manifest['count']}\n")
    for spec in manifest["inputs"]:  # type: ignore[union-attr]
        out.write(f"input     {spec['name']}: {spec['dtype']} {spec['shape']} per sample\n")
    if manifest["labels"]:
        out.write(f"labels    {manifest['labels']}: one integer label per sample (not a model input)\n")
    if "preprocessing" in manifest:
        out.write(f"preproc   {json.dumps(manifest['preprocessing'], sort_keys=True)}\n")
    out.write(f"source    {json.dumps(manifest['source'], sort_keys=True)}\n")
    for key, value in sorted(dict(manifest["metadata"]).items()):  # type: ignore[arg-type]
        out.write(f"meta      {key}: {value}\n")
