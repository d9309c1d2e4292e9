"""Job services on real SQLite and PostgreSQL databases, with a real filesystem broker for the queue."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from backend.db import session_scope
from backend.errors import EnqueueError, IllegalTransition, InvalidInput, JobLost, NotFound
from backend.models import Job, utcnow
from backend.queue import JobQueue
from backend.schemas import AttemptIn, ParsedProblem
from backend.services import jobs as J
from backend.services import lifecycle as L
from backend.services import progress as P
from backend.services.problems import create_problem


class FieldError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def validate(kind: str, config: dict, **_target) -> dict:
    """A stand-in engine config: budget (int >= 1) and lr (> 0), unknown keys refused."""
    known = {"budget": 4, "lr": 1e-5} if kind == "solve" else {"max_steps": 2, "train_batch_size": 4,
                                                              "sampler": "auto", "distributed": "none"}
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise FieldError(unknown[0], f"unknown key; known keys are {', '.join(known)}")
    cfg = {**known, **config}
    if kind == "solve" and (not isinstance(cfg["budget"], int) or cfg["budget"] < 1):
        raise FieldError("budget", f"got {cfg['budget']!r}; must be an integer >= 1")
    return cfg


def parse(data: dict) -> ParsedProblem:
    tests = data["tests"]
    return ParsedProblem(statement=data["statement"], data=data,
                         n_public_tests=sum(t.get("public", True) for t in tests),
                         n_hidden_tests=sum(not t.get("public", True) for t in tests))


PROBLEM = {"statement": "# Double\nPrint twice the input.", "tests": [
    {"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10\n", "public": False}]}


@pytest.fixture
def queue(settings):
    q = JobQueue(settings)
    yield q


@pytest.fixture
def problem_id(db, settings):
    with session_scope(db) as s:
        return create_problem(s, data=PROBLEM, validate=parse, settings=settings).id


def submit(s, queue, problem_id, **config):
    return J.submit_job(s, kind="solve", config=config, validate=validate, enqueue=queue.enqueue,
                        problem_id=problem_id, model="tiny")


def test_problem_is_stored_with_title_and_counts(db, problem_id):
    with session_scope(db) as s:
        from backend.services.problems import get_problem
        p = get_problem(s, problem_id=problem_id)
        assert (p.title, p.n_public_tests, p.n_hidden_tests) == ("Double", 1, 1)


@pytest.mark.parametrize("data, field, text", [
    ('{"statement": "x", "tests": [', "problem", "not valid JSON"),
    ({"statement": "x" * 20_001, "tests": [{"input": "", "output": ""}]}, "statement", "at most 20000"),
    ({"statement": "  ", "tests": [{"input": "", "output": ""}]}, "statement", "empty"),
    ({"statement": "x", "tests": [{"input": "", "output": "", "public": False}]}, "tests", "no public test"),
    ({"statement": "x"}, "problem", "tests"),
    ([1, 2], "problem", "expected a JSON object"),
])
def test_malformed_problem_is_refused(db, settings, data, field, text):
    with session_scope(db) as s:
        with pytest.raises(InvalidInput) as e:
            create_problem(s, data=data, validate=parse, settings=settings)
        assert e.value.field == field and text in e.value.message


def test_submit_stores_and_enqueues(db, queue, problem_id):
    with session_scope(db) as s:
        job = submit(s, queue, problem_id, budget=3)
        assert (job.status, job.kind, job.config, job.label) == ("queued", "solve", {"budget": 3, "lr": 1e-5}, "Double")
        assert job.task_id
    assert queue.length() == 1


@pytest.mark.parametrize("kwargs, field", [
    (dict(kind="solve", config={"budget": 0}), "budget"),
    (dict(kind="solve", config={"budgte": 3}), "budgte"),
    (dict(kind="solve", config="budget=3"), "config"),
    (dict(kind="sleep", config={}), "kind"),
    (dict(kind="solve", config={}, problem_id=999), "problem_id"),
    (dict(kind="solve", config={}, problem_id=None), "problem_id"),
    (dict(kind="train", config={}, dataset_id=42), "dataset_id"),
    (dict(kind="train", config={}, gpus=0), "gpus"),
    (dict(kind="train", config={"train_batch_size": 3}, gpus=4), "train_batch_size"),
    (dict(kind="train", config={"sampler": "vllm"}, gpus=2), "sampler"),
    (dict(kind="train", config={"distributed": "fsdp", "fused_lm_head": True}, gpus=2), "fused_lm_head"),
    (dict(kind="solve", config={}, gpus=2), "gpus"),
])
def test_invalid_submission_stores_and_queues_nothing(db, queue, problem_id, kwargs, field):
    kwargs.setdefault("problem_id", problem_id if kwargs["kind"] == "solve" else None)
    with session_scope(db) as s:
        with pytest.raises(InvalidInput) as e:
            J.submit_job(s, validate=validate, enqueue=queue.enqueue, **kwargs)
        assert e.value.field == field
    with session_scope(db) as s:
        assert J.count_jobs(s) == 0
    assert queue.length() == 0


def test_enqueue_failure_marks_the_job_failed(db, problem_id):
    def broken(kind, job_id, task_id, gpus):
        raise ConnectionError("broker down")

    with session_scope(db) as s:
        with pytest.raises(EnqueueError, match="broker down"):
            J.submit_job(s, kind="solve", config={}, validate=validate, enqueue=broken, problem_id=problem_id)
    with session_scope(db) as s:
        (job,) = J.list_jobs(s)
        assert job.status == "failed" and "broker down" in job.error


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


def test_cancel_queued_running_and_finished(db, queue, problem_id):
    with session_scope(db) as s:
        a, b = submit(s, queue, problem_id).id, submit(s, queue, problem_id).id
    with session_scope(db) as s:
        assert J.cancel_job(s, job_id=a).status == "cancelled"
        L.claim_job(s, job_id=b, worker_id="w", takeover_after_s=30)
    with session_scope(db) as s:
        assert not L.cancel_requested(s, job_id=b)
        job = J.cancel_job(s, job_id=b)
        assert job.status == "running" and job.cancel_requested
    with session_scope(db) as s:
        assert L.cancel_requested(s, job_id=b)
        assert L.claim_job(s, job_id=a, worker_id="w", takeover_after_s=30) is L.Claim.SKIP
        with pytest.raises(IllegalTransition):
            J.cancel_job(s, job_id=a)
        with pytest.raises(NotFound):
            J.cancel_job(s, job_id=12345)


def _attempt(r: int, i: int, passed: int = 0) -> AttemptIn:
    return AttemptIn(round=r, index=i, response=f"r{r}i{i}", code="print(1)", reward=passed / 2,
                     passed_public=passed, total_public=2, passed_hidden=0, total_hidden=1,
                     feedback="wrong answer", tokens=10, seconds=0.1)


def test_attempts_are_idempotent_and_ordered(db, queue, problem_id):
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
    with session_scope(db) as s:
        assert P.record_attempts(s, job_id=job_id, attempts=[_attempt(1, 0), _attempt(0, 1), _attempt(0, 0, 2)]) == 3
    with session_scope(db) as s:  # a redelivered job reports round 1 again, plus a new one
        assert P.record_attempts(s, job_id=job_id, attempts=[_attempt(1, 0), _attempt(1, 1)]) == 1
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


def _silence(s, job_id: int, seconds: float = 100) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def test_reaper_requeues_silent_jobs_then_fails_them_after_max_resumes(db, queue, problem_id):
    with session_scope(db) as s:
        stale, fresh = submit(s, queue, problem_id).id, submit(s, queue, problem_id).id
        for j in (stale, fresh):
            L.claim_job(s, job_id=j, worker_id=f"host:{j}", takeover_after_s=5)
    queue.purge()
    with session_scope(db) as s:
        _silence(s, stale)
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
        _silence(s, stale)
    with session_scope(db) as s:
        assert L.reap_stale(s, timeout_s=60, enqueue=queue.enqueue, max_resumes=2) == [(stale, "requeued")]
        L.claim_job(s, job_id=stale, worker_id="host:third", takeover_after_s=60)
    with session_scope(db) as s:
        assert J.get_job(s, job_id=stale).resumes == 2
        _silence(s, stale)
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
        _silence(s, job_id)
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
        _silence(s, job_id)
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
        _silence(s, job_id)
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
            _silence(s, j)
    with session_scope(db) as s:
        assert L.claim_job(s, job_id=b, worker_id="new", takeover_after_s=30) is L.Claim.SKIP
        assert L.claim_job(s, job_id=c, worker_id="new", takeover_after_s=30, max_resumes=1) is L.Claim.SKIP
        assert L.claim_job(s, job_id=a, worker_id="new", takeover_after_s=30, max_resumes=1) is L.Claim.RESUME
    with session_scope(db) as s:
        assert (J.get_job(s, job_id=a).worker_id, J.get_job(s, job_id=a).resumes) == ("new", 1)
        assert J.get_job(s, job_id=b).status == "cancelled"
        assert (J.get_job(s, job_id=c).status, J.get_job(s, job_id=c).worker_id) == ("running", "old")


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
            P.record_attempts(s, job_id=job_id, attempts=[_attempt(0, 0)], worker_id="w1")
    with session_scope(db) as s:
        L.claim_job(s, job_id=job_id, worker_id="w1", takeover_after_s=30)
    with session_scope(db) as s:
        assert P.record_attempts(s, job_id=job_id, attempts=[_attempt(0, 0)], worker_id="w1") == 1
        P.append_metrics(s, job_id=job_id, step=1, metrics={"loss": 1.0}, worker_id="w1")
        P.register_checkpoint(s, job_id=job_id, step=1, kind="lora", path=str(ck), worker_id="w1")
        _silence(s, job_id)
    with session_scope(db) as s:
        assert L.claim_job(s, job_id=job_id, worker_id="w2", takeover_after_s=30) is L.Claim.RESUME
    writes = [
        lambda s: P.record_attempts(s, job_id=job_id, attempts=[_attempt(1, 0)], worker_id="w1"),
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
        assert P.record_attempts(s, job_id=job_id, attempts=[_attempt(1, 0)], worker_id="w2") == 1
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
            P.record_attempts(s, job_id=job_id, attempts=[_attempt(step, 0), _attempt(step, 1)], worker_id="w1")
            P.append_metrics(s, job_id=job_id, step=step, metrics={"loss": float(step)}, worker_id="w1")
            if step <= 2:  # killed after step 3's attempts and metrics, before its checkpoint... and the
                ck = tmp_path / f"step_{step}"  # newest checkpoint's folder (step 2) went missing too
                ck.mkdir()
                P.register_checkpoint(s, job_id=job_id, step=step, kind="lora", path=str(ck), worker_id="w1")
    (tmp_path / "step_2").rmdir()
    with session_scope(db) as s:
        kept = [a.id for a in P.list_attempts(s, job_id=job_id) if a.round == 1]
        _silence(s, job_id)
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


def test_jobs_are_routed_by_gpu_count(db, queue, settings):
    with session_scope(db) as s:
        one = J.submit_job(s, kind="train", config={}, validate=validate, enqueue=queue.enqueue).id
        four = J.submit_job(s, kind="train", config={"train_batch_size": 8}, validate=validate,
                            enqueue=queue.enqueue, gpus=4).id
    assert (settings.queue_for(1), settings.queue_for(4)) == ("gpu", "gpu4")
    assert (queue.length(gpus=1), queue.length(gpus=2), queue.length(gpus=4), queue.length()) == (1, 0, 1, 2)
    with session_scope(db) as s:  # the reaper re-enqueues to the queue of the job's GPU count
        for j in (one, four):
            L.claim_job(s, job_id=j, worker_id="w", takeover_after_s=30)
            _silence(s, j)
    queue.purge()
    with session_scope(db) as s:
        assert sorted(L.reap_stale(s, timeout_s=60, enqueue=queue.enqueue)) == [(one, "requeued"), (four, "requeued")]
    assert (queue.length(gpus=1), queue.length(gpus=4)) == (1, 1)


def test_list_filter_search_delete_rerun(db, queue, problem_id, settings):
    with session_scope(db) as s:
        ids = [submit(s, queue, problem_id, budget=b).id for b in (1, 2, 3)]
        J.submit_job(s, kind="train", config={"max_steps": 5}, validate=validate, enqueue=queue.enqueue,
                     label="humaneval", model="qwen")
        J.cancel_job(s, job_id=ids[0])
    with session_scope(db) as s:
        assert [j.id for j in J.list_jobs(s, kind="solve")] == ids[::-1]
        assert [j.id for j in J.list_jobs(s, status="cancelled")] == [ids[0]]
        assert [j.kind for j in J.list_jobs(s, search="HUMANEV")] == ["train"]
        assert [j.id for j in J.list_jobs(s, search=str(ids[1]))] == [ids[1]]
        assert len(J.list_jobs(s, status=["queued", "cancelled"], limit=2)) == 2
        assert J.count_jobs(s, kind="train") == 1
        assert J.jobs_by_status(s)["queued"] == 3
        with pytest.raises(InvalidInput, match="status"):
            J.list_jobs(s, status="done")
    folder = settings.job_dir(ids[0])
    folder.mkdir(parents=True)
    (folder / "adapter.bin").write_bytes(b"1")
    with session_scope(db) as s:
        P.record_attempts(s, job_id=ids[0], attempts=[_attempt(0, 0)])
        with pytest.raises(InvalidInput, match="cancel it"):
            J.delete_job(s, job_id=ids[1], jobs_dir=settings.jobs_dir)
        J.delete_job(s, job_id=ids[0], jobs_dir=settings.jobs_dir)
    with session_scope(db) as s:
        with pytest.raises(NotFound):
            J.get_job(s, job_id=ids[0])
        assert P.count_attempts(s, job_id=ids[0]) == 0 and not folder.exists()
        new = J.rerun_job(s, job_id=ids[2], validate=validate, enqueue=queue.enqueue)
        assert (new.config, new.problem_id, new.model, new.status) == ({"budget": 3, "lr": 1e-5}, problem_id,
                                                                       "tiny", "queued")


def test_100_concurrent_submissions(db, queue, problem_id):
    """100 threads submit at once: exactly 100 jobs and 100 messages, no id twice."""
    errors: list[BaseException] = []
    ids: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                with session_scope(db) as s:
                    jid = submit(s, queue, problem_id, budget=1 + n % 3).id
                with lock:
                    ids.append(jid)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(ids) == len(set(ids)) == 100
    with session_scope(db) as s:
        assert J.count_jobs(s, status="queued") == 100
    assert queue.length() == 100
