"""Job services (submit, cancel, query, delete, re-run) on real SQLite and PostgreSQL databases, with a real
filesystem broker for the queue."""

from __future__ import annotations

import threading

import pytest

from backend.db import session_scope
from backend.errors import EnqueueError, IllegalTransition, InvalidInput, NotFound
from backend.services import jobs as J
from backend.services import lifecycle as L
from backend.services import progress as P
from backend.services.problems import create_problem
from tests.backend.jobutil import attempt, parse, silence, submit, validate


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
            silence(s, j)
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
        P.record_attempts(s, job_id=ids[0], attempts=[attempt(0, 0)])
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
