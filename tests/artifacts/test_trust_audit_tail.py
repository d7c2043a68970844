"""The end of the audit log, attacked as a writer of the MLflow store would: the last
record(s) deleted by `delete_run`, hidden by `set_terminated(FAILED)` or a retag, removed by
raw SQL, and the alias moved with `MlflowClient.set_registered_model_alias`. A hash chain
alone cannot see a missing tail; the head anchored in the registered model's tag can. Each
attack is flagged by `trace`, `verify` and `pull`, and the next `promote` is refused with
the alias left where it is.

One home is built with four promotions; each test attacks its own copy of the SQLite store
(the bundles stay where the original's runs point)."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tapeout.artifacts.audit import HEAD_TAG, read_history
from tapeout.artifacts.registry import Registry
from tapeout.flows.cli import main
from test_trust_promotion import NAME, make_world, register


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-tail")
    world = make_world(root, only_good=True)
    world["versions"]["good3"] = register(world["registry"], world["keys"], world["work"], 3)
    world["versions"]["good4"] = register(world["registry"], world["keys"], world["work"], 4)
    for n in (1, 2, 3):
        assert main(["promote", f"{NAME}@{n}", "--to", "production", "--home", str(world["home"])]) == 0
    return world


@pytest.fixture()
def home(promoted, tmp_path):
    copy = tmp_path / "home"
    copy.mkdir()
    shutil.copytree(promoted["home"] / "keys", copy / "keys")
    shutil.copyfile(promoted["home"] / "mlflow.db", copy / "mlflow.db")
    return copy


def registry_of(home) -> Registry:
    return Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")


def last_records(home, count: int) -> list[str]:
    return [record.record_id for record in read_history(registry_of(home), NAME, "production").records[-count:]]


def delete_run(home):
    registry_of(home)._client.delete_run(last_records(home, 1)[0])


def fail_run(home):
    registry_of(home)._client.set_terminated(last_records(home, 1)[0], status="FAILED")


def retag(home):
    registry_of(home)._client.set_tag(last_records(home, 1)[0], "tapeout.audit.model", "elsewhere")


def sql_delete(home):
    run_id = last_records(home, 1)[0]
    with sqlite3.connect(home / "mlflow.db") as database:
        for table in ("params", "tags", "latest_metrics", "metrics"):
            database.execute(f"delete from {table} where run_uuid = ?", (run_id,))
        database.execute("delete from runs where run_uuid = ?", (run_id,))


def delete_last_three(home):
    for run_id in last_records(home, 3):
        registry_of(home)._client.delete_run(run_id)


def move_alias(home):
    registry_of(home)._client.set_registered_model_alias(NAME, "production", "1")


ATTACKS = {
    "delete_run": (delete_run, "the last 1 record(s) were deleted or hidden"),
    "set_terminated FAILED": (fail_run, "the last 1 record(s) were deleted or hidden"),
    "retag": (retag, "the last 1 record(s) were deleted or hidden"),
    "raw SQL delete": (sql_delete, "the last 1 record(s) were deleted or hidden"),
    "delete the last three": (delete_last_three, "ends at #0 but its head says #3: the last 3 record(s)"),
    "set_registered_model_alias": (move_alias, "points to version 1 but its audit head says 3: the alias was moved outside tapeout"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attack_on_the_end_of_the_log_is_flagged_and_blocks_the_next_promotion(home, attack, capsys, tmp_path):
    action, problem = ATTACKS[attack]
    cli = lambda *arguments: main([*arguments, "--home", str(home)])  # noqa: E731
    assert cli("trace", f"{NAME}@production", "--json") == 0  # the copy holds before the attack
    capsys.readouterr()
    action(home)
    before = registry_of(home).resolve(f"{NAME}@production").version

    assert cli("trace", f"{NAME}@production") == 1
    assert problem in capsys.readouterr().out
    assert cli("verify", f"{NAME}@production") == 1
    assert problem in capsys.readouterr().err
    assert cli("pull", f"{NAME}@production", "-o", str(tmp_path / "device")) == 1
    assert problem in capsys.readouterr().err and not (tmp_path / "device").exists()
    assert cli("promote", f"{NAME}@4", "--to", "production") == 1
    error = capsys.readouterr().err
    assert "refused, alias unchanged" in error and problem in error
    assert registry_of(home).resolve(f"{NAME}@production").version == before
    # The refusal is recorded, and does not make the end look whole again.
    refusals = [r for r in read_history(registry_of(home), NAME, "production").records if r.action == "refuse"]
    assert refusals and problem in refusals[-1].outcome
    assert cli("promote", f"{NAME}@4", "--to", "production") == 1
    assert "refused, alias unchanged: audit log: " in capsys.readouterr().err
    assert cli("trace", f"{NAME}@production") == 1


def test_a_deleted_head_is_flagged(home, capsys):
    registry_of(home)._client.delete_registered_model_tag(NAME, HEAD_TAG + "production")
    assert main(["verify", f"{NAME}@production", "--home", str(home)]) == 1
    assert "nothing anchors the end of the audit log" in capsys.readouterr().err


def test_a_head_rewritten_without_the_key_is_not_trusted(home, capsys):
    """Delete the last record and rewrite the head to the one before it, as someone without
    the signing key would: the head's signature no longer matches what it says."""
    import json

    registry = registry_of(home)
    records = read_history(registry, NAME, "production").records
    head = json.loads(registry._client.get_registered_model(NAME).tags[HEAD_TAG + "production"])
    head.update(sequence=records[-2].sequence, record_digest=records[-2].record_digest, version="2")
    registry._client.delete_run(records[-1].record_id)
    registry._client.set_registered_model_tag(NAME, HEAD_TAG + "production", json.dumps(head))
    registry._client.set_registered_model_alias(NAME, "production", "2")
    assert main(["verify", f"{NAME}@production", "--home", str(home)]) == 1
    assert "the audit head of digits-cnn-npu@production cannot be trusted: the signature by key:sha256:" in capsys.readouterr().err


def test_an_alias_set_outside_tapeout_is_flagged(home, capsys):
    registry_of(home)._client.set_registered_model_alias(NAME, "staging", "2")
    assert main(["trace", f"{NAME}@2", "--home", str(home)]) == 1
    assert "digits-cnn-npu@staging points to version 2 but no promotion is recorded" in capsys.readouterr().out
