"""`tapeout reproduce` through the command line, with real builds of the example committed in
its own repository, real signatures (the builder home's key) and real rebuilds in scratch
homes: a clean build is reproduced file by file; a bundle whose compiled file is not what its
commit builds (a poisoned stage cache, signed all the same) is refused naming the file; a dirty
build and a commit the repository lacks are refused with the reason; a calibration set stored
outside the bundle is compared by what it is, not where it is stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tapeout.flows import stage_marker
from tapeout.flows.cli import main
from conftest import git
from test_first_hour_builds import CPU, project

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

NAME = "digits-cnn-cpu"


def run(capsys, pipeline: Path, home: Path) -> dict:
    assert main(["run", str(pipeline), "--home", str(home), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["targets"][0]


def reproduce(capsys, home: Path, *arguments: str) -> tuple[int, str, str]:
    code = main(["reproduce", *arguments, "--home", str(home)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_clean_build_is_reproduced_and_a_changed_one_is_refused_naming_the_file(tmp_path, capsys):
    pipeline = project(tmp_path, CPU)
    home = tmp_path / "builder-home"
    first = run(capsys, pipeline, home)

    # An auditor's view: the pulled bundle, rebuilt from the commit its provenance names.
    pulled = tmp_path / "pulled"
    assert main(["pull", f"{NAME}@{first['version']}", "-o", str(pulled), "--home", str(home)]) == 0
    capsys.readouterr()
    kept = tmp_path / "rebuild"
    code, out, progress = reproduce(capsys, home, str(pulled), "--keep", str(kept))
    assert code == 0, out + progress
    compared = [line.split()[1] for line in out.splitlines() if line.startswith("identical")]
    expected = sorted(
        path.relative_to(pulled).as_posix() for folder in ("model", "calibration", "compiled")
        for path in (pulled / folder).rglob("*") if path.is_file()
    )
    assert sorted(compared) == expected and "compiled/compiler.json" in compared and "model/model.onnx" in compared
    assert f"all {len(expected)} files identical to the signed bundle" in out
    assert "not as recorded" not in out
    assert "verified " in progress and "rebuilding cpu of commit" in progress
    (rebuilt,) = (kept / "home" / "bundles").glob("*/**/compiled")
    assert (rebuilt / "compiler.json").read_bytes() == (pulled / "compiled" / "compiler.json").read_bytes()
    assert git(pipeline.parent, "worktree", "list").count("\n") == 0  # the rebuild's checkout is gone

    # The builder's stage cache is poisoned: the compiled model gains a field, and the folder's
    # marker is rewritten to match (whoever can write the cache can). A build of the next
    # commit (its inputs unchanged) reuses it, signs it and registers it.
    (cached,) = [
        path for path in (home / "cache" / "compile").glob("*/*.onnx")
        if path.read_bytes() == (pulled / "compiled" / path.name).read_bytes()
    ]
    model = onnx.load(str(cached))
    onnx.helper.set_model_props(model, {"note": "not what the commit builds"})
    onnx.save(model, str(cached))
    stage_marker.seal(cached.parent)
    (pipeline.parent / "NOTES.md").write_text("a commit that changes no input\n")
    git(pipeline.parent, "add", "NOTES.md")
    git(pipeline.parent, "commit", "-qm", "notes")
    second = run(capsys, pipeline, home)
    assert second["version"] != first["version"]
    assert main(["verify", f"{NAME}@{second['version']}", "--home", str(home)]) == 0  # signed all the same
    capsys.readouterr()

    code, out, _ = reproduce(capsys, home, f"{NAME}@{second['version']}")
    assert code == 1
    changed = f"compiled/{cached.name}"
    assert f"different  {changed}: bundle " in out and ", rebuild " in out
    assert f"NOT REPRODUCED: {NAME} version {second['version']} from commit " in out
    assert out.rstrip().endswith(f"1 of {len(expected)} files differ: {changed}")
    assert "identical  model/model.onnx" in out and "identical  compiled/compiler.json" in out

    code, out, _ = reproduce(capsys, home, f"{NAME}@{second['version']}", "--json")
    document = json.loads(out)
    assert code == 1 and document["reproduced"] is False
    assert [item["path"] for item in document["files"] if not item["identical"]] == [changed]
    assert document["recorded"]["commit"] == git(pipeline.parent, "rev-parse", "HEAD")


def test_a_dirty_build_or_a_missing_commit_is_not_rebuilt_and_a_stored_set_is_compared_by_content(tmp_path, capsys):
    pipeline = project(tmp_path, CPU)
    # Every calibration set stored once outside the bundles: a bundle holds a pointer to it.
    text = pipeline.read_text()
    pipeline.write_text(text.replace("  samples: 300\n", "  samples: 300\n  embed_max_bytes: 0\n", 1))
    git(pipeline.parent, "commit", "-qam", "store the calibration set")
    home = tmp_path / "builder-home"
    validation = pipeline.parent / "data" / "validation.npz"
    with np.load(validation) as archive:
        arrays = {name: archive[name][:-1] for name in archive.files}  # one sample fewer
    np.savez(validation, **arrays)
    dirty = run(capsys, pipeline, home)
    code, _, error = reproduce(capsys, home, f"{NAME}@{dirty['version']}")
    assert code == 1
    assert "error: the build read files that differ from commit" in error
    assert "data/validation.npz (modified); what it read is in no commit, so it cannot be rebuilt" in error

    git(pipeline.parent, "checkout", "--", "data/validation.npz")
    clean = run(capsys, pipeline, home)
    # The dirty version is not what the commit builds: a clean build registers its own.
    assert clean["version"] != dirty["version"] and not clean["reused"]
    elsewhere = tmp_path / "another-repository"
    elsewhere.mkdir()
    git(elsewhere, "init", "-q")
    code, _, error = reproduce(capsys, home, f"{NAME}@{clean['version']}", "--repository", str(elsewhere))
    assert code == 1
    assert f"{elsewhere}: commit {git(pipeline.parent, 'rev-parse', 'HEAD')} (recorded as the source) is not in this repository" in error

    # The clean version, rebuilt: its pointer names the builder's store, the rebuild's its own;
    # the set they point to is the same.
    code, out, progress = reproduce(capsys, home, f"{NAME}@{clean['version']}")
    assert code == 0, out + progress
    assert "identical  calibration/pointer.json (the stored set it points to; where it is stored is not compared)" in out
    assert "calibration/calibration.npz" not in out

