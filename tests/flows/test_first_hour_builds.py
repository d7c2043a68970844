"""What a new user meets in the first hour, through the command line and real builds: dirty
means an input differs from the commit, --commit builds that commit's files, compiled records
are reproducible, the memory budget is a gate, every build keeps its summary, cached stages say
so, watch builds the current branch and names the repository, trace and diff print what lasts,
and LiteRT's delegate banner stays out of the output."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tapeout.artifacts.registry import Registry
from tapeout.artifacts.signature import statement_payload
from tapeout.compilers.int8_ref.compiler import __version__ as INT8_REF_VERSION
from tapeout.flows.cli import main
from conftest import EXAMPLE, git

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

CPU = '  - name: cpu\n    compiler: onnxruntime\n    firmware_revision: "1.32.0"\n'
NPU = '  - name: npu-int8\n    compiler: int8-ref\n    firmware_revision: "2.0.0"\n    memory_budget_bytes: {budget}\n'
TAPEOUT = [sys.executable, "-m", "tapeout.flows.cli"]


def project(root: Path, targets: str, branch: str = "main") -> Path:
    """The example with only `targets`, committed in its own repository; returns pipeline.yaml."""
    folder = root / "project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = folder / "pipeline.yaml"
    text = pipeline.read_text()
    pipeline.write_text(text[: text.index("targets:\n")] + "targets:\n" + targets + text[text.index("\ngates:"):])
    git(folder, "init", "-q", "-b", branch)
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "the example")
    return pipeline


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One home for the module: its stage cache spares the tests repeated exports."""
    return tmp_path_factory.mktemp("first-hour-home")


