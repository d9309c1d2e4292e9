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
        J.claim_job(s, job_id=job_id, worker_id="worker:1", takeover_after_s=6)
    cb = DbCallbacks(ctx, job_id, None, owner="worker:1")
    assert not cb.should_stop()
    cb.on_metrics(1, {"loss": 1.0})
    with session_scope(ctx.sessions) as s:  # worker:1 went silent; another worker takes the job over
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow().replace(year=2000)))
    with session_scope(ctx.sessions) as s:
        assert J.claim_job(s, job_id=job_id, worker_id="worker:2", takeover_after_s=6) is J.Claim.RESUME
    late = DbCallbacks(ctx, job_id, None, owner="worker:1")
    late.on_metrics(2, {"loss": 2.0})  # refused, not raised: the rank goes on to its stop check
    assert late.lost.is_set() and late.should_stop() and not late.cancelled
    assert cb.should_stop() and cb.lost.is_set()
    with session_scope(ctx.sessions) as s:
        assert J.metric_series(s, job_id=job_id) == {"loss": [(1, 1.0)]}
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
