"""The smaller holes, as a careless operator or a writer of the artifact store finds them:

- `tapeout --home X verify …` (an option before the subcommand) silently used ./.tapeout;
- `trace` hashed a file outside the bundle named by `compiled/compiler.json` `files`;
- `pull` kept the store's file modes (4777 arrived set-user-id and world-writable) and its
  empty folders;
- deep or non-UTF-8 JSON in model.sig, provenance.json or gates.json gave RecursionError or
  UnicodeDecodeError tracebacks instead of one line."""

from __future__ import annotations

import json
import shutil
import stat

import pytest

from tapeout.artifacts.digest import file_digest
from tapeout.artifacts.signing import sign_bundle
from tapeout.flows.cli import main
from test_trust_promotion import NAME, make_world, write_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("input"), only_good=True)


def stored(world, version: str):
    registered = world["registry"].get_version(NAME, version)
    return world["home"] / "artifacts" / "digits-cnn" / registered.run_id / "artifacts" / "bundle"


# -- global options before the subcommand -------------------------------------------------------------


def test_global_options_work_before_the_subcommand(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAPEOUT_HOME", raising=False)
    assert main(["--home", str(world["home"]), "verify", f"{NAME}@1"]) == 0
    assert main(["verify", f"{NAME}@1", "--home", str(world["home"])]) == 0
    assert not (tmp_path / ".tapeout").exists()
    capsys.readouterr()
    assert main(["--debug", "--home", str(world["home"]), "verify", f"{NAME}@9"]) == 2
    assert "Traceback" in capsys.readouterr().err  # --debug before the subcommand counts too


# -- trace stays inside the bundle ------------------------------------------------------------------


def test_trace_refuses_a_compiled_file_outside_the_bundle(world, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any bundle\n")
    bundle = write_bundle(tmp_path / "bundle", 21)
    record = json.loads((bundle / "compiled" / "compiler.json").read_text())
    record["files"] = ["artifact.bin", "../../secret.txt"]
    (bundle / "compiled" / "compiler.json").write_text(json.dumps(record))
    sign_bundle(bundle, world["keys"].private_key)  # even signed: trace reads only the bundle
    code = main(["trace", str(bundle), "--json", "--home", str(world["home"])])
    captured = capsys.readouterr()
    assert code == 2
    assert "compiler.json: files: '../../secret.txt' leads outside" in captured.err
    assert file_digest(secret) not in captured.out + captured.err


# -- pull writes what the signer signed, not the store's modes --------------------------------------------


def test_pull_writes_regular_modes_and_no_empty_folders(world, tmp_path, capsys):
    planted = stored(world, world["versions"]["good2"])
    (planted / "compiled" / "artifact.bin").chmod(0o4777)
    (planted / "reports" / "gates.json").chmod(0o666)
    (planted / "empty" / "deeper").mkdir(parents=True)
    output = tmp_path / "device"
    assert main(["pull", f"{NAME}@{world['versions']['good2']}", "-o", str(output), "--home", str(world["home"])]) == 0
    modes = {
        path.relative_to(output).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in output.rglob("*")
    }
    assert modes["compiled/artifact.bin"] == 0o755 and modes["reports/gates.json"] == 0o644
    assert all(mode in (0o644, 0o755) for mode in modes.values()), modes
    assert stat.S_IMODE(output.stat().st_mode) == 0o755
    assert not (output / "empty").exists()
    assert all(any(path.iterdir()) for path in output.rglob("*") if path.is_dir())


# -- malformed JSON gives one line ----------------------------------------------------------------------


CONTENTS = {"deep": b"[" * 100_000 + b"]" * 100_000, "not UTF-8": b'{"verdict": "\xff\xfe"}'}


@pytest.mark.parametrize("content", list(CONTENTS))
@pytest.mark.parametrize("file", ["model.sig", "provenance.json", "reports/gates.json"])
def test_malformed_json_in_a_bundle_gives_one_line(world, tmp_path, capsys, file, content):
    bundle = tmp_path / "bundle"
    shutil.copytree(world["work"] / "bundle-1", bundle)
    (bundle / file).write_bytes(CONTENTS[content])
    for command in ("verify", "trace"):
        code = main([command, str(bundle), "--home", str(world["home"])])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out, (command, captured.err)
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        if command == "verify" or code == 2:
            assert code in (1, 2) and len(errors) == 1, (command, captured.err)
        else:  # trace prints its record, with the failed verification in it
            assert code == 1 and "signature       FAILED" in captured.out


@pytest.mark.parametrize("content", list(CONTENTS))
def test_malformed_gates_report_in_the_store_refuses_promotion_in_one_line(tmp_path, capsys, content):
    world = make_world(tmp_path, only_good=True)
    (stored(world, world["versions"]["good1"]) / "reports" / "gates.json").write_bytes(CONTENTS[content])
    code = main(["promote", f"{NAME}@{world['versions']['good1']}", "--to", "production", "--home", str(world["home"])])
    error = capsys.readouterr().err
    assert code == 1 and "Traceback" not in error
    assert "gates report: reports/gates.json unreadable" in error
    assert ("nested too deeply" if content == "deep" else "not UTF-8") in error
