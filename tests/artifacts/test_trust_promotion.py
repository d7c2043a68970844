"""Promotion, rollback, the audit records, pull and trace against a real MLflow (SQLite in a
temporary folder), with small signed bundles registered by hand — no pipeline run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tapeout.artifacts.audit import AUDIT_EXPERIMENT, read_history
from tapeout.artifacts.digest import bundle_digest, file_digest
from tapeout.artifacts.provenance import SourceRevision, provenance_statement
from tapeout.artifacts.registry import Registry
from tapeout.artifacts.signing import init_keys, sign_bundle, signer_identity
from tapeout.flows.cli import main

NAME = "digits-cnn-npu"


def write_bundle(
    root: Path, n: int, *, verdict: str = "pass", minimum: str = "1.0.0", target: str = "npu", compiler_fields=None
) -> Path:
    """A small bundle with every file trace and promote read, different bytes per `n`;
    `compiler_fields` override compiled/compiler.json's."""
    (root / "model").mkdir(parents=True)
    (root / "compiled").mkdir()
    (root / "calibration").mkdir()
    (root / "reports").mkdir()
    (root / "config").mkdir()
    (root / "model" / "model.onnx").write_bytes(b"fp32" * 64)
    (root / "compiled" / "artifact.bin").write_bytes(f"artifact {n}".encode() * 32)
    compiler = {
        "compiler": "int8-ref", "compiler_version": "0.1.0", "artifact_id": f"int8-ref-0.1.0-{n}",
        "files": ["artifact.bin"], "options": {"requant": "ort"}, "target": target,
        "firmware_revision": "1.2.0", "minimum_firmware_revision": minimum,
        "inputs": [], "outputs": [], "report": {}, **(compiler_fields or {}),
    }
    (root / "compiled" / "compiler.json").write_text(json.dumps(compiler))
    (root / "calibration" / "manifest.json").write_text(json.dumps({"digest": "c" * 64, "count": 300, "file": "calibration.npz"}))
    (root / "calibration" / "table.json").write_text(json.dumps({"method": "minmax", "options": {}}))
    gates = {"verdict": verdict, "validation_set_digest": "v" * 64, "gates": [
        {"metric": "accuracy_drop", "bound": "max", "threshold": 0.02, "observed": 0.01, "passed": verdict == "pass"},
    ]}
    (root / "reports" / "gates.json").write_text(json.dumps(gates))
    (root / "config" / "pipeline.yaml").write_text("model: {name: digits-cnn}\n")
    statement = provenance_statement(
        subjects={"compiled/artifact.bin": file_digest(root / "compiled" / "artifact.bin")},
        materials=[{"name": "config/pipeline.yaml", "digest": {"sha256": file_digest(root / "config" / "pipeline.yaml")}}],
        source=SourceRevision("/src/models", f"{n:040x}", False),
        resolved_config={"model": {"name": "digits-cnn"}},
        target=target,
        config_digest=f"{n:064x}",
        invocation_id=f"invocation-{n}",
        started_on="2026-01-01T00:00:00+00:00",
        finished_on="2026-01-01T00:01:00+00:00",
    )
    (root / "provenance.json").write_text(json.dumps(statement))
    return root


def register(
    registry: Registry, keys, work: Path, n: int, *, verdict="pass", minimum="1.0.0", digest_tag=None,
    target="npu", compiler_fields=None,
) -> str:
    folder = work / (f"bundle-{n}" if target == "npu" else f"bundle-{target}-{n}")
    bundle = write_bundle(folder, n, verdict=verdict, minimum=minimum, target=target, compiler_fields=compiler_fields)
    sign_bundle(bundle, keys.private_key)
    run_id = registry.start_run("digits-cnn", f"build-{n}", {})
    registry.log_directory(run_id, bundle, "bundle")
    tags = {
        "bundle_digest": digest_tag or bundle_digest(bundle),
        "gate_verdict": verdict,
        "artifact_sha256": file_digest(bundle / "compiled" / "artifact.bin"),
        "commit": f"{n:040x}",
        "config_digest": f"{n:064x}",
    }
    return registry.register(f"digits-cnn-{target}", run_id, tags).version


