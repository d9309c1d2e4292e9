"""The service commands of ``sdpo`` (db, submit, jobs) against a tmp data dir (SQLite + filesystem broker)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from workers.cli import app, parse_overrides

runner = CliRunner()

PROBLEM = {
    "title": "Double",
    "statement": "Read an integer n and print 2*n.",
    "tests": {"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"], "testtype": "stdin"},
    "hidden_tests": {"inputs": ["7\n"], "outputs": ["14\n"], "testtype": "stdin"},
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("SDPO_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SDPO_DATA_DIR", str(tmp_path / "data"))
    from backend.settings import Settings

    return Settings()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def queue_length(settings) -> int:
    from backend.queue import JobQueue

    return JobQueue(settings).length()


def test_parse_overrides():
    assert parse_overrides(["lr=1e-5", "self_distillation.alpha=1", "name=x", "flag=true", "ks=[1, 2]"]) == {
        "lr": 1e-5, "self_distillation": {"alpha": 1}, "name": "x", "flag": True, "ks": [1, 2]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_db_upgrade_and_empty_listing(env):
    r = run("db", "upgrade")
    assert r.exit_code == 0 and "head" in r.output
    assert (env.data_dir / "sdpo.db").exists()
    r = run("jobs", "list", "--json")
    assert r.exit_code == 0 and json.loads(r.output) == []


def test_unknown_job_exits_2(env):
    r = runner.invoke(app, ["jobs", "show", "41"])
    assert r.exit_code == 2 and "job 41 not found" in r.output
    r = runner.invoke(app, ["jobs", "cancel", "41"])
    assert r.exit_code == 2


def test_unsafe_settings_exit_2(env, monkeypatch):
    monkeypatch.setenv("SDPO_HOST", "0.0.0.0")
    r = runner.invoke(app, ["jobs", "list"])
    assert r.exit_code == 2 and "SDPO_AUTH" in r.output


@pytest.mark.parametrize("mutate, field", [
    (lambda p: p.pop("tests"), "tests: required field is missing"),
    (lambda p: p.update(tests={"inputs": ["1"], "outputs": "2", "testtype": "stdin"}), "tests.outputs"),
    (lambda p: p.update(statement="x" * 30_000), "statement: 30000 characters; at most 20000"),
    (lambda p: p.update(colour="red"), "colour: unknown field"),
])
def test_malformed_problem_exits_2_and_queues_nothing(env, tmp_path, mutate, field):
    problem = json.loads(json.dumps(PROBLEM))
    mutate(problem)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(problem))
    r = runner.invoke(app, ["submit", "solve", "--problem", str(path), "--budget", "2"])
    assert r.exit_code == 2, r.output
    assert field in r.output
    assert json.loads(run("jobs", "list", "--json").output) == []
    assert queue_length(env) == 0


def test_bad_json_problem_exits_2(env, tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"title": "x", "tests": [')
    r = runner.invoke(app, ["submit", "solve", "--problem", str(path)])
    assert r.exit_code == 2 and "not valid JSON" in r.output
    r = runner.invoke(app, ["submit", "solve", "--problem", str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "cannot read" in r.output
    assert queue_length(env) == 0
