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


def test_submit_show_cancel_and_list(env, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PROBLEM))
    r = run("submit", "solve", "--problem", str(path), "--strategy", "best_of_k", "--budget", "3",
            "--set", "max_new_tokens=16", "--set", "self_distillation.alpha=1.0")
    assert r.exit_code == 0, r.output
    job_id = int(r.output.strip())
    assert queue_length(env) == 1
    shown = json.loads(run("jobs", "show", str(job_id), "--json").output)
    assert (shown["status"], shown["kind"], shown["n_attempts"], shown["checkpoints"]) == ("queued", "solve", 0, [])
    assert shown["config"]["strategy"] == "best_of_k" and shown["config"]["budget"] == 3
    assert shown["config"]["max_new_tokens"] == 16 and shown["config"]["self_distillation"]["alpha"] == 1.0
    assert shown["last_metrics"] == {} and shown["error"] is None
    r = run("jobs", "cancel", str(job_id))
    assert r.exit_code == 0 and f"job {job_id} cancelled" in r.output
    r = runner.invoke(app, ["jobs", "cancel", str(job_id)])
    assert r.exit_code == 2 and "cancelled -> cancelled" in r.output
    listed = json.loads(run("jobs", "list", "--json", "--status", "cancelled").output)
    assert [j["id"] for j in listed] == [job_id]
    assert "best_of_k" not in run("jobs", "list").output and str(job_id) in run("jobs", "list").output


@pytest.mark.parametrize("args, text", [
    (["--set", "budget=0"], "budget: got 0"),
    (["--strategy", "beam"], "strategy: got 'beam'"),
    (["--set", "self_distillation.alpha=2"], "alpha: got 2"),
    (["--set", "nokey"], "expected KEY=VALUE"),
])
def test_invalid_solve_settings_exit_2_and_store_nothing(env, tmp_path, args, text):
    run("db", "upgrade")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PROBLEM))
    r = runner.invoke(app, ["submit", "solve", "--problem", str(path), *args])
    assert r.exit_code == 2 and text in r.output, r.output
    assert queue_length(env) == 0
    from backend.db import session_factory_from_settings, session_scope
    from backend.services.jobs import count_jobs
    from backend.services.problems import list_problems

    with session_scope(session_factory_from_settings(env)) as s:
        assert count_jobs(s) == 0 and list_problems(s) == []  # the problem was rolled back too


def test_submit_train_errors_and_success(env, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: humaneval\nmax_steps: 2\n")
    r = runner.invoke(app, ["submit", "train", "--config", str(cfg), "--dataset", "mine"])
    assert r.exit_code == 2 and "unknown dataset 'mine'" in r.output
    r = runner.invoke(app, ["submit", "train", "--config", str(cfg), "--set", "lr=-1"])
    assert r.exit_code == 2 and "lr: got -1" in r.output
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    r = runner.invoke(app, ["submit", "train", "--config", str(tmp_path / "bad.yaml")])
    assert r.exit_code == 2 and "must hold a mapping" in r.output
    assert queue_length(env) == 0
    r = run("submit", "train", "--config", str(cfg), "--gpus", "2", "--set", "train_batch_size=2")
    assert r.exit_code == 0, r.output
    shown = json.loads(run("jobs", "show", r.output.strip(), "--json").output)
    assert shown["gpus"] == 2 and shown["config"]["max_steps"] == 2 and "out_dir" not in shown["config"]
    assert queue_length(env) == 1


def test_jobs_list_reaps_silent_jobs(env, tmp_path, monkeypatch):
    """``jobs list`` runs the reaper: a job whose worker went silent is re-enqueued (one fresh message), and
    failed with the reason once it has used up SDPO_MAX_RESUMES."""
    from datetime import timedelta

    from sqlalchemy import update

    from backend.db import session_factory_from_settings, session_scope
    from backend.models import Job, utcnow
    from backend.services.jobs import claim_job

    path = tmp_path / "p.json"
    path.write_text(json.dumps(PROBLEM))
    job_id = int(run("submit", "solve", "--problem", str(path), "--budget", "2").output.strip())
    sessions = session_factory_from_settings(env)

    def silent_worker(worker_id: str) -> None:
        with session_scope(sessions) as s:
            claim_job(s, job_id=job_id, worker_id=worker_id, takeover_after_s=15)
            s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1)))

    silent_worker("gone:1")
    assert queue_length(env) == 1  # the submission's message (its worker "took" it and died)
    (row,) = json.loads(run("jobs", "list", "--json").output)
    assert (row["status"], row["resumes"], row["worker_id"]) == ("queued", 1, None)
    assert queue_length(env) == 2
    silent_worker("gone:2")
    monkeypatch.setenv("SDPO_MAX_RESUMES", "1")
    (row,) = json.loads(run("jobs", "list", "--json").output)
    assert row["status"] == "failed" and "worker gone:2 stopped heart-beating" in row["error"]
    assert "SDPO_MAX_RESUMES=1" in row["error"] and queue_length(env) == 2


def test_install_examples_puts_the_example_problems_in_the_solve_pickers_list(env):
    """What ``sdpo serve`` does on a fresh data dir: the examples dataset is registered, the picker lists every
    example, a picked one is accepted by the real submission path, and a restart does not duplicate it."""
    from backend.db import session_factory_from_settings, session_scope
    from backend.services import datasets as D
    from backend.services import picker as P
    from backend.services.problems import create_problem
    from sdpo.data.examples import N_EASY, NAME, example_problems
    from workers.cli import install_examples
    from workers.engine import parse_problem

    examples = example_problems()
    assert "in the Solve page's picker" in install_examples(env)
    install_examples(env)  # a second start
    sessions = session_factory_from_settings(env)
    with session_scope(sessions) as s:
        assert [d.name for d in D.list_datasets(s)] == [NAME]
        choices = P.list_dataset_problems(s)
        assert [c.title for c in choices] == [p["title"] for p in examples]
        assert "(toy world, easy)" in choices[0].label and "(classic, easy)" in choices[N_EASY].label
        picked = P.load_dataset_problem(s, dataset_id=choices[0].dataset_id, index=0)
        assert picked == examples[0]
        stored = create_problem(s, data=picked, validate=parse_problem, settings=env)
        assert stored.n_public_tests >= 3 and stored.n_hidden_tests >= 5
        assert stored.data["system"] == examples[0]["system"]
