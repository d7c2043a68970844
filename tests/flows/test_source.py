"""Which commit a build reads and when it is dirty: only a file the build reads that differs
from the commit makes it dirty; `--commit` must name a commit of the repository and the build
reads that commit's files; provenance names the repository, never a temporary checkout."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tapeout.compilers.errors import InvalidInput
from tapeout.flows.cli import main
from tapeout.flows.config import load_pipeline
from tapeout.flows.source import checkout
from conftest import git, make_project


@pytest.fixture
def project(tmp_path):
    pipeline = make_project(tmp_path)
    return {"pipeline": pipeline, "folder": pipeline.parent, "home": tmp_path / "home"}


def dirty_files(project) -> tuple[str, ...]:
    with checkout(project["pipeline"], None, project["home"]) as files:
        return files.source(load_pipeline(files.pipeline_file)).dirty_files


def test_files_the_build_does_not_read_leave_it_clean(project):
    folder = project["folder"]
    (folder / "stray.npz").write_bytes(b"left over from an experiment")
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.md").write_text("try entropy\n")
    (folder / "README.md").write_text("edited, not committed\n")
    assert dirty_files(project) == ()


def test_each_input_that_differs_from_the_commit_is_named_with_how(project):
    folder = project["folder"]
    buffer = io.BytesIO()
    with np.load(folder / "data" / "validation.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["image"][0, 0, 0, 0] += 1.0
    np.savez(buffer, **arrays)
    (folder / "data" / "validation.npz").write_bytes(buffer.getvalue())
    pipeline = project["pipeline"]
    pipeline.write_text(pipeline.read_text().replace("set: data/calibration.npz", "set: data/calibration-2.npz"))
    (folder / "data" / "calibration-2.npz").write_bytes((folder / "data" / "calibration.npz").read_bytes())
    assert set(dirty_files(project)) == {
        "pipeline.yaml (modified)", "data/validation.npz (modified)", "data/calibration-2.npz (untracked)",
    }


def test_an_input_git_ignores_or_that_lies_outside_the_repository_is_not_the_commits(project, tmp_path):
    folder = project["folder"]
    (folder / ".gitignore").write_text("weights.pt\n")
    git(folder, "rm", "-q", "--cached", "weights.pt")
    git(folder, "add", ".gitignore")
    git(folder, "commit", "-qm", "weights are kept out of git")
    outside = tmp_path / "shared-data" / "validation.npz"
    outside.parent.mkdir()
    outside.write_bytes((folder / "data" / "validation.npz").read_bytes())
    pipeline = project["pipeline"]
    pipeline.write_text(pipeline.read_text().replace("set: data/validation.npz", f"set: {outside}"))
    git(folder, "commit", "-qam", "validation set from a shared folder")
    assert set(dirty_files(project)) == {"weights.pt (ignored by git)", f"{outside} (outside the repository)"}
    with checkout(project["pipeline"], "HEAD", project["home"]) as files:  # the commit's own files
        source = files.source(load_pipeline(files.pipeline_file))
        assert source.dirty and source.dirty_files == (f"{outside} (outside the repository)",)


def test_commit_must_be_a_commit_of_the_repository(project, capsys):
    for commit in ("abc123", "no-such-branch", "HEAD~5"):
        code = main(["run", str(project["pipeline"]), "--commit", commit, "--home", str(project["home"])])
        error = capsys.readouterr().err
        assert code == 2 and error.count("error:") == 1
        assert f"--commit {commit}: expected a commit of the repository" in error


def test_commit_reads_that_commits_files_not_the_work_tree(project):
    folder = project["folder"]
    first = git(folder, "rev-parse", "HEAD")
    pipeline = project["pipeline"]
    pipeline.write_text(pipeline.read_text().replace("samples: 300", "samples: 200"))
    git(folder, "commit", "-qam", "fewer calibration samples")
    pipeline.write_text(pipeline.read_text().replace("samples: 200", "samples: 100"))  # not committed
    with checkout(pipeline, first[:10], project["home"]) as files:
        loaded = load_pipeline(files.pipeline_file)
        source = files.source(loaded)
        assert loaded.config.calibration.samples == 300
        assert (source.commit, source.dirty, source.dirty_files) == (first, False, ())
        assert source.repository == folder.as_uri()
        assert files.public(f"{files.worktree}/data/x.npz") == f"{folder}@{first[:12]}/data/x.npz"
        checked_out = files.worktree
    assert not checked_out.exists()
    assert git(folder, "worktree", "list").count("\n") == 0


def test_the_repository_is_named_by_its_remote_without_credentials(project):
    folder = project["folder"]
    git(folder, "remote", "add", "origin", "https://builder:s3cret@git.example.invalid/team/digits.git")
    with checkout(project["pipeline"], None, project["home"]) as files:
        assert files.repository == "https://git.example.invalid/team/digits.git"
    git(folder, "remote", "set-url", "origin", "git@git.example.invalid:team/digits.git")
    with checkout(project["pipeline"], None, project["home"]) as files:
        assert files.repository == "ssh://git@git.example.invalid/team/digits.git"


def test_a_folder_outside_git_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "pipeline.yaml").write_text("model: {}\n")
    with pytest.raises(InvalidInput, match="not inside a git repository; tapeout builds commits"):
        with checkout(tmp_path / "pipeline.yaml", None, tmp_path / "home"):
            pass


def test_external_weights_of_an_onnx_source_are_inputs_the_build_reads(project, exported_model):
    """PyTorch's exporter writes weights beside the model: a change there makes the build dirty."""
    import onnx

    folder = project["folder"]
    onnx.save(onnx.load(str(exported_model.path)), str(folder / "model.onnx"),
              save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    pipeline = project["pipeline"]
    text = pipeline.read_text()
    start, end = text.index("  source:\n"), text.index("  inputs:")
    pipeline.write_text(text[:start] + "  source:\n    onnx: model.onnx\n" + text[end:])
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "the model as an ONNX file with its weights beside it")
    assert dirty_files(project) == ()
    weights = folder / "model.onnx.data"
    data = bytearray(weights.read_bytes())
    data[0] ^= 1
    weights.write_bytes(bytes(data))
    assert dirty_files(project) == ("model.onnx.data (modified)",)