def run_json(capsys, pipeline: Path, home: Path, *extra: str) -> tuple[int, dict, str]:
    code = main(["run", str(pipeline), "--home", str(home), "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def registry_of(home: Path) -> Registry:
    return Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")


def source_uri(bundle: Path) -> str:
    provenance = json.loads((bundle / "provenance.json").read_text())
    return provenance["predicate"]["buildDefinition"]["resolvedDependencies"][0]["uri"]


def test_a_stray_file_leaves_a_build_clean_and_a_changed_input_is_named(tmp_path, capsys, home):
    pipeline = project(tmp_path, CPU)
    (pipeline.parent / "stray.npz").write_bytes(b"an experiment's leftovers")
    code, document, _ = run_json(capsys, pipeline, home)
    assert code == 0 and document["source"]["dirty"] is False and document["source"]["dirty_files"] == []
    first = document["targets"][0]["version"]
    code, document, _ = run_json(capsys, pipeline, home)
    assert document["targets"][0]["reused"] and document["targets"][0]["version"] == first

    validation = pipeline.parent / "data" / "validation.npz"
    with np.load(validation) as archive:
        arrays = {name: archive[name][:-1] for name in archive.files}  # one sample fewer
    np.savez(validation, **arrays)
    code, document, progress = run_json(capsys, pipeline, home)
    assert code == 0
    assert document["source"]["dirty"] is True
    assert document["source"]["dirty_files"] == ["data/validation.npz (modified)"]
    assert "differ from commit" in progress and ": data/validation.npz (modified); it is registered as a new" in progress
    target = document["targets"][0]
    assert target["version"] != first and not target["reused"]
    provenance = json.loads((Path(target["bundle_path"]) / "provenance.json").read_text())
    annotations = provenance["predicate"]["buildDefinition"]["resolvedDependencies"][0]["annotations"]
    assert annotations == {"dirty": True, "dirtyFiles": ["data/validation.npz (modified)"]}


def test_commit_builds_that_commits_files_and_records_the_repository(tmp_path, capsys, home):
    pipeline = project(tmp_path, CPU)
    folder = pipeline.parent
    first = git(folder, "rev-parse", "HEAD")
    pipeline.write_text(pipeline.read_text().replace("top1_agreement: {min: 0.97}", "top1_agreement: {min: 1.01}"))
    git(folder, "commit", "-qam", "an impossible gate")

    code, document, _ = run_json(capsys, pipeline, home, "--commit", first[:9])
    assert code == 0
    assert document["source"] == {"repository": folder.as_uri(), "commit": first, "dirty": False, "dirty_files": []}
    bundle = Path(document["targets"][0]["bundle_path"])
    assert source_uri(bundle) == f"git+{folder.as_uri()}@{first}"
    built_config = yaml.safe_load((bundle / "config" / "pipeline.yaml").read_text())
    assert built_config["gates"]["top1_agreement"]["min"] == 0.97  # the commit's, not HEAD's 1.01
    assert registry_of(home).find_version("digits-cnn-cpu", {"commit": first}) is not None
    code, document, _ = run_json(capsys, pipeline, home)  # HEAD holds the impossible gate
    assert code == 1
    assert list((home / "worktrees").iterdir()) == [] and git(folder, "worktree", "list").count("\n") == 0


def test_two_clean_builds_of_one_commit_compile_byte_identical_records(tmp_path, capsys):
    pipeline = project(tmp_path, CPU + NPU.format(budget=65536))
    compiled, statements = [], []
    # Two homes: nothing cached. (The PyTorch export records the factory's path, so both
    # builds read the same checkout.)
    for build_home in (tmp_path / "a-home", tmp_path / "another-home"):
        code, document, _ = run_json(capsys, pipeline, build_home)
        assert code == 0
        compiled.append({
            target["target"]: {
                path.name: path.read_bytes() for path in (Path(target["bundle_path"]) / "compiled").iterdir()
            }
            for target in document["targets"]
        })
        statements.append({
            (target["target"], stage): statement_payload(Path(target["bundle_path"]) / "attestations" / f"{stage}.sigstore.json")
            for target in document["targets"] for stage in ("export", "calibrate", "quantize", "compile")
        })
    assert compiled[0] == compiled[1]
    # The chain's statements are functions of their stages' inputs and outputs: the rebuild
    # attests every transformation with the same statement (signed again, by its own home's key).
    assert statements[0] == statements[1]
    record = json.loads(compiled[0]["npu-int8"]["compiler.json"])
    assert "compile_seconds" not in json.dumps(record)
    assert record["report"]["peak_memory_op"]["node"]
    benchmark = json.loads((Path(document["targets"][1]["bundle_path"]) / "reports" / "benchmark.json").read_text())
    assert benchmark["compile_seconds"] > 0  # the timing is a report


def test_memory_budget_is_a_gate_with_the_op_where_memory_peaks(tmp_path, capsys, home):
    pipeline = project(tmp_path, NPU.format(budget=4096))
    commit = git(pipeline.parent, "rev-parse", "HEAD")
    code = main(["run", str(pipeline), "--home", str(home)])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    (row,) = [line for line in captured.out.splitlines() if "peak_memory_bytes" in line and "│" in line]
    assert "4096" in row and "FAIL" in row
    failure = re.search(r"peak_memory_bytes: (\d+) <= 4096\? FAIL, off by \d+; the peak is at (\w+) '([^']+)': "
                        r"[\d,]+ bytes of live tensors \+ [\d,]+ bytes of its scratch", captured.out)
    assert failure, captured.out
    peak = int(failure.group(1))
    summaries = sorted((home / "reports" / commit[:12]).iterdir())
    assert len(summaries) == 1
    first = (summaries[0] / "summary.md").read_text()
    assert f"| npu-int8 | fail | — | peak_memory_bytes: {peak} <= 4096? FAIL" in first
    assert f"| npu-int8 | peak_memory_bytes | <= | 4,096 | {peak:,} | **FAIL** |" in first

    code = main(["run", str(pipeline), "--home", str(home)])  # nothing was registered: it builds again
    progress = capsys.readouterr().err
    assert code == 1
    for stage in ("export digits-cnn", "calibrate (entropy, 300 samples)", "quantize",
                  "per-layer sensitivity on 200 validation samples", f"[npu-int8] compile with int8-ref {INT8_REF_VERSION}",
                  "[npu-int8] evaluate on 500 validation samples"):
        assert f"· {stage} (cached)\n" in progress, progress
    summaries = sorted((home / "reports" / commit[:12]).iterdir())
    assert len(summaries) == 2 and (summaries[0] / "summary.md").read_text() == first


def test_watch_builds_the_current_branch_and_names_the_repository_not_a_worktree(tmp_path, capsys, home):
    pipeline = project(tmp_path, CPU, branch="master")
    folder = pipeline.parent
    git(folder, "remote", "add", "origin", "https://git.example.invalid/team/digits.git")
    commit = git(folder, "rev-parse", "HEAD")
    assert main(["watch", str(folder), "--pipeline", "pipeline.yaml", "--once", "--home", str(home)]) == 0
    assert f"built 1 commit(s): {commit[:12]}" in capsys.readouterr().out
    version = registry_of(home).find_version("digits-cnn-cpu", {"commit": commit})
    bundle = home / "bundles" / "digits-cnn-cpu" / version.tags["bundle_digest"][:16]
    assert source_uri(bundle) == f"git+https://git.example.invalid/team/digits.git@{commit}"
    assert "worktrees" not in (bundle / "provenance.json").read_text()


def test_trace_and_diff_print_one_key_format_short_numbers_and_no_gone_paths(tmp_path, capsys, home):
    pipeline = project(tmp_path, CPU)
    code, document, _ = run_json(capsys, pipeline, home)
    assert code == 0
    reference = f"digits-cnn-cpu@{document['targets'][0]['version']}"
    signer = registry_of(home).resolve(reference).tags["signer"]
    assert main(["trace", reference, "--home", str(home)]) == 0
    text = capsys.readouterr().out
    assert "public key hint" not in text
    assert set(re.findall(r"key:sha256:[0-9a-f]+", text)) == {signer}
    gates = [line for line in text.splitlines() if re.match(r"\s+(accuracy_drop|latency_p95_ms|top1_agreement):", line)]
    assert len(gates) == 3 and not any(re.search(r"\d\.\d{10}", line) for line in gates), gates  # not 15 digits

    assert main(["diff", reference, "--against", "int8-ref", "--samples", "20", "--home", str(home)]) == 0
    text = capsys.readouterr().out
    assert "samples    20 from calibration/calibration.npz (the bundle's calibration set, digest" in text
    assert "tapeout-verify-" not in text


def test_litert_delegate_banner_stays_out_of_the_output(quantized_model, tmp_path):
    """LiteRT prints its XNNPACK banner from C++ to the process's stderr: only a real process
    shows whether it leaks (`tapeout infer` of an ethos-u artifact runs LiteRT)."""
    pytest.importorskip("ethosu.vela")
    compiled = tmp_path / "compiled"
    completed = subprocess.run(
        [*TAPEOUT, "compile", str(quantized_model.path), "--compiler", "ethos-u", "--firmware", "25.08",
         "-o", str(compiled)], capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    with np.load(EXAMPLE / "data" / "validation.npz") as archive:
        np.savez(tmp_path / "in.npz", image=archive["image"][:1])
    completed = subprocess.run(
        [*TAPEOUT, "infer", str(compiled), "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    assert "XNNPACK" not in completed.stderr + completed.stdout
    assert completed.stderr == ""
