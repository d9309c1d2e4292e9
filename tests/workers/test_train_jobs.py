"""Evidence on real services (see conftest): train jobs on the tiny model through a real worker process —
lifecycle, live progress, cancellation within a step, SIGKILL recovery, malformed input."""

from __future__ import annotations

import signal
import time

import pytest

from backend.db import session_scope
from backend.errors import InvalidInput
from backend.services import jobs as J
from workers.engine import validate_config

pytestmark = pytest.mark.slow

TINY_TRAIN = {"dataset": "humaneval", "train_batch_size": 1, "n": 2, "max_new_tokens": 8, "micro_batch_size": 2,
              "save_every": 1, "val_max_questions": 1, "val_k": 1, "progress": False, "device": "cpu"}


def submit_train(stack, **overrides) -> int:
    with session_scope(stack.sessions) as s:
        return J.submit_job(s, kind="train", config={**TINY_TRAIN, **overrides}, validate=validate_config,
                            enqueue=stack.queue.enqueue, label="humaneval").id


def metric_steps(stack, job_id: int) -> list[int]:
    with session_scope(stack.sessions) as s:
        return [p.step for p in J.list_metrics(s, job_id=job_id, names=["loss"])]


def attempt_keys(stack, job_id: int) -> list[tuple[int, int, int]]:
    with session_scope(stack.sessions) as s:
        return [(a.id, a.round, a.index) for a in J.list_attempts(s, job_id=job_id)]


def test_train_job_goes_queued_running_succeeded(stack):
    stack.live_worker()
    job_id = submit_train(stack, max_steps=2)
    seen = [stack.detail(job_id).status]
    deadline = time.monotonic() + 120
    while seen[-1] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        status = stack.detail(job_id).status
        if status != seen[-1]:
            seen.append(status)
        time.sleep(0.05)
    d = stack.detail(job_id)
    assert d.status == "succeeded", f"{d.error}\n{stack.log_tail()}"
    assert seen in (["queued", "running", "succeeded"], ["running", "succeeded"])
    assert metric_steps(stack, job_id) == [1, 2]
    assert [c.step for c in d.checkpoints] == [1, 2] and all(c.bytes > 0 and c.kind == "lora" for c in d.checkpoints)
    keys = attempt_keys(stack, job_id)
    assert [(r, i) for _, r, i in keys] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert d.result["steps"] == 2 and d.started_at <= d.finished_at and d.worker_id
    assert (stack.settings.job_dir(job_id) / "checkpoints" / "step_2").is_dir()


def test_cancel_running_job_ends_within_one_step(stack):
    stack.live_worker()
    job_id = submit_train(stack, max_steps=200, save_every=0)
    stack.wait(lambda: metric_steps(stack, job_id), 120, "the first training step")
    with session_scope(stack.sessions) as s:
        J.cancel_job(s, job_id=job_id, revoke=stack.queue.revoke)
    step_at_cancel = max(metric_steps(stack, job_id))
    d = stack.wait_status(job_id, ("cancelled", "failed", "succeeded"), 60)
    assert d.status == "cancelled", d.error
    assert max(metric_steps(stack, job_id)) <= step_at_cancel + 1


def test_cancel_queued_job_never_runs(stack):
    for p in stack.workers:  # no worker: the job stays queued
        stack.stop_worker(p)
    job_id = submit_train(stack, max_steps=1)
    with session_scope(stack.sessions) as s:
        assert J.cancel_job(s, job_id=job_id, revoke=stack.queue.revoke).status == "cancelled"
    stack.start_worker()
    stack.wait(lambda: stack.queue.length() == 0, 60, "the queued message to be consumed")
    time.sleep(1)
    d = stack.detail(job_id)
    assert d.status == "cancelled" and d.started_at is None and metric_steps(stack, job_id) == []


def test_sigkill_mid_job_then_new_worker(stack):
    """Redis redelivers the unacknowledged message and the new worker resumes from the last checkpoint;
    the filesystem broker loses it and the reaper fails the job with the reason. Either way no committed
    attempt is lost or duplicated."""
    worker = stack.live_worker()
    job_id = submit_train(stack, max_steps=6)
    stack.wait(lambda: len(stack.detail(job_id).checkpoints) >= 2, 120, "two checkpoints")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    before = attempt_keys(stack, job_id)
    ck_before = max(c.step for c in stack.detail(job_id).checkpoints)
    stack.start_worker()
    d = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 180)
    after = attempt_keys(stack, job_id)
    assert set(before) <= set(after), "a committed attempt was lost"
    rounds = [(r, i) for _, r, i in after]
    assert len(rounds) == len(set(rounds)), "an attempt was duplicated"
    if stack.name == "postgres+redis":
        assert d.status == "succeeded", f"{d.error}\n{stack.log_tail()}"
        assert d.resumes == 1 and d.result["steps"] == 6
        assert metric_steps(stack, job_id) == [1, 2, 3, 4, 5, 6]
        # resumed from the checkpoint: steps up to it were not re-run (their attempts were kept as they were)
        assert sorted({r for r, _ in rounds}) == [1, 2, 3, 4, 5, 6]
        assert [k for k in after if k[1] <= ck_before] == [k for k in before if k[1] <= ck_before]
    else:
        assert d.status == "failed", d.error
        assert "stopped heart-beating" in d.error and "timeout 6 s" in d.error


@pytest.mark.parametrize("config, field", [
    ({"dataset": "nosuch"}, "dataset"),
    ({"dataset": "humaneval", "lr": -1.0}, "lr"),
    ({"dataset": "humaneval", "max_steps": "ten"}, "max_steps"),
    ({"dataset": "humaneval", "learning_rate": 1e-5}, "learning_rate"),
    ({"train_file": "/nonexistent/train.jsonl"}, "train_file"),
    ({"dataset": "humaneval", "out_dir": "/tmp/elsewhere"}, "out_dir"),
])
def test_malformed_train_config_queues_nothing(stack, config, field):
    with session_scope(stack.sessions) as s:
        before = J.count_jobs(s)
        with pytest.raises(InvalidInput) as e:
            J.submit_job(s, kind="train", config=config, validate=validate_config, enqueue=stack.queue.enqueue)
        assert e.value.field == field, str(e.value)
    with session_scope(stack.sessions) as s:
        assert J.count_jobs(s) == before
    assert stack.queue.length() == 0
