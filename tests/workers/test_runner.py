"""The runner's safety parts on real databases, without worker processes: the parent-death launcher, writes
and stop checks as the job's owner (what the ranks of an N-GPU job do), and refusing a job that needs more
GPUs than the worker offers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import update

from backend.db import make_engine, make_session_factory, session_scope
from backend.migrate import upgrade
from backend.models import Job, utcnow
from backend.services import jobs as J
from backend.services import lifecycle as L
from backend.services import progress as P
from backend.settings import Settings
from tests.backend.pgutil import create_pg_database, drop_pg_database
from workers.lifeline import pid_alive
from workers.runner import DbCallbacks, WorkerContext, run_job

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "workers.lifeline", str(__import__("os").getpid()),
                          sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_lifeline_child_dies_with_its_parent():
    """SIGKILL of the parent (no chance to clean up) kills the child started through workers.lifeline."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.5)
        assert pid_alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait()


def test_lifeline_refuses_an_orphan():
    r = subprocess.run([sys.executable, "-m", "workers.lifeline", "1", sys.executable, "-c", "print('ran')"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "ran" not in r.stdout


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else create_pg_database()
    upgrade(url)
    yield Settings(data_dir=tmp_path / "data", database_url=url, heartbeat_interval_s=0.5, heartbeat_timeout_s=6)
    if request.param == "postgres":
        drop_pg_database(url)


def _ctx(settings: Settings, worker_id: str, gpus: int | None = None) -> WorkerContext:
    engine = make_engine(settings.database_url)
    return WorkerContext(settings=settings, sessions=make_session_factory(engine), worker_id=worker_id, gpus=gpus)


def _job(ctx: WorkerContext, gpus: int = 2) -> int:
    with session_scope(ctx.sessions) as s:
        return J.submit_job(s, kind="train", config={"max_steps": 1}, validate=lambda kind, config, **_: config,
                            enqueue=lambda *a: None, gpus=gpus).id


def test_rank_callbacks_stop_and_write_nothing_once_the_job_is_taken_over(settings):
    """A rank writes as its worker (owner) and checks before every step that the job is still that worker's;
    after a takeover it stops and its late writes are dropped."""
    ctx = _ctx(settings, "rank-process:1")
    job_id = _job(ctx)
    with session_scope(ctx.sessions) as s:
        L.claim_job(s, job_id=job_id, worker_id="worker:1", takeover_after_s=6)
    cb = DbCallbacks(ctx, job_id, None, owner="worker:1")
    assert not cb.should_stop()
    cb.on_metrics(1, {"loss": 1.0})
    with session_scope(ctx.sessions) as s:  # worker:1 went silent; another worker takes the job over
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow().replace(year=2000)))
    with session_scope(ctx.sessions) as s:
        assert L.claim_job(s, job_id=job_id, worker_id="worker:2", takeover_after_s=6) is L.Claim.RESUME
    late = DbCallbacks(ctx, job_id, None, owner="worker:1")
    late.on_metrics(2, {"loss": 2.0})  # refused, not raised: the rank goes on to its stop check
    assert late.lost.is_set() and late.should_stop() and not late.cancelled
    assert cb.should_stop() and cb.lost.is_set()
    with session_scope(ctx.sessions) as s:
        assert P.metric_series(s, job_id=job_id) == {"loss": [(1, 1.0)]}
    # the new owner's ranks run on; a cancel stops them
    new = DbCallbacks(ctx, job_id, None, owner="worker:2")
    assert not new.should_stop()
    with session_scope(ctx.sessions) as s:
        J.cancel_job(s, job_id=job_id)
    assert new.should_stop() and new.cancelled and not new.lost.is_set()


def test_worker_refuses_a_job_needing_more_gpus_than_it_offers(settings):
    ctx = _ctx(settings, "one-gpu:1", gpus=1)
    job_id = _job(ctx, gpus=4)
    assert run_job(ctx, job_id, "train") == "failed"
    with session_scope(ctx.sessions) as s:
        job = J.get_job(s, job_id=job_id)
        assert job.status == "failed" and job.worker_id == "one-gpu:1"
        assert "needs 4 GPUs but worker one-gpu:1 offers 1" in job.error and "'gpu4'" in job.error


# ------------------------------------------------------------------------ writes the database refuses
REFUSAL = "disk quota exceeded (test trigger)"


def _refuse_attempts(settings: Settings, when_sqlite: str, when_pg: str, table: str = "attempts") -> None:
    """A real database error on some inserts into ``table``: a trigger raising ``REFUSAL`` when its condition
    holds."""
    from sqlalchemy import text

    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON {table} WHEN {when_sqlite} "
                              f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"))
        else:
            conn.execute(text(f"CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF {when_pg} THEN "
                              f"RAISE EXCEPTION '{REFUSAL}'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse()"))
    engine.dispose()


