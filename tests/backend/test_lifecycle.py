"""A job's life on the worker side (claim, take over, finish, hand back, reap) on real SQLite and PostgreSQL
databases, with a real filesystem broker for the queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from backend.db import session_scope
from backend.errors import IllegalTransition
from backend.models import Job, utcnow
from backend.services import jobs as J
from backend.services import lifecycle as L
from tests.backend.jobutil import silence, submit


def test_state_machine_claim_takeover_and_finish(db, queue, problem_id):
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
    with session_scope(db) as s:
        assert L.claim_job(s, job_id=job_id, worker_id="w1", takeover_after_s=30) is L.Claim.START
    with session_scope(db) as s:
        job = J.get_job(s, job_id=job_id)
        assert (job.status, job.worker_id) == ("running", "w1") and job.started_at is not None
        # a live worker's job is not taken: the (duplicate) message is dropped at once
        assert L.claim_job(s, job_id=job_id, worker_id="w2", takeover_after_s=30) is L.Claim.SKIP
        with pytest.raises(IllegalTransition, match="queued -> succeeded"):
            L.transition(s, job=submit(s, queue, problem_id), to="succeeded")
    with session_scope(db) as s:  # w1 goes silent
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    with session_scope(db) as s:
        assert L.claim_job(s, job_id=job_id, worker_id="w2", takeover_after_s=30) is L.Claim.RESUME
        assert J.get_job(s, job_id=job_id).resumes == 1
    with session_scope(db) as s:
        assert not L.heartbeat(s, job_id=job_id, worker_id="w1")  # w1 lost it
        assert L.heartbeat(s, job_id=job_id, worker_id="w2")
        assert not L.finish_job(s, job_id=job_id, worker_id="w1", status="succeeded")
        assert L.finish_job(s, job_id=job_id, worker_id="w2", status="succeeded", result={"solved": True})
    with session_scope(db) as s:
        job = J.get_job(s, job_id=job_id)
        assert (job.status, job.result) == ("succeeded", {"solved": True}) and job.finished_at >= job.started_at
        assert L.claim_job(s, job_id=job_id, worker_id="w3", takeover_after_s=30) is L.Claim.SKIP
        with pytest.raises(IllegalTransition, match="terminal"):
            L.transition(s, job=job, to="running")


def test_reaper_requeues_silent_jobs_then_fails_them_after_max_resumes(db, queue, problem_id):
    with session_scope(db) as s:
        stale, fresh = submit(s, queue, problem_id).id, submit(s, queue, problem_id).id
        for j in (stale, fresh):
            L.claim_job(s, job_id=j, worker_id=f"host:{j}", takeover_after_s=5)
    queue.purge()
    with session_scope(db) as s:
        silence(s, stale)
        old_task = J.get_job(s, job_id=stale).task_id
    with session_scope(db) as s:  # a caller that sends nothing (the UI) leaves it to the workers' reapers
        assert L.reap_stale(s, timeout_s=60) == []
        assert J.get_job(s, job_id=stale).status == "running"
    with session_scope(db) as s:
        assert L.reap_stale(s, timeout_s=60, enqueue=queue.enqueue, max_resumes=2) == [(stale, "requeued")]
    with session_scope(db) as s:
        job = J.get_job(s, job_id=stale)
        assert (job.status, job.worker_id, job.resumes, job.error) == ("queued", None, 1, None)
        assert job.task_id != old_task and job.started_at is not None
        assert J.get_job(s, job_id=fresh).status == "running"
        assert L.reap_stale(s, timeout_s=60, enqueue=queue.enqueue) == []  # nothing twice
    assert queue.length() == 1  # exactly one fresh message
    with session_scope(db) as s:  # the worker taking the new message resumes the job
        assert L.claim_job(s, job_id=stale, worker_id="host:new", takeover_after_s=60) is L.Claim.RESUME
    with session_scope(db) as s:
        assert L.owns_job(s, job_id=stale, worker_id="host:new")
        assert not L.heartbeat(s, job_id=stale, worker_id=f"host:{stale}")  # the old worker lost it
        silence(s, stale)
    with session_scope(db) as s:
        assert L.reap_stale(s, timeout_s=60, enqueue=queue.enqueue, max_resumes=2) == [(stale, "requeued")]
        L.claim_job(s, job_id=stale, worker_id="host:third", takeover_after_s=60)
    with session_scope(db) as s:
        assert J.get_job(s, job_id=stale).resumes == 2
        silence(s, stale)
    with session_scope(db) as s:
        assert L.reap_stale(s, timeout_s=60, enqueue=queue.enqueue, max_resumes=2) == [(stale, "failed")]
    with session_scope(db) as s:
        job = J.get_job(s, job_id=stale)
        assert job.status == "failed" and job.finished_at is not None
        assert "worker host:third stopped heart-beating" in job.error and "timeout 60 s" in job.error
        assert "resumed 2 time(s) already (limit SDPO_MAX_RESUMES=2)" in job.error
    assert queue.length() == 2


def test_reaper_ends_a_cancelled_job_cancelled_when_its_worker_died(db, queue, problem_id):
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
        L.claim_job(s, job_id=job_id, worker_id="host:1", takeover_after_s=5)
    with session_scope(db) as s:
        J.cancel_job(s, job_id=job_id)  # the flag is set; the worker dies before its next check
        silence(s, job_id)
    queue.purge()
    with session_scope(db) as s:
        assert L.reap_stale(s, timeout_s=60, enqueue=queue.enqueue) == [(job_id, "cancelled")]
    with session_scope(db) as s:
        job = J.get_job(s, job_id=job_id)
        assert job.status == "cancelled" and job.finished_at is not None
        assert job.error.startswith("cancelled by the user") and "host:1 stopped heart-beating" in job.error
    assert queue.length() == 0


def test_cancelling_a_job_waiting_to_resume(db, queue, problem_id):
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
        L.claim_job(s, job_id=job_id, worker_id="host:1", takeover_after_s=5)
        silence(s, job_id)
    with session_scope(db) as s:
        assert L.reap_stale(s, timeout_s=60, enqueue=queue.enqueue) == [(job_id, "requeued")]
    with session_scope(db) as s:
        job = J.cancel_job(s, job_id=job_id, revoke=queue.revoke)
        assert (job.status, job.error) == ("cancelled", "cancelled while waiting to resume")
    with session_scope(db) as s:  # the re-enqueued message then finds it cancelled
        assert L.claim_job(s, job_id=job_id, worker_id="host:2", takeover_after_s=60) is L.Claim.SKIP


def test_reaper_fails_a_job_it_cannot_requeue(db, queue, problem_id):
    def broken(kind, job_id, task_id, gpus):
        raise ConnectionError("broker down")

    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
        L.claim_job(s, job_id=job_id, worker_id="host:1", takeover_after_s=5)
        silence(s, job_id)
    with session_scope(db) as s:
        assert L.reap_stale(s, timeout_s=60, enqueue=broken) == [(job_id, "failed")]
    with session_scope(db) as s:
        job = J.get_job(s, job_id=job_id)
        assert job.status == "failed" and "re-enqueueing it failed: broker down" in job.error


def test_a_worker_shutting_down_hands_its_job_back(db, queue, problem_id):
    """``release_job``: a job its shutting-down worker stopped goes back to the queue with a fresh message and
    is resumed by the next worker; after max_resumes it fails with a one-line reason; with a cancel requested
    it ends cancelled; a worker that no longer owns the job writes nothing; a refusing broker fails it."""
    reason = "the worker was shut down (SIGTERM, warm shutdown)"
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
        L.claim_job(s, job_id=job_id, worker_id="host:1", takeover_after_s=5)
        old_task = J.get_job(s, job_id=job_id).task_id
    queue.purge()
    with session_scope(db) as s:
        assert L.release_job(s, job_id=job_id, worker_id="host:other", reason=reason, enqueue=queue.enqueue) == "lost"
        assert L.release_job(s, job_id=job_id, worker_id="host:1", reason=reason, enqueue=queue.enqueue,
                             max_resumes=1) == "requeued"
    with session_scope(db) as s:
        job = J.get_job(s, job_id=job_id)
        assert (job.status, job.worker_id, job.resumes, job.error) == ("queued", None, 1, None)
        assert job.task_id != old_task and queue.length() == 1
        assert L.claim_job(s, job_id=job_id, worker_id="host:2", takeover_after_s=60) is L.Claim.RESUME
    with session_scope(db) as s:  # resumed once already: the next hand-back fails it, in one line
        assert L.release_job(s, job_id=job_id, worker_id="host:2", reason=reason + "\n", enqueue=queue.enqueue,
                             max_resumes=1) == "failed"
    with session_scope(db) as s:
        job = J.get_job(s, job_id=job_id)
        assert job.status == "failed" and "\n" not in job.error and job.error.startswith(f"stopped because {reason};")
        assert "resumed 1 time(s) already (limit SDPO_MAX_RESUMES=1)" in job.error and queue.length() == 1

    with session_scope(db) as s:
        cancelled, unqueued = submit(s, queue, problem_id).id, submit(s, queue, problem_id).id
        for j in (cancelled, unqueued):
            L.claim_job(s, job_id=j, worker_id="host:3", takeover_after_s=5)
        J.cancel_job(s, job_id=cancelled)
    queue.purge()

    def broken(kind, job_id, task_id, gpus):
        raise ConnectionError("broker\ndown")

    with session_scope(db) as s:
        assert L.release_job(s, job_id=cancelled, worker_id="host:3", reason=reason, enqueue=broken) == "cancelled"
        assert L.release_job(s, job_id=unqueued, worker_id="host:3", reason=reason, enqueue=broken) == "failed"
    with session_scope(db) as s:
        assert (J.get_job(s, job_id=cancelled).status, J.get_job(s, job_id=cancelled).error) == (
            "cancelled", "cancelled by the user")
        job = J.get_job(s, job_id=unqueued)
        assert (job.status, job.error) == ("failed", f"stopped because {reason}; queueing it again failed: broker down")
    assert queue.length() == 0


def test_redelivered_message_of_a_silent_job(db, queue, problem_id):
    """A message for a running job: a live owner keeps it (SKIP); a silent one is taken over, unless the job
    was cancelled (it ends cancelled) or resumed max_resumes times already (SKIP, the reaper fails it)."""
    with session_scope(db) as s:
        a, b, c = (submit(s, queue, problem_id).id for _ in range(3))
        for j in (a, b, c):
            L.claim_job(s, job_id=j, worker_id="old", takeover_after_s=30)
    with session_scope(db) as s:
        assert L.claim_job(s, job_id=a, worker_id="new", takeover_after_s=30) is L.Claim.SKIP
        J.cancel_job(s, job_id=b)
        s.execute(update(Job).where(Job.id == c).values(resumes=1))
        for j in (a, b, c):
            silence(s, j)
    with session_scope(db) as s:
        assert L.claim_job(s, job_id=b, worker_id="new", takeover_after_s=30) is L.Claim.SKIP
        assert L.claim_job(s, job_id=c, worker_id="new", takeover_after_s=30, max_resumes=1) is L.Claim.SKIP
        assert L.claim_job(s, job_id=a, worker_id="new", takeover_after_s=30, max_resumes=1) is L.Claim.RESUME
    with session_scope(db) as s:
        assert (J.get_job(s, job_id=a).worker_id, J.get_job(s, job_id=a).resumes) == ("new", 1)
        assert J.get_job(s, job_id=b).status == "cancelled"
        assert (J.get_job(s, job_id=c).status, J.get_job(s, job_id=c).worker_id) == ("running", "old")
