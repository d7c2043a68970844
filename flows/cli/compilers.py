"""Running compilers by hand: compile, infer, bench, compilers, compat (tapeout.compilers; the
compile step is the pipeline's own, tapeout.flows.stages.compile_stage)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tapeout.compilers.errors import InvalidInput
from tapeout.flows.cli.common import pairs


def add_commands(subparsers, common: argparse.ArgumentParser) -> None:
    compile_ = subparsers.add_parser("compile", parents=[common], help="run one compiler by hand")
    compile_.add_argument("model", type=Path, help="ONNX model (QDQ, QOperator or float)")
    compile_.add_argument("--compiler", required=True)
    compile_.add_argument("--target", type=Path, help="target profile YAML")
    compile_.add_argument("--firmware", help="firmware revision (overrides the profile's; "
                          "default: the oldest the compiler builds for)")
    compile_.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    compile_.add_argument(
        "--shape", action="append", default=[], metavar="NAME=D0,D1,...",
        help="static shape of input NAME, pinning its symbolic dimensions (e.g. a dynamic batch)",
    )
    compile_.add_argument("-o", "--output", type=Path, required=True)
    compile_.set_defaults(func=compile_command)

    infer = subparsers.add_parser("infer", parents=[common], help="run a compiled artifact")
    infer.add_argument("artifact", type=Path, help="compiled artifact folder")
    infer.add_argument("--inputs", type=Path, required=True, help=".npz keyed by input name")
    infer.add_argument("--outputs", type=Path, required=True, help=".npz to write")
    infer.set_defaults(func=infer_command)

    bench = subparsers.add_parser("bench", parents=[common], help="time a compiled artifact")
    bench.add_argument("artifact", type=Path)
    bench.add_argument("--iterations", type=int, default=200)
    bench.add_argument("--warmup", type=int, default=20)
    bench.add_argument("--batch", type=int, help="check the artifact's static batch (it is fixed at compile time)")
    bench.add_argument("--threads", type=int, help="check the artifact's thread count (fixed at compile time)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=bench_command)

    compilers = subparsers.add_parser("compilers", parents=[common], help="list compiler plugins")
    compilers.add_argument("--json", action="store_true")
    compilers.set_defaults(func=compilers_command)

    compat = subparsers.add_parser("compat", parents=[common], help="operator support per compiler")
    compat.add_argument("model", type=Path)
    compat.add_argument("--compiler", help="one compiler; one that places ops (ethos-u) shows where each runs")
    compat.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="with --compiler")
    compat.add_argument("--json", action="store_true")
    compat.set_defaults(func=compat_command)


def compile_command(args: argparse.Namespace) -> int:
    import yaml

    from tapeout.artifacts.compiled import write_record
    from tapeout.compilers.frontends import pinned_model
    from tapeout.compilers.interface import QuantizedModel, TargetProfile
    from tapeout.flows.stages import compile_stage

    profile: dict = {}
    if args.target:
        try:
            profile = yaml.safe_load(args.target.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise InvalidInput(f"{args.target}: cannot read the target profile ({error})") from error
        if not isinstance(profile, dict):
            raise InvalidInput(f"{args.target}: expected a mapping")
    options = {str(k): str(v) for k, v in (profile.get("options") or {}).items()}
    options.update(pairs(args.option, "--option"))
    firmware = args.firmware or profile.get("firmware_revision")
    if firmware is None:  # the oldest firmware the compiler builds for
        from tapeout.compilers.registry import load_compiler

        firmware = load_compiler(args.compiler).capabilities().firmware_range[0]
    target = TargetProfile(
        name=str(profile.get("name", "manual")),
        compiler=args.compiler,
        firmware_revision=str(firmware),
        options=options,
        memory_budget_bytes=profile.get("memory_budget_bytes"),
    )
    shapes = _parse_shapes(args.shape)
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tapeout-pinned-") as scratch:
        described = pinned_model(
            args.model, shapes, Path(scratch), lambda name, shape: f"--shape {name}={','.join(map(str, shape))}"
        )
        model = QuantizedModel(
            path=described.path,
            digest=described.digest,
            float_path=described.path,
            inputs=described.inputs,
            outputs=described.outputs,
        )
        start = time.perf_counter()
        artifact = compile_stage(model, target, output)
        elapsed = time.perf_counter() - start
    write_record(artifact, target.firmware_revision)
    print(f"{artifact.artifact_id}: {', '.join(artifact.files)} in {output} ({elapsed:.2f} s)")
    return 0


def _parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, separator, dims = item.rpartition("=")
        try:
            shape = tuple(int(dim) for dim in dims.split(","))
        except ValueError:
            shape = ()
        if not separator or not name or not shape or min(shape) < 1:
            raise InvalidInput(f"--shape: expected NAME=D0,D1,... with sizes of at least 1, found {item!r}")
        if name in shapes:
            raise InvalidInput(f"--shape: input {name!r} given twice")
        shapes[name] = shape
    return shapes


def _load_runner(directory: Path):
    from tapeout.artifacts.compiled import read_record
    from tapeout.compilers.registry import load_compiler

    artifact, _ = read_record(directory.resolve())
    return artifact, load_compiler(artifact.compiler).load(artifact)


def infer_command(args: argparse.Namespace) -> int:
    import numpy as np

    artifact, runner = _load_runner(args.artifact)
    try:
        with np.load(args.inputs, allow_pickle=False) as archive:
            feed = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{args.inputs}: not a readable .npz file ({error})") from error
    expected = {spec.name: spec for spec in artifact.inputs}
    if set(feed) != set(expected):
        raise InvalidInput(f"{args.inputs}: expected arrays {sorted(expected)}, found {sorted(feed)}")
    for name, spec in expected.items():
        if tuple(feed[name].shape) != spec.shape or feed[name].dtype.name != spec.dtype:
            raise InvalidInput(
                f"{args.inputs}: {name!r}: expected {spec.dtype}{list(spec.shape)}, "
                f"found {feed[name].dtype.name}{list(feed[name].shape)}"
            )
    outputs = runner.run(feed)
    np.savez(args.outputs, **outputs)
    print(f"wrote {', '.join(sorted(outputs))} to {args.outputs}")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    import numpy as np

    from tapeout.compilers.measure import latency_summary, time_runs

    if args.iterations < 1 or args.warmup < 0:
        raise InvalidInput("--iterations must be at least 1 and --warmup at least 0")
    artifact, runner = _load_runner(args.artifact)
    batch = artifact.inputs[0].shape[0]
    if args.batch is not None and args.batch != batch:
        raise InvalidInput(
            f"--batch {args.batch}: {args.artifact} was compiled for a static batch of {batch}; "
            "compile the model exported with that batch to time it"
        )
    threads = int(artifact.options.get("threads", "1"))
    if args.threads is not None and args.threads != threads:
        raise InvalidInput(
            f"--threads {args.threads}: {args.artifact} runs with {threads} thread(s), fixed at compile "
            "time; recompile with --option threads=N where the compiler has that option"
        )
    generator = np.random.default_rng(0)
    feed = {
        spec.name: generator.standard_normal(spec.shape).astype(spec.dtype) for spec in artifact.inputs
    }
    first_start = time.perf_counter()
    runner.run(feed)
    first = time.perf_counter() - first_start
    timings = time_runs(runner, feed, args.iterations, args.warmup)
    report = {
        "artifact_id": artifact.artifact_id,
        "batch": batch,
        "threads": threads,
        "iterations": args.iterations,
        "first_inference_ms": first * 1e3,
        **latency_summary(timings, batch),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")
    return 0


def compilers_command(args: argparse.Namespace) -> int:
    from tapeout.compilers.registry import plugin_statuses

    rows = []
    for status in plugin_statuses():
        if status.compiler is None:
            rows.append({"name": status.name, "source": status.source, "status": "broken", "problem": status.problem})
            continue
        capabilities = status.compiler.capabilities()
        rows.append(
            {
                "name": status.name,
                "source": status.source,
                "status": "ok",
                "version": status.compiler.version,
                "input_formats": sorted(capabilities.input_formats),
                "firmware_range": list(capabilities.firmware_range),
                "operators": len(capabilities.operators),
                "options": {key: list(values) for key, values in capabilities.options.items()},
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if row["status"] == "ok":
                low, high = row["firmware_range"]
                print(
                    f"{row['name']:<14} {row['version']:<12} formats {','.join(row['input_formats'])}; "
                    f"firmware {low}..{high or ''}; {row['operators']} ops; options {sorted(row['options'])}"
                )
            else:
                print(f"{row['name']:<14} BROKEN       {row['problem']}")
    return 0 if all(row["status"] == "ok" for row in rows) else 1


def compat_command(args: argparse.Namespace) -> int:
    import onnx

    from tapeout.compilers.registry import plugin_statuses

    try:
        model = onnx.load(str(args.model), load_external_data=False)
    except Exception as error:  # protobuf DecodeError and file errors alike
        raise InvalidInput(f"{args.model}: not an ONNX model ({error})") from error
    op_types = sorted(
        {node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}" for node in model.graph.node}
    )
    compilers = [status for status in plugin_statuses() if status.compiler is not None]
    if args.compiler:
        compilers = [status for status in compilers if status.name == args.compiler]
        if not compilers:
            from tapeout.compilers.registry import load_compiler

            load_compiler(args.compiler)  # raises PluginError naming the problem
        if callable(getattr(compilers[0].compiler, "placement", None)):
            return _placement(args, compilers[0].compiler)
    matrix = {
        status.name: {op: op in status.compiler.capabilities().operators for op in op_types}
        for status in compilers
    }
    if args.json:
        print(json.dumps({"model": str(args.model), "operators": op_types, "support": matrix}, indent=2))
        return 0
    names = [status.name for status in compilers]
    width = max([len(op) for op in op_types] + [8])
    print(" " * width + "  " + "  ".join(names))
    for op in op_types:
        cells = "  ".join(("yes" if matrix[name][op] else "NO").center(len(name)) for name in names)
        print(f"{op:<{width}}  {cells}")
    return 0


def _placement(args: argparse.Namespace, compiler) -> int:
    """Where the compiler puts each op of the model (NPU or host CPU), before any build."""
    from dataclasses import asdict

    from tapeout.compilers.frontends import check_model

    check_model(args.model)
    with tempfile.TemporaryDirectory(prefix="tapeout-compat-") as scratch:
        placed = compiler.placement(args.model.resolve(), pairs(args.option, "--option"), Path(scratch))
    total = sum(op.macs for op in placed)
    on_cpu = [op for op in placed if op.unit == "CPU"]
    share = 1.0 - sum(op.macs for op in on_cpu) / total if total else 1.0
    if args.json:
        print(json.dumps({"model": str(args.model), "compiler": compiler.name, "npu_mac_share": share,
                          "operators": [asdict(op) for op in placed]}, indent=2))
        return 0
    width = max([len(op.op) for op in placed] + [2])
    for op in placed:
        reason = f"  ({op.reason})" if op.reason else ""
        print(f"{op.unit}  {op.op:<{width}}  {op.macs:>12,} MACs  {op.output}{reason}")
    print(f"{len(placed)} ops, {len(on_cpu)} on the CPU; NPU share of {total:,} MACs: {share:.2%}")
    return 0