_EMPTY_STORE: list[Path] = []


def empty_store(database: Path) -> Registry:
    """A registry on a new SQLite store at `database`, copied from an empty one migrated
    once per session (MLflow's schema migrations take seconds per new database)."""
    import atexit
    import tempfile

    if not _EMPTY_STORE:
        folder = Path(tempfile.mkdtemp(prefix="tapeout-empty-store-"))
        atexit.register(shutil.rmtree, folder, True)
        Registry(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts")._client.search_experiments()
        _EMPTY_STORE.append(folder / "mlflow.db")
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE[0], database)
    return Registry(f"sqlite:///{database}", database.parent / "artifacts")


def make_world(root: Path, *, only_good: bool = False) -> dict:
    home = root / "home"
    keys, _ = init_keys(home / "keys")
    registry = empty_store(home / "mlflow.db")
    work = root / "work"
    versions = {"good1": register(registry, keys, work, 1), "good2": register(registry, keys, work, 2)}
    if only_good:
        return {"home": home, "keys": keys, "registry": registry, "versions": versions, "work": work}
    versions.update({
        "gate_failed": register(registry, keys, work, 3, verdict="fail"),
        "wrong_digest": register(registry, keys, work, 4, digest_tag="0" * 64),
        "new_firmware": register(registry, keys, work, 5, minimum="2.0.0"),
        "tampered": register(registry, keys, work, 6),
    })
    stored = registry.get_version(NAME, versions["tampered"])
    bundle = home / "artifacts" / "digits-cnn" / stored.run_id / "artifacts" / "bundle"
    assert bundle.is_dir(), bundle
    (bundle / "reports" / "gates.json").write_text('{"verdict": "pass", "gates": []}')
    return {"home": home, "keys": keys, "registry": registry, "versions": versions, "work": work}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One home with six versions: 1, 2 good; 3 gate-failed; 4 digest tag wrong; 5 needs
    firmware 2.0.0; 6 good but tampered in the artifact store after registration."""
    return make_world(tmp_path_factory.mktemp("trust"))


def cli(world, *arguments) -> int:
    return main([*arguments, "--home", str(world["home"])])


def production(world) -> str | None:
    try:
        return world["registry"].resolve(f"{NAME}@production").version
    except Exception:
        return None


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which, arguments, reason",
    [
        ("gate_failed", [], "gate verdict: version tag gate_verdict is 'fail'"),
        ("gate_failed", [], "gates report: reports/gates.json verdict is 'fail'"),
        ("wrong_digest", [], "bundle digest: bundle hashes to"),
        ("new_firmware", ["--firmware", "1.2.0"], "deployed firmware 1.2.0 (from --firmware) < the artifact's minimum 2.0.0"),
        ("good1", ["--firmware", "0.9"], "deployed firmware 0.9 (from --firmware) < the artifact's minimum 1.0.0"),
        ("tampered", [], "Hash mismatch for 'reports/gates.json'"),
    ],
)
def test_promotion_refuses_with_the_reason_and_leaves_the_alias(world, capsys, which, arguments, reason):
    before = production(world)
    version = world["versions"][which]
    code = cli(world, "promote", f"{NAME}@{version}", "--to", "production", "--reason", "test", *arguments)
    error = capsys.readouterr().err
    assert code == 1
    assert "refused, alias unchanged" in error and reason in error and "Traceback" not in error
    assert production(world) == before
    refusals = [r for r in read_history(world["registry"], NAME, "production").records if r.action == "refuse"]
    assert refusals[-1].to_version == version and reason in refusals[-1].outcome


def test_a_signer_outside_the_policy_is_refused(world, capsys, tmp_path):
    stranger, _ = init_keys(tmp_path / "stranger")
    code = cli(world, "promote", f"{NAME}@{world['versions']['good1']}", "--to", "production",
               "--public-key", str(stranger.public_key))
    assert code == 1
    assert "signer outside the policy" in capsys.readouterr().err


def test_the_candidate_alias_and_bad_references_are_bad_input(world, capsys):
    assert cli(world, "promote", f"{NAME}@1", "--to", "candidate") == 2
    assert cli(world, "promote", f"{NAME}@99", "--to", "production") == 2
    assert cli(world, "promote", f"{NAME}@1", "--to", "production", "--firmware", "latest") == 2
    error = capsys.readouterr().err
    assert "candidate alias is set by tapeout run" in error and "@99" in error and "--firmware" in error


# -- promote, rollback and the audit trail -------------------------------------------------------


def test_promote_promote_rollback_with_an_audit_record_each(world, capsys):
    registry, versions = world["registry"], world["versions"]
    one, two = versions["good1"], versions["good2"]
    assert cli(world, "promote", f"{NAME}@{one}", "--to", "production", "--reason", "first release", "--actor", "ci") == 0
    assert production(world) == one
    capsys.readouterr()
    assert cli(world, "promote", f"{NAME}@{two}", "--to", "production", "--json") == 0
    moved = json.loads(capsys.readouterr().out)
    assert (moved["from_version"], moved["to_version"], moved["changed"]) == (one, two, True)
    assert [check["name"] for check in moved["checks"]] == ["gate verdict", "signature", "bundle digest", "gates report", "firmware"]
    assert moved["record"]["user"] and moved["record"]["record_digest"]
    # Promoting what is already there changes nothing and writes no record.
    assert cli(world, "promote", f"{NAME}@{two}", "--to", "production") == 0
    assert "already production" in capsys.readouterr().out
    assert production(world) == two
    assert cli(world, "rollback", NAME, "--alias", "production", "--reason", "regression") == 0
    assert production(world) == one
    assert f"version {two} → {one}" in capsys.readouterr().out
    # Nothing was promoted before version one: refuse, alias unchanged.
    assert cli(world, "rollback", NAME, "--alias", "production") == 1
    assert "no earlier promotion" in capsys.readouterr().err
    assert production(world) == one

    history = read_history(registry, NAME, "production")
    assert history.chain_ok, history.problems
    moves = [(r.action, r.from_version, r.to_version) for r in history.records if r.action != "refuse"]
    assert moves == [("promote", "", one), ("promote", one, two), ("rollback", two, one)]
    assert history.records[-1].action == "refuse"
    assert history.records[-1].outcome.startswith("rollback refused: no earlier promotion")
    first = next(r for r in history.records if r.action == "promote")
    assert first.reason == "first release" and first.actor == "ci" and first.user
    assert first.when.endswith("+00:00") and first.verification.startswith("verified:")
    assert first.signer == signer_identity(world["keys"].public_key)
    assert history.alias_stack() == [one]

    # Records are MLflow runs whose fields are params: MLflow refuses to change them.
    client = registry._client
    with pytest.raises(Exception):
        client.log_param(first.record_id, "reason", "edited afterwards")
    assert client.get_experiment_by_name(AUDIT_EXPERIMENT) is not None

    # trace shows the history, and the HTML report is one self-contained page.
    report = world["work"] / "trace.html"
    assert cli(world, "trace", f"{NAME}@{one}", "--json", "--html", str(report)) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["verification"]["verified"] is True
    assert record["promotions"]["chain_ok"] is True
    assert [r["action"] for r in record["promotions"]["records"] if r["action"] != "refuse"] == ["promote", "promote", "rollback"]
    assert record["source"]["commit"] == f"{1:040x}" and record["calibration_set"]["count"] == 300
    assert record["compiler"]["name"] == "int8-ref" and record["firmware"]["minimum_revision"] == "1.0.0"
    page = report.read_text()
    assert "Promotion history" in page and "first release" in page and "<script" not in page
    assert cli(world, "trace", f"{NAME}@production") == 0
    text = capsys.readouterr().out
    assert "promotions" in text and "rollback" in text and "verified now" in text


def test_rollback_refuses_when_the_alias_was_moved_outside_tapeout(tmp_path, capsys):
    world = make_world(tmp_path, only_good=True)  # its own: the alias it moves stays flagged
    world["versions"]["gate_failed"] = register(world["registry"], world["keys"], world["work"], 3, verdict="fail")
    registry = world["registry"]
    assert cli(world, "promote", f"{NAME}@{world['versions']['good1']}", "--to", "staging") == 0
    assert cli(world, "promote", f"{NAME}@{world['versions']['good2']}", "--to", "staging") == 0
    registry._client.set_registered_model_alias(NAME, "staging", world["versions"]["gate_failed"])
    capsys.readouterr()
    assert cli(world, "rollback", NAME, "--alias", "staging") == 1
    assert "moved outside tapeout" in capsys.readouterr().err


def test_a_deleted_audit_record_breaks_the_chain_and_blocks_rollback(tmp_path, capsys):
    world = make_world(tmp_path, only_good=True)
    registry, versions = world["registry"], world["versions"]
    for version in ("good1", "good2", "good1"):
        assert cli(world, "promote", f"{NAME}@{versions[version]}", "--to", "canary") == 0
    middle = read_history(registry, NAME, "canary").records[1]
    registry._client.delete_run(middle.record_id)
    history = read_history(registry, NAME, "canary")
    assert not history.chain_ok and "does not follow the previous record" in history.problems[0]
    capsys.readouterr()
    assert cli(world, "rollback", NAME, "--alias", "canary") == 1
    assert "does not follow the previous record" in capsys.readouterr().err
    assert cli(world, "trace", f"{NAME}@canary") == 1
    assert "audit log       BROKEN" in capsys.readouterr().out


# -- pull ----------------------------------------------------------------------------------------


def test_pull_verifies_before_writing(world, capsys, tmp_path):
    versions = world["versions"]
    output = tmp_path / "deployed"
    assert cli(world, "pull", f"{NAME}@{versions['good2']}", "-o", str(output)) == 0
    assert (output / "model.sig").is_file() and (output / "compiled" / "artifact.bin").is_file()
    assert bundle_digest(output) == world["registry"].get_version(NAME, versions["good2"]).tags["bundle_digest"]
    assert cli(world, "pull", f"{NAME}@{versions['good1']}", "-o", str(output)) == 2
    assert "not an empty folder" in capsys.readouterr().err
    refused = tmp_path / "refused"
    assert cli(world, "pull", f"{NAME}@{versions['tampered']}", "-o", str(refused)) == 1
    assert "reports/gates.json" in capsys.readouterr().err
    assert not refused.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["deployed"]  # no staging left behind


# -- trace by a file found in the field -----------------------------------------------------------


def test_trace_finds_a_compiled_file_by_its_digest(world, capsys, tmp_path):
    found = tmp_path / "from-the-field.bin"
    shutil.copyfile(world["work"] / "bundle-2" / "compiled" / "artifact.bin", found)
    assert cli(world, "trace", str(found), "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["lookup"]["matches"] == [f"{NAME}@{world['versions']['good2']}"]
    assert record["registry"]["version"] == world["versions"]["good2"]
    assert cli(world, "trace", file_digest(found)) == 0
    assert "is in" in capsys.readouterr().out
    stranger = tmp_path / "unknown.bin"
    stranger.write_bytes(b"not ours")
    assert cli(world, "trace", str(stranger)) == 1
    assert "not a compiled file of any registered version" in capsys.readouterr().err


def test_trace_of_a_bundle_folder_finds_its_version(world, capsys):
    assert cli(world, "trace", str(world["work"] / "bundle-1"), "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["registry"]["version"] == world["versions"]["good1"]
    assert "promotions" in record


def test_trace_of_a_tampered_version_fails_naming_the_file(world, capsys):
    assert cli(world, "trace", f"{NAME}@{world['versions']['tampered']}") == 1
    out = capsys.readouterr().out
    assert "signature       FAILED" in out and "reports/gates.json" in out
