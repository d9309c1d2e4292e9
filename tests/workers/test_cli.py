"""The service commands of ``sdpo`` (db, submit, jobs) against a tmp data dir (SQLite + filesystem broker)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from tests.workers.problems import DOUBLE as PROBLEM
from workers.cli import app

runner = CliRunner()



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


@pytest.mark.parametrize("sets, expected", [
    (["lr=1e-5"], {"lr": 1e-5}),
    (["lr=1E-5", "temperature=.5"], {"lr": 1e-5, "temperature": 0.5}),
    (["budget=1_000"], {"budget": 1000}),
    (["max_new_tokens=1e3"], {"max_new_tokens": 1000}),
    (["self_distillation.alpha=1", "lora_target_modules=[q_proj, v_proj]"],
     {"self_distillation": {"alpha": 1}, "lora_target_modules": ["q_proj", "v_proj"]}),
    (["self_distillation.dont_reprompt_on_self_success=false"],
     {"self_distillation": {"dont_reprompt_on_self_success": False}}),
])
def test_submit_solve_reads_set_values_as_the_user_means_them(env, tmp_path, sets, expected):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PROBLEM))
    args = ["submit", "solve", "--problem", str(path)]
    for pair in sets:
        args += ["--set", pair]
    r = run(*args)
    assert r.exit_code == 0, r.output
    config = json.loads(run("jobs", "show", r.output.strip(), "--json").output)["config"]
    for key, value in expected.items():
        got = config[key]
        assert (got if not isinstance(value, dict) else {k: got[k] for k in value}) == value


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
    (["--budget", "1000000000000"], "budget: got 1000000000000; must be <= 100000"),
    (["--set", "budget=1e12"], "budget: got 1000000000000; must be <= 100000"),
    (["--set", "max_new_tokens=99_999_999"], "max_new_tokens: got 99999999; must be <= 131072"),
    (["--set", "lr='1e-5'"], "lr: got '1e-5'; expected a number"),
    (["--model", "/nonexistent/model"], "model: no Hugging Face checkpoint (config.json) at /nonexistent/model"),
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
    from backend.services.lifecycle import claim_job

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


def test_submit_train_with_the_readme_config(env):
    """``sdpo submit train --config configs/tiny_cpu.yaml`` (the README's command): the file's out_dir is for
    ``sdpo train``; the job writes into its own folder, and a note says so."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
    r = runner.invoke(app, ["submit", "train", "--config", str(config)])
    assert r.exit_code == 0, r.output
    assert "out_dir: 'runs/tiny_cpu'" in r.stderr and "its own folder" in r.stderr
    shown = json.loads(run("jobs", "show", r.stdout.strip(), "--json").output)
    assert shown["config"]["max_steps"] == 3 and shown["config"]["lr"] == 1e-4 and "out_dir" not in shown["config"]
    r = runner.invoke(app, ["submit", "train", "--config", str(config), "--set", "out_dir=/tmp/x"])
    assert r.exit_code == 2 and "out_dir: is set by the worker" in r.output  # an explicit choice is refused


def test_jobs_show_summarises_every_round(env, tmp_path):
    """Every round, numbered as attempts.jsonl and the UI number attempts (1-based, in round order)."""
    from backend.db import session_factory_from_settings, session_scope
    from backend.schemas import AttemptIn
    from backend.services import lifecycle as L
    from backend.services import progress as P

    path = tmp_path / "p.json"
    path.write_text(json.dumps(PROBLEM))
    job_id = int(run("submit", "solve", "--problem", str(path), "--set", "n=2", "--budget", "4").output.strip())

    def attempt(rnd, index, passed, reward):
        return AttemptIn(round=rnd, index=index, response="r", reward=reward, passed_public=passed, total_public=2)

    with session_scope(session_factory_from_settings(env)) as s:
        L.claim_job(s, job_id=job_id, worker_id="w:1", takeover_after_s=60)
        P.record_attempts(s, job_id=job_id, attempts=[attempt(0, 0, 0, 0.0), attempt(0, 1, 1, 0.0)],
                          worker_id="w:1")
        P.append_metrics(s, job_id=job_id, step=0, metrics={"reward/mean": 0.0, "loss": 0.25, "ttt/updated": 1.0,
                                                            "sdpo/reprompt_sample_fraction": 0.5, "sdpo/kl_mean": 0.125,
                                                            "perf/sample_s": 2.0, "perf/score_s": 0.5},
                         worker_id="w:1")
        P.record_attempts(s, job_id=job_id, attempts=[attempt(1, 0, 2, 1.0)], worker_id="w:1")
        P.append_metrics(s, job_id=job_id, step=1, metrics={"reward/mean": 1.0, "perf/sample_s": 1.0},
                         worker_id="w:1")
    out = run("jobs", "show", str(job_id)).output
    assert ("  round 0: attempts 1-2 · best 1/2 tests, mean reward 0 · reward/mean=0 loss=0.25 "
            "sdpo/reprompt_sample_fraction=0.5 sdpo/kl_mean=0.125 ttt/updated=1 2.5 s") in out
    assert "  round 1: attempt 3 · best 2/2 tests, mean reward 1, 1 solved · reward/mean=1 1.0 s" in out
    rounds = json.loads(run("jobs", "show", str(job_id), "--json").output)["rounds"]
    assert [(r["round"], r["first_attempt"], r["attempts"], r["solved"]) for r in rounds] == [(0, 1, 2, 0), (1, 3, 1, 1)]
    assert rounds[0]["metrics"]["loss"] == 0.25


def test_jobs_attempts_prints_the_stored_texts(env, tmp_path):
    """`sdpo jobs attempts` prints what the database holds (escaped, replaced), with the raw response file."""
    from backend.db import session_factory_from_settings, session_scope
    from backend.schemas import AttemptIn
    from backend.services import lifecycle as L
    from backend.services import progress as P

    path = tmp_path / "p.json"
    path.write_text(json.dumps(PROBLEM))
    job_id = int(run("submit", "solve", "--problem", str(path), "--budget", "2").output.strip())
    sessions = session_factory_from_settings(env)
    with session_scope(sessions) as s:
        L.claim_job(s, job_id=job_id, worker_id="w:1", takeover_after_s=60)
        P.record_attempts(s, job_id=job_id, worker_id="w:1", jobs_dir=env.jobs_dir, attempts=[
            AttemptIn(round=0, index=i, response=r, code=r, reward=0.0, passed_public=0, total_public=2,
                      feedback="out: \x1b[31m\ud800", tokens=1) for i, r in enumerate(["a\x00b", "clean"])])
        L.finish_job(s, job_id=job_id, worker_id="w:1", status="failed", error="boom\x00")
    lines = [json.loads(x) for x in run("jobs", "attempts", str(job_id)).output.splitlines()]
    raw = P.raw_response_path(jobs_dir=env.jobs_dir, job_id=job_id, round=0, index=0)
    assert [(x["index"], x["response"], x["code"], x["feedback"], x["raw_response"]) for x in lines] == [
        (0, "a\\x00b", "a\\x00b", "out: \\x1b[31m\ufffd", str(raw)), (1, "clean", "clean", "out: \\x1b[31m\ufffd", None)]
    assert raw.read_bytes() == b"a\x00b"
    assert "error: boom\\x00" in run("jobs", "show", str(job_id)).output
    r = runner.invoke(app, ["jobs", "attempts", "41"])
    assert r.exit_code == 2 and "job 41 not found" in r.output


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
