"""A finished stage folder is never written again. Four concurrent runs of one commit once
failed with "No graph was found in the protobuf": Prefect missed the compile stage's cache
(tasks nested in the build-target task commit their results only with their parent), so a
second run re-compiled into the shared folder while the first was evaluating the file."""

from __future__ import annotations

import os
from pathlib import Path

from tapeout.flows.pipeline import _run_cached


class AlwaysRuns:
    """A stage whose cache always misses: it writes its output every time it is called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *, workdir: Path) -> Path:
        self.calls += 1
        workdir.mkdir(parents=True, exist_ok=True)
        output = workdir / "model.bin"
        with output.open("wb") as stream:  # truncates first, as ONNX Runtime's writer does
            stream.write(f"run {self.calls}".encode() * 1000)
        return output

    def with_options(self, **options):
        return self


def test_a_rerun_never_rewrites_a_finished_stage_folder(tmp_path):
    stage = AlwaysRuns()
    workdir = tmp_path / "cache" / "compile" / "key"
    first = _run_cached(stage, workdir, lambda path: [path])
    assert first == workdir / "model.bin"
    before = (first.read_bytes(), os.stat(first).st_ino, os.stat(first).st_mtime_ns)

    second = _run_cached(stage, workdir, lambda path: [path])
    assert stage.calls == 2
    assert (first.read_bytes(), os.stat(first).st_ino, os.stat(first).st_mtime_ns) == before
    assert second != first and second.read_bytes().startswith(b"run 2")


def test_a_stage_killed_before_it_finished_is_run_again_in_place(tmp_path):
    stage = AlwaysRuns()
    workdir = tmp_path / "cache" / "compile" / "key"
    workdir.mkdir(parents=True)
    (workdir / "model.bin").write_bytes(b"half")  # a killed run's leftovers, never finished
    result = _run_cached(stage, workdir, lambda path: [path])
    assert result == workdir / "model.bin" and result.read_bytes().startswith(b"run 1")


class Recorded(AlwaysRuns):
    """A stage whose folder records its result: a finished folder is reloaded, not re-run."""

    @staticmethod
    def load(workdir: Path) -> Path:
        return workdir / "model.bin"


def _messages() -> tuple[list[str], object]:
    said: list[str] = []
    return said, said.append


def test_a_finished_folder_whose_file_changed_is_not_reused(tmp_path):
    stage = Recorded()
    workdir = tmp_path / "cache" / "compile" / "key"
    first = _run_cached(stage, workdir, lambda path: [path], stage.load, label="compile")
    said, say = _messages()
    assert _run_cached(stage, workdir, lambda path: [path], stage.load, label="compile", say=say) == first
    assert stage.calls == 1 and said == ["compile (cached)"]

    first.write_bytes(b"changed after the stage finished")
    said, say = _messages()
    again = _run_cached(stage, workdir, lambda path: [path], stage.load, label="compile", say=say)
    assert stage.calls == 2 and again != first and again.read_bytes().startswith(b"run 2")
    assert said[0].startswith(f"compile: {workdir} changed since the stage finished (key/model.bin: expected sha256 ")
    assert first.read_bytes() == b"changed after the stage finished"  # a finished folder is never written


def test_a_file_added_to_or_removed_from_a_finished_folder_is_named(tmp_path):
    stage = Recorded()
    workdir = tmp_path / "cache" / "compile" / "key"
    _run_cached(stage, workdir, lambda path: [path], stage.load)
    (workdir / "extra.onnx").write_bytes(b"")
    said, say = _messages()
    _run_cached(stage, workdir, lambda path: [path], stage.load, label="compile", say=say)
    assert "(key/extra.onnx: not there when the stage finished)" in said[0]

    other = tmp_path / "cache" / "compile" / "other"
    _run_cached(stage, other, lambda path: [path], stage.load)
    (other / "model.bin").unlink()
    said, say = _messages()
    _run_cached(stage, other, lambda path: [path], stage.load, label="compile", say=say)
    assert "(other/model.bin: missing (expected sha256 " in said[0]


def test_a_marker_that_records_nothing_is_completed_on_first_use(tmp_path):
    stage = Recorded()
    workdir = tmp_path / "cache" / "compile" / "key"
    _run_cached(stage, workdir, lambda path: [path], stage.load)
    marker = workdir.parent / ".key.finished"
    marker.write_text("")  # as an earlier tapeout left it
    said, say = _messages()
    _run_cached(stage, workdir, lambda path: [path], stage.load, label="compile", say=say)
    assert stage.calls == 1 and said == ["compile (cached)"] and "model.bin" in marker.read_text()
