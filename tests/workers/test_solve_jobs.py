"""Evidence on real services (see conftest): solve jobs with the tiny model through real worker processes —
queued -> running -> succeeded with attempts in order, cancellation within one round, SIGKILL recovery,
100 concurrent submissions processed exactly once, malformed input refused with nothing queued."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from backend.db import session_scope
from backend.errors import InvalidInput
from backend.services import jobs as J
from backend.services.problems import create_problem
from workers.engine import parse_problem, validate_config

pytestmark = pytest.mark.slow

PROBLEM = {
    "title": "Double",
    "statement": "Read an integer n from standard input and print 2*n.",
    "tests": {"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"], "testtype": "stdin"},
    "hidden_tests": {"inputs": ["7\n"], "outputs": ["14\n"], "testtype": "stdin"},
}
TINY_SOLVE = {"strategy": "sdpo", "n": 2, "max_new_tokens": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def problem_id(stack):
    with session_scope(stack.sessions) as s:
        return create_problem(s, data=PROBLEM, validate=parse_problem, settings=stack.settings).id


def submit_solve(stack, problem_id: int, **overrides) -> int:
    with session_scope(stack.sessions) as s:
        return J.submit_job(s, kind="solve", config={**TINY_SOLVE, **overrides}, validate=validate_config,
                            enqueue=stack.queue.enqueue, problem_id=problem_id).id


def attempt_keys(stack, job_id: int) -> list[tuple[int, int, int]]:
    with session_scope(stack.sessions) as s:
        return [(a.id, a.round, a.index) for a in J.list_attempts(s, job_id=job_id)]


def test_solve_job_goes_queued_running_succeeded_with_attempts_in_order(stack, problem_id):
    stack.live_worker()
    job_id = submit_solve(stack, problem_id, budget=6)
    seen = [stack.detail(job_id).status]
    deadline = time.monotonic() + 120
    while seen[-1] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        status = stack.detail(job_id).status
        if status != seen[-1]:
            seen.append(status)
        time.sleep(0.02)
    d = stack.detail(job_id)
    assert d.status == "succeeded", f"{d.error}\n{stack.log_tail()}"
    assert seen in (["queued", "running", "succeeded"], ["running", "succeeded"]), seen
    keys = attempt_keys(stack, job_id)
    n_rounds = -(-d.result["attempts_used"] // 2)
    assert [(r, i) for _, r, i in keys] == [(r, i) for r in range(n_rounds) for i in range(2)][: len(keys)]
    assert len(keys) == d.result["attempts_used"] and [k[0] for k in keys] == sorted(k[0] for k in keys)
    assert d.result["strategy"] == "sdpo" and d.result["budget"] == 6
    with session_scope(stack.sessions) as s:
        (a0, *_) = J.list_attempts(s, job_id=job_id)
        assert a0.total_public == 2 and a0.problem_id == problem_id and a0.tokens > 0
        assert J.metric_series(s, job_id=job_id)  # one metrics point per round
    assert [c.kind for c in d.checkpoints] == ["lora"]  # the adapted weights
    assert d.started_at <= d.finished_at


def test_cancel_running_solve_ends_within_one_round(stack, problem_id):
    stack.live_worker()
    job_id = submit_solve(stack, problem_id, budget=400)
    stack.wait(lambda: attempt_keys(stack, job_id), 120, "the first round's attempts")
    with session_scope(stack.sessions) as s:
        J.cancel_job(s, job_id=job_id, revoke=stack.queue.revoke)
    rounds_at_cancel = max(r for _, r, _ in attempt_keys(stack, job_id))
    d = stack.wait_status(job_id, ("cancelled", "failed", "succeeded"), 60)
    assert d.status == "cancelled", d.error
    assert max(r for _, r, _ in attempt_keys(stack, job_id)) <= rounds_at_cancel + 1
    assert d.result["stopped"] is True


def test_sigkill_mid_solve_then_new_worker(stack, problem_id):
    """Redis redelivers the unacknowledged message and the new worker continues after the committed
    attempts; the filesystem broker loses it and the reaper fails the job with the reason. A job queued and
    cancelled while no worker lives is never run. No committed attempt is lost or duplicated."""
    worker = stack.live_worker()
    job_id = submit_solve(stack, problem_id, budget=40)
    stack.wait(lambda: len(attempt_keys(stack, job_id)) >= 4, 120, "two rounds of attempts")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    before = attempt_keys(stack, job_id)
    queued_id = submit_solve(stack, problem_id, budget=2)
    with session_scope(stack.sessions) as s:
        assert J.cancel_job(s, job_id=queued_id).status == "cancelled"
    stack.start_worker()
    d = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 180)
    after = attempt_keys(stack, job_id)
    assert set(before) <= set(after), "a committed attempt was lost"
    rounds = [(r, i) for _, r, i in after]
    assert len(rounds) == len(set(rounds)), "an attempt was duplicated"
    if stack.name == "postgres+redis":
        assert d.status == "succeeded", f"{d.error}\n{stack.log_tail()}"
        assert d.resumes == 1
        assert rounds == [(r, i) for r in range(len(rounds) // 2) for i in range(2)]  # contiguous, in order
        assert d.result["attempts_used"] == len(after)
    else:
        assert d.status == "failed", d.error
        assert "stopped heart-beating" in d.error and "timeout 6 s" in d.error
        assert after == before
    q = stack.detail(queued_id)
    assert q.status == "cancelled" and q.started_at is None and attempt_keys(stack, queued_id) == []


BAD_PROBLEMS = [
    ({**PROBLEM, "tests": '{"inputs": ["1"], "outputs": '}, "tests"),  # bad JSON tests
    ({k: v for k, v in PROBLEM.items() if k != "tests"}, "tests"),  # missing field
    ({**PROBLEM, "statement": "x" * 25_000}, "statement"),  # oversize statement
    ({**PROBLEM, "tests": {"inputs": ["1"], "outputs": ["1", "2"], "testtype": "stdin"}}, "tests"),
]
BAD_CONFIGS = [
    ({"budget": 0}, "budget"),
    ({"strategy": "beam"}, "strategy"),
    ({"lr": "fast"}, "lr"),
    ({"temperature": -1.0}, "temperature"),
    ({"budgett": 3}, "budgett"),
]


def test_malformed_inputs_give_a_clear_error_and_queue_nothing(stack, problem_id):
    with session_scope(stack.sessions) as s:
        jobs_before = J.count_jobs(s)
    for data, field in BAD_PROBLEMS:
        with session_scope(stack.sessions) as s:
            with pytest.raises(InvalidInput) as e:
                create_problem(s, data=data, validate=parse_problem, settings=stack.settings)
            assert e.value.field.startswith(field), str(e.value)
    for config, field in BAD_CONFIGS:
        with session_scope(stack.sessions) as s:
            with pytest.raises(InvalidInput) as e:
                J.submit_job(s, kind="solve", config={**TINY_SOLVE, **config}, validate=validate_config,
                             enqueue=stack.queue.enqueue, problem_id=problem_id)
            assert e.value.field == field, str(e.value)
            assert repr(config[field]) in e.value.message or "unknown key" in e.value.message
    with session_scope(stack.sessions) as s:
        assert J.count_jobs(s) == jobs_before
    assert stack.queue.length() == 0


def test_100_concurrent_submissions_processed_exactly_once(stack, problem_id):
    """20 threads x 5 submissions; two workers drain the queue; every job runs once (no takeover, no
    duplicate attempts) and ends succeeded."""
    live = [p for p in stack.workers if p.poll() is None]
    while len(live) < 2:
        live.append(stack.start_worker())
    ids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def submitter() -> None:
        try:
            barrier.wait()
            for _ in range(5):
                jid = submit_solve(stack, problem_id, strategy="best_of_k", budget=1, n=1, max_new_tokens=4)
                with lock:
                    ids.append(jid)
        except BaseException as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=submitter) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(ids) == len(set(ids)) == 100

    def finished() -> bool:
        with session_scope(stack.sessions) as s:
            return J.count_jobs(s, status=["succeeded", "failed", "cancelled"]) >= J.count_jobs(s)

    stack.wait(lambda: all(stack.detail(i).status in ("succeeded", "failed", "cancelled") for i in ids[-5:])
               and finished(), 300, "100 jobs to finish", every=1.0)
    elapsed = time.monotonic() - t0
    with session_scope(stack.sessions) as s:
        jobs = [J.get_job(s, job_id=i) for i in ids]
        assert [j.status for j in jobs] == ["succeeded"] * 100, {j.id: j.error for j in jobs if j.error}
        assert all(j.resumes == 0 for j in jobs)
        assert sorted(J.count_attempts(s, job_id=i) for i in ids) == [1] * 100
        workers = {j.worker_id for j in jobs}
    assert stack.queue.length() == 0
    print(f"[{stack.name}] 100 solve jobs in {elapsed:.1f} s on {len(workers)} workers")
