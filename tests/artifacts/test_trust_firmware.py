"""Firmware compatibility is a range, not a lower bound. An OpenVINO blob imports only into
the release that exported it, so its compiler declares an exact range; the artifact record
carries the compiler's upper bound (signed with the bundle), and promotion checks the
deployed revision against both ends. Without `--firmware`, promotion says what it assumed
instead of comparing the bundle with its own target revision."""

from __future__ import annotations

import json

import pytest

from tapeout.artifacts.compiled import write_record
from tapeout.compilers.interface import CompiledArtifact
from tapeout.compilers.registry import load_compiler
from tapeout.flows.cli import main
from test_trust_promotion import make_world, register


def openvino_release() -> str:
    pytest.importorskip("openvino")
    low, high = load_compiler("openvino").capabilities().firmware_range
    assert low == high, "an OpenVINO blob runs only on the release that exported it"
    return high


def test_compilers_declare_a_range_and_the_record_carries_its_upper_bound(tmp_path):
    release = openvino_release()
    assert load_compiler("onnxruntime").capabilities().firmware_range[1] is None
    (tmp_path / "model.blob").write_bytes(b"blob")
    artifact = CompiledArtifact(
        compiler="openvino", compiler_version=release, artifact_id=f"openvino-{release}-x", directory=tmp_path,
        files=("model.blob",), options={}, target="x86-openvino", minimum_firmware_revision=release,
        inputs=(), outputs=(),
    )
    record = json.loads(write_record(artifact, release).read_text())
    assert (record["minimum_firmware_revision"], record["maximum_firmware_revision"]) == (release, release)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    release = openvino_release()
    world = make_world(tmp_path_factory.mktemp("firmware"), only_good=True)
    world["openvino"] = register(
        world["registry"], world["keys"], world["work"], 7, target="x86-openvino",
        compiler_fields={
            "compiler": "openvino", "firmware_revision": release,
            "minimum_firmware_revision": release, "maximum_firmware_revision": release,
        },
    )
    world["release"] = release
    return world


def promote(world, *arguments) -> int:
    return main(["promote", f"digits-cnn-x86-openvino@{world['openvino']}", "--to", "production",
                 "--home", str(world["home"]), *arguments])


def test_an_openvino_blob_is_refused_for_a_newer_release(world, capsys):
    assert promote(world, "--firmware", "2027.0.0") == 1
    error = capsys.readouterr().err
    assert f"firmware: deployed firmware 2027.0.0 (from --firmware) > the artifact's maximum {world['release']}" in error
    older = "2024.0.0"
    assert promote(world, "--firmware", older) == 1
    assert f"deployed firmware {older} (from --firmware) < the artifact's minimum {world['release']}" in capsys.readouterr().err


def test_the_exporting_release_is_accepted(world, capsys):
    assert promote(world, "--firmware", world["release"], "--json") == 0
    checks = {check["name"]: check for check in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["firmware"]["detail"] == (
        f"deployed firmware {world['release']} (from --firmware) within the artifact's range "
        f"{world['release']} .. {world['release']}"
    )


def test_without_firmware_promotion_says_what_it_assumed(world, capsys):
    assert main(["promote", "digits-cnn-npu@1", "--to", "canary", "--home", str(world["home"])]) == 0
    out = capsys.readouterr().out
    assert (
        "firmware: no --firmware given: assumed the device runs 1.2.0, the revision the bundle was built for "
        "(not checked; the artifact runs on >= 1.0.0, no maximum)"
    ) in out
