"""`tapeout diff`: an artifact against a reference compiler, LSB by LSB (tapeout.flows.diff).

Exit 1 with `--fail-over N` when an output element differs by more than N LSB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

from tapeout.compilers.errors import InvalidInput
from tapeout.flows.cli.common import bundle_for, pairs


def add_commands(subparsers, common: argparse.ArgumentParser) -> None:
    diff = subparsers.add_parser(
        "diff", parents=[common], help="compare an artifact with a reference compiler, LSB by LSB"
    )
    diff.add_argument("reference", metavar="BUNDLE_OR_ARTIFACT",
                      help="bundle folder, MODEL-TARGET@VERSION/@ALIAS, or a compiled folder (with --model)")
    diff.add_argument("--against", default="int8-ref", help="reference compiler (default: int8-ref)")
    diff.add_argument("--model", type=Path, help="the QDQ model (default: the bundle's model/model.qdq.onnx)")
    diff.add_argument("--set", dest="sample_set", type=Path,
                      help="samples to run, .npz or folder (default: the bundle's calibration set)")
    diff.add_argument("--samples", type=int, help="use only the first N samples")
    diff.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reference compiler option")
    diff.add_argument("--firmware", help="firmware revision to build the reference for")
    diff.add_argument("--lsb", action="append", default=[], metavar="OUTPUT=STEP",
                      help="an output's LSB when the model does not say (float outputs)")
    diff.add_argument("--tolerance", type=int, default=1, help="LSB allowed before a layer counts as divergent")
    diff.add_argument("--fail-over", type=int, metavar="LSB",
                      help="exit 1 when any output element differs by more than LSB")
    diff.add_argument("--tracking-uri", help="MLflow tracking URI for registry references")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=diff_command)


def diff_command(args: argparse.Namespace) -> int:
    from tapeout.flows.diff import DiffExceeded, run_diff

    if args.samples is not None and args.samples < 1:
        raise InvalidInput(f"--samples: expected at least 1, found {args.samples}")
    lsb = {}
    for name, text in pairs(args.lsb, "--lsb").items():
        try:
            lsb[name] = float(text)
        except ValueError:
            raise InvalidInput(f"--lsb {name}: expected a number, found {text!r}") from None
    candidate = Path(args.reference)
    # A compiled folder is used as it is; a bundle folder or registry reference via the registry helper.
    opened = contextlib.nullcontext((candidate, None)) if (candidate / "compiler.json").is_file() else bundle_for(args)
    with opened as (path, _):
        with tempfile.TemporaryDirectory(prefix="tapeout-diff-") as scratch:
            report = run_diff(
                Path(path), args.against, model=args.model, sample_set=args.sample_set,
                options=pairs(args.option, "--option"), firmware=args.firmware, lsb_overrides=lsb,
                limit=args.samples, tolerance_lsb=args.tolerance, workdir=Path(scratch),
            )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print(report)
    if args.fail_over is not None:
        worst = [o for o in report.outputs if o.max_lsb is not None and o.max_lsb > args.fail_over]
        if worst:
            raise DiffExceeded(
                "; ".join(f"output {o.name!r}: expected at most {args.fail_over} LSB from {args.against}, "
                          f"found {o.max_lsb} LSB" for o in worst)
            )
    return 0


def _print(report) -> None:
    c, r = report.candidate, report.reference
    print(f"candidate  {c['compiler']} {c['compiler_version']} ({c['artifact_id']})")
    print(f"reference  {r['compiler']} {r['compiler_version']} ({r['artifact_id']}), firmware {r['firmware_revision']}")
    print(f"samples    {report.samples} from {report.sample_set}")
    header = f"{'':<34}{'elements':>9}{'exact':>9}{'1 LSB':>8}{'2 LSB':>8}{'>2 LSB':>8}{'max':>6}  top-1"
    print("\noutputs" + header[7:])
    for item in report.outputs:
        print(_row(item))
        if item.lsb is not None:
            print(f"{'':<4}LSB {item.lsb:.6g} ({item.lsb_source}); histogram |diff| in LSB: "
                  + ", ".join(f"{k}: {v}" for k, v in item.histogram.items()))
    print(f"\nlayers: {report.layers_note}")
    if report.layers:
        print("layer" + header[5:])
        for item in report.layers:
            print(_row(item))
        if report.first_divergent_layer:
            print(f"\nfirst layer off by more than {report.tolerance_lsb} LSB: {report.first_divergent_layer}")
        else:
            print(f"\nno layer is off by more than {report.tolerance_lsb} LSB")


def _row(item) -> str:
    name = item.name if len(item.name) <= 33 else "…" + item.name[-32:]
    b = item.buckets
    top1 = "" if item.top1_agreement is None else f"{item.top1_agreement:.4f}"
    if "1" not in b:
        return f"{name:<34}{item.elements:>9}{b['exact']:>9}{'differing ' + str(b['differing']):>24}{'':>6}  {top1}"
    return (f"{name:<34}{item.elements:>9}{b['exact']:>9}{b['1']:>8}{b['2']:>8}{b['>2']:>8}"
            f"{item.max_lsb:>6}  {top1}")
