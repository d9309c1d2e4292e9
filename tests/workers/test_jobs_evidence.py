"""Evidence on real services (see conftest), run on (a) SQLite + filesystem broker and (b) PostgreSQL + Redis
with real ``sdpo worker`` processes and the tiny model: solve and train jobs go queued -> running ->
succeeded with their attempts/metrics/checkpoints (and a solve's teacher views) in order; cancelling a running job ends it within one
round; SIGKILL of the workers mid-job then a new worker: the jobs are re-enqueued and resume, no committed
attempt lost or duplicated; 100 concurrent submissions are
processed exactly once; malformed input is refused with nothing queued.

The tests share the module's workers (start-up costs seconds) and run in file order."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from backend.db import session_scope
from backend.errors import InvalidInput
from backend.services import jobs as J
from backend.services import progress as P
from backend.services.problems import create_problem
from tests.workers.problems import DOUBLE as PROBLEM
from workers.engine import parse_problem, validate_config

pytestmark = pytest.mark.slow

TINY_SOLVE = {"strategy": "sdpo", "n": 2, "max_new_tokens": 8, "device": "cpu"}
TINY_TRAIN = {"dataset": "humaneval", "train_batch_size": 1, "n": 2, "max_new_tokens": 8, "micro_batch_size": 2,
              "save_every": 1, "val_max_questions": 1, "val_k": 1, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def problem_id(stack):
    with session_scope(stack.sessions) as s:
        return create_problem(s, data=PROBLEM, validate=parse_problem, settings=stack.settings).id


def submit_solve(stack, problem_id: int, **overrides) -> int:
    with session_scope(stack.sessions) as s:
        return J.submit_job(s, kind="solve", config={**TINY_SOLVE, **overrides}, validate=validate_config,
                            enqueue=stack.queue.enqueue, problem_id=problem_id).id


def submit_train(stack, **overrides) -> int:
    with session_scope(stack.sessions) as s:
        return J.submit_job(s, kind="train", config={**TINY_TRAIN, **overrides}, validate=validate_config,
                            enqueue=stack.queue.enqueue, label="humaneval").id


def metric_steps(stack, job_id: int) -> list[int]:
    with session_scope(stack.sessions) as s:
        return [p.step for p in P.list_metrics(s, job_id=job_id, names=["loss"])]


def attempt_keys(stack, job_id: int) -> list[tuple[int, int, int]]:
    with session_scope(stack.sessions) as s:
        return [(a.id, a.round, a.index) for a in P.list_attempts(s, job_id=job_id)]


def attempt_rows(stack, job_id: int) -> list[tuple[int, int, int, object]]:
    """(id, round, index, created_at): SQLite reuses the ids of deleted rows, so an id alone does not tell a
    re-run attempt from the one it replaced."""
    with session_scope(stack.sessions) as s:
        return [(a.id, a.round, a.index, a.created_at) for a in P.list_attempts(s, job_id=job_id)]


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
        (a0, *_) = P.list_attempts(s, job_id=job_id)
        assert a0.total_public == 2 and a0.problem_id == problem_id and a0.tokens > 0
        assert P.metric_series(s, job_id=job_id)  # one metrics point per round
    assert [c.kind for c in d.checkpoints] == ["lora"]  # the adapted weights
    assert d.started_at <= d.finished_at
    # what the teacher saw and said about every attempt is stored with the job (History shows it)
    from backend.services import teacher as T

    with session_scope(stack.sessions) as s:
        for a in P.list_attempts(s, job_id=job_id):
            seen = T.attempt_inspection(s, attempt_id=a.id)
            if seen.round_metrics.get("ttt/discovered") == 1.0:
                assert seen.teacher_status == T.SOLVED_ROUND
                continue
            assert seen.teacher_status == T.HAS_VIEW and seen.distilled == bool(seen.context)
            if seen.distilled:
                assert len(seen.credit["tokens"]) == a.tokens


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
    tail = J.job_log_tail(jobs_dir=stack.settings.jobs_dir, job_id=job_id)
    assert f"job {job_id} (train) started" in tail and f"job {job_id} ended: succeeded" in tail


def test_train_job_on_two_ranks(stack):
    """A train job asking for 2 GPUs runs as 2 torchrun ranks (gloo on CPU) and reports like one job."""
    if stack.name != "sqlite+filesystem":
        pytest.skip("broker-independent; run once")
    stack.live_worker()
    with session_scope(stack.sessions) as s:
        job_id = J.submit_job(s, kind="train", config={**TINY_TRAIN, "train_batch_size": 2, "max_steps": 2,
                                                       "distributed": "ddp"},
                              validate=validate_config, enqueue=stack.queue.enqueue, gpus=2).id
    d = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 240)
    assert d.status == "succeeded", f"{d.error}\n{stack.log_tail()}"
    assert d.gpus == 2 and d.result["steps"] == 2
    assert metric_steps(stack, job_id) == [1, 2]
    assert [c.step for c in d.checkpoints] == [1, 2]
    # rank 0 reports the whole global batch: 2 questions x n=2 rollouts per step
    rounds = [r for _, r, _ in attempt_keys(stack, job_id)]
    assert rounds == [1, 1, 1, 1, 2, 2, 2, 2]
    assert (stack.settings.job_dir(job_id) / "torchrun.log").exists()


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


def test_sigkill_mid_job_then_new_worker(stack, problem_id):
    """Two workers run a solve job and a train job; both are SIGKILLed mid-job; a job queued and cancelled
    meanwhile; then one new worker. Its reaper re-enqueues both silent jobs (Redis may also redeliver their
    unacknowledged messages; either way each is resumed once) and it resumes them one after the other: the
    solve after its committed attempts, the train from its last checkpoint, with what the killed run recorded
    after that checkpoint replaced by the re-run steps. The cancelled job never runs. No committed solve attempt
    is lost or duplicated. (The solve job has a large budget so it is surely mid-run when killed; once it has
    resumed and added attempts it is cancelled to keep the test short.)"""
    live = [p for p in stack.workers if p.poll() is None]
    while len(live) < 2:
        live.append(stack.start_worker())
    solve_id = submit_solve(stack, problem_id, budget=400)
    steps = 12  # enough that the train job cannot finish while the solve job makes its first rounds (loaded CI)
    train_id = submit_train(stack, max_steps=steps)
    stack.wait(lambda: len(attempt_keys(stack, solve_id)) >= 4, 120, "two rounds of solve attempts")
    stack.wait(lambda: len(stack.detail(train_id).checkpoints) >= 2, 120, "two train checkpoints")
    for p in live:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    before = {j: attempt_keys(stack, j) for j in (solve_id, train_id)}
    train_before = attempt_rows(stack, train_id)
    ck_before = max(c.step for c in stack.detail(train_id).checkpoints)
    queued_id = submit_solve(stack, problem_id, budget=2)
    with session_scope(stack.sessions) as s:
        assert J.cancel_job(s, job_id=queued_id).status == "cancelled"
    stack.start_worker()
    stack.wait(lambda: stack.detail(solve_id).resumes == 1
               and len(attempt_keys(stack, solve_id)) >= len(before[solve_id]) + 4, 180,
               "the solve job to resume and add two rounds")
    with session_scope(stack.sessions) as s:
        J.cancel_job(s, job_id=solve_id)
    done = {j: stack.wait_status(j, ("succeeded", "failed", "cancelled"), 180) for j in (solve_id, train_id)}
    for job_id, d in done.items():
        rounds = [(r, i) for _, r, i in attempt_keys(stack, job_id)]
        assert len(rounds) == len(set(rounds)), f"job {job_id}: an attempt was duplicated"
        assert d.status == ("cancelled" if job_id == solve_id else "succeeded"), f"{d.error}\n{stack.log_tail()}"
        assert d.resumes == 1
    solve_after = attempt_keys(stack, solve_id)
    assert set(before[solve_id]) <= set(solve_after), "a committed solve attempt was lost"
    solve_rounds = [(r, i) for _, r, i in solve_after]
    assert solve_rounds == [(r, i) for r in range(len(solve_rounds) // 2) for i in range(2)]  # contiguous
    assert done[solve_id].result["attempts_used"] == len(solve_rounds) > len(before[solve_id])
    train = done[train_id]
    assert train.result["steps"] == steps and metric_steps(stack, train_id) == list(range(1, steps + 1))
    # resumed from its checkpoint: the steps up to it were not run again, the later ones were re-run and replace
    # what the killed run had recorded for them
    train_after = attempt_rows(stack, train_id)
    assert [k for k in train_after if k[1] <= ck_before] == [k for k in train_before if k[1] <= ck_before]
    assert not {k for k in train_before if k[1] > ck_before} & set(train_after)
    assert [(r, i) for _, r, i, _ in train_after] == [(r, i) for r in range(1, steps + 1) for i in range(2)]
    assert [c.step for c in train.checkpoints] == list(range(1, steps + 1))
    q = stack.detail(queued_id)
    assert q.status == "cancelled" and q.started_at is None and attempt_keys(stack, queued_id) == []


BAD_PROBLEMS = [
    ({**PROBLEM, "tests": '{"inputs": ["1"], "outputs": '}, "tests"),  # bad JSON tests
    ({k: v for k, v in PROBLEM.items() if k != "tests"}, "tests"),  # missing field
    ({**PROBLEM, "statement": "x" * 25_000}, "statement"),  # oversize statement
    ({**PROBLEM, "tests": {"inputs": ["1"], "outputs": ["1", "2"], "testtype": "stdin"}}, "tests"),
]
BAD_CONFIGS = [
    ("solve", {"budget": 0}, "budget"),
    ("solve", {"strategy": "beam"}, "strategy"),
    ("solve", {"lr": "fast"}, "lr"),
    ("solve", {"temperature": -1.0}, "temperature"),
    ("solve", {"budgett": 3}, "budgett"),
    ("train", {"dataset": "nosuch"}, "dataset"),  # unknown dataset
    ("train", {"dataset": None, "train_file": "/nonexistent/train.jsonl"}, "train_file"),
    ("train", {"max_steps": "ten"}, "max_steps"),
    ("train", {"out_dir": "/tmp/elsewhere"}, "out_dir"),
]


def test_malformed_inputs_give_a_clear_error_and_queue_nothing(stack, problem_id):
    with session_scope(stack.sessions) as s:
        jobs_before = J.count_jobs(s)
    for data, field in BAD_PROBLEMS:
        with session_scope(stack.sessions) as s:
            with pytest.raises(InvalidInput) as e:
                create_problem(s, data=data, validate=parse_problem, settings=stack.settings)
            assert e.value.field.startswith(field), str(e.value)
    for kind, config, field in BAD_CONFIGS:
        base, pid = (TINY_SOLVE, problem_id) if kind == "solve" else (TINY_TRAIN, None)
        with session_scope(stack.sessions) as s:
            with pytest.raises(InvalidInput) as e:
                J.submit_job(s, kind=kind, config={**base, **config}, validate=validate_config,
                             enqueue=stack.queue.enqueue, problem_id=pid)
            assert e.value.field == field, str(e.value)
            assert any(t in e.value.message for t in (repr(config[field]), "unknown key", "not found", "worker"))
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
        assert sorted(P.count_attempts(s, job_id=i) for i in ids) == [1] * 100
        workers = {j.worker_id for j in jobs}
        run_s = sorted((j.finished_at - j.started_at).total_seconds() for j in jobs)
    assert stack.queue.length() == 0
    print(f"[{stack.name}] 100 solve jobs in {elapsed:.1f} s on {len(workers)} workers; "
          f"median job {run_s[50]:.2f} s, max {run_s[-1]:.2f} s")