def test_an_attempt_the_database_refuses_is_recorded_as_a_stand_in_and_the_job_goes_on(settings):
    from sdpo.callbacks import Attempt

    ctx = _ctx(settings, "worker:1")
    job_id = _job(ctx, gpus=1)
    with session_scope(ctx.sessions) as s:
        L.claim_job(s, job_id=job_id, worker_id="worker:1", takeover_after_s=6)
    _refuse_attempts(settings, "NEW.response LIKE '%REFUSE ME%'", "NEW.response LIKE '%REFUSE ME%'")
    cb = DbCallbacks(ctx, job_id, None)
    responses = ["fine\x00", "REFUSE ME\x00", "fine too"]
    cb.on_attempts([Attempt(round=0, index=i, response=r, code="print(1)", reward=0.5, passed=1, total=2,
                            feedback="wrong", tokens=4, seconds=0.5) for i, r in enumerate(responses)])
    assert not cb.lost.is_set() and not cb.should_stop()
    with session_scope(ctx.sessions) as s:
        rows = P.list_attempts(s, job_id=job_id)
        assert J.get_job(s, job_id=job_id).status == "running"
    assert [(a.round, a.index, a.reward, a.passed_public, a.tokens) for a in rows] == [
        (0, i, 0.5, 1, 4) for i in range(3)]
    assert [rows[0].response, rows[2].response] == ["fine\\x00", "fine too"]
    raw = P.raw_response_path(jobs_dir=settings.jobs_dir, job_id=job_id, round=0, index=1)
    stand_in = rows[1]
    assert stand_in.response == stand_in.feedback and stand_in.code is None
    assert stand_in.response.startswith("[this attempt could not be stored in the database: ")
    assert REFUSAL in stand_in.response and f"its raw response is in {raw}]" in stand_in.response
    assert "\n" not in stand_in.response and "INSERT" not in stand_in.response
    assert raw.read_bytes() == b"REFUSE ME\x00"


def test_a_job_whose_writes_the_database_refuses_fails_with_a_one_line_reason(settings, tiny_model_path):
    """Every attempt insert of round 1 is refused, stand-ins too: the job fails with a one-line reason, no SQL
    and no traceback, and round 0's attempts and metrics stay."""
    from backend.services.problems import create_problem
    from workers.engine import parse_problem, validate_config

    settings = settings.model_copy(update={"model": str(tiny_model_path)})
    ctx = _ctx(settings, "worker:1")
    problem = {"title": "Double", "statement": "Print 2n.",
               "tests": {"inputs": ["2\n"], "outputs": ["4\n"], "testtype": "stdin"}}
    with session_scope(ctx.sessions) as s:
        pid = create_problem(s, data=problem, validate=parse_problem, settings=settings).id
        job_id = J.submit_job(s, kind="solve", config={"strategy": "best_of_k", "budget": 6, "n": 2,
                                                       "max_new_tokens": 8, "device": "cpu"},
                              validate=validate_config, enqueue=lambda *a: None, problem_id=pid).id
    _refuse_attempts(settings, "NEW.round >= 1", "NEW.round >= 1")
    assert run_job(ctx, job_id, "solve") == "failed"
    with session_scope(ctx.sessions) as s:
        job = J.get_job(s, job_id=job_id)
        rounds = [(a.round, a.index) for a in P.list_attempts(s, job_id=job_id)]
    assert job.status == "failed" and rounds == [(0, 0), (0, 1)]
    assert job.error.startswith("could not record attempt 0 of round 1 in the database ("), job.error
    assert REFUSAL in job.error and job.error.endswith("; what was recorded before is kept")
    assert "\n" not in job.error and "Traceback" not in job.error and "[SQL" not in job.error
    lines = (settings.jobs_dir / str(job_id) / "attempts.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the job's file holds what was stored


@pytest.mark.slow
def test_a_two_rank_job_whose_metrics_the_database_refuses_fails_with_a_one_line_reason(settings, tiny_model_path,
                                                                                         monkeypatch):
    """The ranks of a 2-process train job write for their worker; when the database refuses rank 0's metrics of
    step 2 the job fails with the one-line reason (not the ranks' traceback), step 1 kept."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the ranks' path is the same on both databases (the refusals are tested on both above); run once")
    from workers.engine import validate_config

    settings = settings.model_copy(update={"model": str(tiny_model_path)})
    for key, value in (("SDPO_DATA_DIR", settings.data_dir), ("SDPO_DATABASE_URL", settings.database_url),
                       ("SDPO_MODEL", tiny_model_path)):
        monkeypatch.setenv(key, str(value))
    ctx = _ctx(settings, "worker:1")
    config = {"dataset": "humaneval", "train_batch_size": 2, "n": 2, "max_new_tokens": 8, "micro_batch_size": 2,
              "save_every": 1, "val_max_questions": 1, "val_k": 1, "progress": False, "device": "cpu",
              "max_steps": 3, "distributed": "ddp"}
    with session_scope(ctx.sessions) as s:
        job_id = J.submit_job(s, kind="train", config=config, validate=validate_config, enqueue=lambda *a: None,
                              gpus=2).id
    _refuse_attempts(settings, "NEW.step >= 2", "NEW.step >= 2", table="metric_points")
    assert run_job(ctx, job_id, "train") == "failed"
    with session_scope(ctx.sessions) as s:
        job = J.get_job(s, job_id=job_id)
        steps = sorted({p.step for p in P.list_metrics(s, job_id=job_id)})
    assert job.error.startswith("could not record the metrics of step 2 in the database ("), job.error
    assert REFUSAL in job.error and "\n" not in job.error and "Traceback" not in job.error
    assert steps == [1]
