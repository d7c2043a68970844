"""The `tapeout` command line (DESIGN §3).

Exit codes: 0 success, 1 a gate or a verification failed, 2 bad input or configuration.
Errors print one line naming their subject; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from tapeout.compilers.errors import InvalidInput, TapeoutError
from tapeout.flows import environment


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    home = environment.configure(Path(args.home) if args.home else None)
    args.home_path = home
    if not args.debug:
        # urllib3 logs every retry against an unreachable server; the error line says it once.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except TapeoutError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="tapeout home (default: $TAPEOUT_HOME or ./.tapeout)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="tapeout",
        description="Compile, gate, sign and version models for low-power inference chips.",
        parents=[common],
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="one full pipeline run")
    run.add_argument("pipeline", type=Path, help="pipeline.yaml")
    run.add_argument("--commit", help="source commit (default: git HEAD of the pipeline's folder)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=_run)

    compile_ = commands.add_parser("compile", parents=[common], help="run one compiler by hand")
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
    compile_.set_defaults(func=_compile)

    infer = commands.add_parser("infer", parents=[common], help="run a compiled artifact")
    infer.add_argument("artifact", type=Path, help="compiled artifact folder")
    infer.add_argument("--inputs", type=Path, required=True, help=".npz keyed by input name")
    infer.add_argument("--outputs", type=Path, required=True, help=".npz to write")
    infer.set_defaults(func=_infer)

    bench = commands.add_parser("bench", parents=[common], help="time a compiled artifact")
    bench.add_argument("artifact", type=Path)
    bench.add_argument("--iterations", type=int, default=200)
    bench.add_argument("--warmup", type=int, default=20)
    bench.add_argument("--batch", type=int, help="check the artifact's static batch (it is fixed at compile time)")
    bench.add_argument("--threads", type=int, help="check the artifact's thread count (fixed at compile time)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=_bench)

    compilers = commands.add_parser("compilers", parents=[common], help="list compiler plugins")
    compilers.add_argument("--json", action="store_true")
    compilers.set_defaults(func=_compilers)

    compat = commands.add_parser("compat", parents=[common], help="operator support per compiler")
    compat.add_argument("model", type=Path)
    compat.add_argument("--compiler", help="one compiler; one that places ops (ethos-u) shows where each runs")
    compat.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="with --compiler")
    compat.add_argument("--json", action="store_true")
    compat.set_defaults(func=_compat)

    from tapeout.artifacts.commands import add_commands as add_artifact_commands

    add_artifact_commands(commands, common)  # verify, trace, promote, rollback, pull, keys
    from tapeout.calibration.commands import add_commands as add_calibration_commands

    add_calibration_commands(commands)  # calibrate, calib inspect|pack
    from tapeout.flows.trigger_commands import add_commands as add_trigger_commands

    add_trigger_commands(commands, common)  # watch, hook install
    from tapeout.compilers.diff import add_commands as add_diff_commands

    add_diff_commands(commands, common)  # diff
    from tapeout.flows.explain import add_commands as add_explain_commands

    add_explain_commands(commands, common)  # explain
    return parser


# -- run ------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    if not args.debug:
        environment.quiet_prefect_logging()  # a failed stage is one line, not Prefect's traceback
    from tapeout.flows.build import build

    stdout = sys.stdout

    def say(message: str) -> None:
        # One write per line: targets report from concurrent threads.
        sys.stderr.write(f"· {message}\n")
        sys.stderr.flush()

    # In --json mode stdout carries exactly one JSON object: whatever libraries print goes
    # to stderr with the progress.
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        result = build(args.pipeline, args.commit, args.home_path, progress=say)
    outcomes, exit_code = result.outcomes, result.exit_code
    if args.json:
        source = result.source
        document = {
            "exit_code": exit_code,
            "source": {
                "repository": source.repository, "commit": source.commit,
                "dirty": source.dirty, "dirty_files": list(source.dirty_files),
            },
            "targets": [
                {
                    "target": o.target,
                    "registered_model": o.registered_model,
                    "version": o.version,
                    "bundle_path": o.bundle_path,
                    "bundle_digest": o.bundle_digest,
                    "gate_verdict": o.verdict,
                    "reused": o.reused,
                    "message": o.message,
                    "gates": [
                        {"metric": g.metric, "bound": g.bound, "threshold": g.threshold,
                         "observed": g.observed, "passed": g.passed}
                        for g in o.gates
                    ],
                }
                for o in outcomes
            ],
        }
        print(json.dumps(document, indent=2), file=stdout)
        return exit_code
    _print_outcomes(outcomes)
    return exit_code


def _print_outcomes(outcomes) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    for outcome in outcomes:
        if outcome.gates:
            table = Table(title=f"{outcome.registered_model}: gates", title_justify="left")
            for column in ("gate", "bound", "threshold", "observed", "verdict"):
                table.add_column(column)
            for gate in outcome.gates:
                observed = "—" if gate.observed is None else f"{gate.observed:.6g}"
                verdict = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
                table.add_row(gate.metric, gate.bound, f"{gate.threshold:.6g}", observed, verdict)
            console.print(table)
        if outcome.verdict == "pass":
            how = "already registered" if outcome.reused else "registered"
            console.print(
                f"[green]PASS[/] {outcome.target}: {how} {outcome.registered_model} "
                f"version {outcome.version}, bundle {outcome.bundle_digest}"
                + (f"\n     {outcome.bundle_path}" if outcome.bundle_path else "")
                + (f"\n     {outcome.message.strip(' ()')}" if outcome.message else "")
            )
        elif outcome.verdict == "fail":
            console.print(f"[red]FAIL[/] {outcome.target}: {outcome.message}")
        else:
            console.print(f"[red]ERROR[/] {outcome.target}: {outcome.message}")


# -- one compiler by hand -------------------------------------------------------------------


def _option_pairs(items: list[str]) -> dict[str, str]:
    """`--option KEY=VALUE` flags as a dict (the parser `tapeout diff` uses for its own)."""
    from tapeout.compilers.diff import _pairs

    return _pairs(items, "--option")


def _compile(args: argparse.Namespace) -> int:
    import yaml

    from tapeout.artifacts.compiled import write_record
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
    options.update(_option_pairs(args.option))
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
        described = _pinned_model(args.model, shapes, Path(scratch))
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


def _pinned_model(path: Path, shapes: dict[str, tuple[int, ...]], scratch: Path) -> "ExportedModel":  # noqa: F821
    """The model every compiler gets, checked: `path` itself when its inputs are static,
    else a copy in `scratch` with the symbolic dimensions pinned.

    Raises:
        InvalidInput: the model is not valid ONNX, or `tapeout.compilers.shapes` refuses the
            shapes (a symbolic dimension left unpinned is named with the --shape that pins it).
    """
    import onnx

    from tapeout.compilers.frontends import check_model
    from tapeout.compilers.shapes import pin_input_shapes

    described = check_model(path.resolve())
    static = all(size > 0 for spec in described.inputs for size in spec.shape)
    if static and not shapes:
        return described
    pinned = pin_input_shapes(
        onnx.load(str(path), load_external_data=False),
        shapes,
        path,
        lambda name, shape: f"--shape {name}={','.join(map(str, shape))}",
    )
    if static:  # the shapes given are the model's own (pin_input_shapes checked them)
        return described
    onnx.save(pinned, str(scratch / path.name))
    return check_model(scratch / path.name)


def _load_runner(directory: Path):
    from tapeout.artifacts.compiled import read_record
    from tapeout.compilers.registry import load_compiler

    artifact, _ = read_record(directory.resolve())
    return artifact, load_compiler(artifact.compiler).load(artifact)


def _infer(args: argparse.Namespace) -> int:
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


def _bench(args: argparse.Namespace) -> int:
    import numpy as np

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
    for _ in range(args.warmup):
        runner.run(feed)
    timings = np.empty(args.iterations)
    for index in range(args.iterations):
        start = time.perf_counter()
        runner.run(feed)
        timings[index] = time.perf_counter() - start
    report = {
        "artifact_id": artifact.artifact_id,
        "batch": batch,
        "threads": threads,
        "iterations": args.iterations,
        "first_inference_ms": first * 1e3,
        "latency_p50_ms": float(np.percentile(timings, 50) * 1e3),
        "latency_p95_ms": float(np.percentile(timings, 95) * 1e3),
        "latency_p99_ms": float(np.percentile(timings, 99) * 1e3),
        "throughput_per_s": float(batch * args.iterations / timings.sum()),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")
    return 0


def _compilers(args: argparse.Namespace) -> int:
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


def _compat(args: argparse.Namespace) -> int:
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
        placed = compiler.placement(args.model.resolve(), _option_pairs(args.option), Path(scratch))
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


if __name__ == "__main__":
    sys.exit(main())
