"""A job's attempts, metrics and checkpoints (written only by the job's owner) on real SQLite and PostgreSQL
databases, with a real filesystem broker for the queue."""

from __future__ import annotations

import pytest

from backend.db import session_scope
from backend.errors import InvalidInput, JobLost
from backend.services import jobs as J
from backend.services import lifecycle as L
from backend.services import progress as P
from tests.backend.jobutil import attempt, silence, submit, validate


def test_attempts_are_idempotent_and_ordered(db, queue, problem_id):
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
    with session_scope(db) as s:
        assert P.record_attempts(s, job_id=job_id, attempts=[attempt(1, 0), attempt(0, 1), attempt(0, 0, 2)]) == 3
    with session_scope(db) as s:  # a redelivered job reports round 1 again, plus a new one
        assert P.record_attempts(s, job_id=job_id, attempts=[attempt(1, 0), attempt(1, 1)]) == 1
    with session_scope(db) as s:
        rows = P.list_attempts(s, job_id=job_id)
        assert [(a.round, a.index) for a in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert rows[0].problem_id == problem_id and rows[0].passed_public == 2
        assert P.count_attempts(s, job_id=job_id) == 4 and P.next_round(s, job_id=job_id) == 2
        newest = max(a.id for a in rows)
        assert P.list_attempts(s, job_id=job_id, after_id=newest) == []
        d = J.job_detail(s, job_id=job_id)
        assert (d.n_attempts, d.best_passed_public) == (4, 2)


def test_metrics_checkpoints_and_detail(db, queue, problem_id, tmp_path):
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
    ck = tmp_path / "ck" / "step_2"
    ck.mkdir(parents=True)
    (ck / "adapter.safetensors").write_bytes(b"x" * 1000)
    with session_scope(db) as s:
        P.append_metrics(s, job_id=job_id, step=1, metrics={"reward/mean": 0.25, "loss": 1.5})
        P.append_metrics(s, job_id=job_id, step=2, metrics={"reward/mean": 0.5})
        P.append_metrics(s, job_id=job_id, step=2, metrics={"reward/mean": 0.75})  # resumed step overwrites
        P.register_checkpoint(s, job_id=job_id, step=2, kind="lora", path=str(ck))
        with pytest.raises(InvalidInput, match="kind"):
            P.register_checkpoint(s, job_id=job_id, step=3, kind="half", path=str(ck))
        with pytest.raises(InvalidInput, match="does not exist"):
            P.register_checkpoint(s, job_id=job_id, step=3, kind="lora", path=str(tmp_path / "nope"))
    with session_scope(db) as s:
        assert P.metric_series(s, job_id=job_id) == {"loss": [(1, 1.5)], "reward/mean": [(1, 0.25), (2, 0.75)]}
        d = J.job_detail(s, job_id=job_id)
        assert (d.last_step, d.last_metrics) == (2, {"reward/mean": 0.75})
        assert [(c.step, c.kind, c.bytes) for c in d.checkpoints] == [(2, "lora", 1000)]
        assert P.latest_checkpoint(s, job_id=job_id).path == str(ck)


def test_progress_writes_only_by_the_owner(db, queue, problem_id, tmp_path):
    """After a takeover the old worker's attempts, metrics and checkpoints are refused (JobLost) and nothing
    of them is stored; the owner's go in."""
    ck = tmp_path / "step_1"
    ck.mkdir()
    (ck / "w").write_bytes(b"x")
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
    with session_scope(db) as s:  # a queued job has no owner yet
        with pytest.raises(JobLost):
            P.record_attempts(s, job_id=job_id, attempts=[attempt(0, 0)], worker_id="w1")
    with session_scope(db) as s:
        L.claim_job(s, job_id=job_id, worker_id="w1", takeover_after_s=30)
    with session_scope(db) as s:
        assert P.record_attempts(s, job_id=job_id, attempts=[attempt(0, 0)], worker_id="w1") == 1
        P.append_metrics(s, job_id=job_id, step=1, metrics={"loss": 1.0}, worker_id="w1")
        P.register_checkpoint(s, job_id=job_id, step=1, kind="lora", path=str(ck), worker_id="w1")
        silence(s, job_id)
    with session_scope(db) as s:
        assert L.claim_job(s, job_id=job_id, worker_id="w2", takeover_after_s=30) is L.Claim.RESUME
    writes = [
        lambda s: P.record_attempts(s, job_id=job_id, attempts=[attempt(1, 0)], worker_id="w1"),
        lambda s: P.append_metrics(s, job_id=job_id, step=1, metrics={"loss": 9.0}, worker_id="w1"),
        lambda s: P.register_checkpoint(s, job_id=job_id, step=2, kind="lora", path=str(ck), worker_id="w1"),
    ]
    for write in writes:
        with pytest.raises(JobLost, match="no longer running under worker w1"):
            with session_scope(db) as s:
                write(s)
    with session_scope(db) as s:
        assert [(a.round, a.index) for a in P.list_attempts(s, job_id=job_id)] == [(0, 0)]
        assert P.metric_series(s, job_id=job_id) == {"loss": [(1, 1.0)]}
        assert [c.step for c in P.list_checkpoints(s, job_id=job_id)] == [1]
        assert P.record_attempts(s, job_id=job_id, attempts=[attempt(1, 0)], worker_id="w2") == 1
    with session_scope(db) as s:
        L.finish_job(s, job_id=job_id, worker_id="w2", status="succeeded")
    with pytest.raises(JobLost):  # nor after the end
        with session_scope(db) as s:
            P.append_metrics(s, job_id=job_id, step=3, metrics={"loss": 1.0}, worker_id="w2")


def test_train_takeover_discards_what_came_after_the_checkpoint(db, queue, tmp_path):
    with session_scope(db) as s:
        job_id = J.submit_job(s, kind="train", config={}, validate=validate, enqueue=queue.enqueue).id
        L.claim_job(s, job_id=job_id, worker_id="w1", takeover_after_s=30)
    for step in (1, 2, 3):
        with session_scope(db) as s:
            P.record_attempts(s, job_id=job_id, attempts=[attempt(step, 0), attempt(step, 1)], worker_id="w1")
            P.append_metrics(s, job_id=job_id, step=step, metrics={"loss": float(step)}, worker_id="w1")
            if step <= 2:  # killed after step 3's attempts and metrics, before its checkpoint... and the
                ck = tmp_path / f"step_{step}"  # newest checkpoint's folder (step 2) went missing too
                ck.mkdir()
                P.register_checkpoint(s, job_id=job_id, step=step, kind="lora", path=str(ck), worker_id="w1")
    (tmp_path / "step_2").rmdir()
    with session_scope(db) as s:
        kept = [a.id for a in P.list_attempts(s, job_id=job_id) if a.round == 1]
        silence(s, job_id)
    with session_scope(db) as s:
        L.claim_job(s, job_id=job_id, worker_id="w2", takeover_after_s=30)
    with session_scope(db) as s:
        ck = P.latest_checkpoint(s, job_id=job_id)
        assert ck.step == 1
        with pytest.raises(JobLost):
            P.discard_progress_after(s, job_id=job_id, step=ck.step, worker_id="w1")
        assert P.discard_progress_after(s, job_id=job_id, step=ck.step, worker_id="w2") == 4 + 2 + 1
    with session_scope(db) as s:
        assert [a.id for a in P.list_attempts(s, job_id=job_id)] == kept
        assert P.metric_series(s, job_id=job_id) == {"loss": [(1, 1.0)]}
        assert [c.step for c in P.list_checkpoints(s, job_id=job_id)] == [1]
