"""Stopping jobs with real ``sdpo worker`` processes on (a) SQLite + the filesystem broker and (b) PostgreSQL +
Redis (see conftest):

* cancelling a solve or a train job while it generates a long response ends it ``cancelled`` within 10 s,
  with nothing of the interrupted round recorded;
* SIGTERM of a worker running a job (no cancel) hands the job back to the queue, with no error; the next
  worker resumes it after its committed attempts and finishes it;
* Celery's cold shutdown (Ctrl-C twice) cancels the running task through the pool: the job is handed back,
  not failed with ``solo.TaskPool does not implement kill_job``; with a cancel requested it ends ``cancelled``;
* Ctrl-C of ``sdpo serve`` (its process group, as a terminal sends it) during a cancelled job: ``cancelled``,
  and serve and its worker exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from backend.db import session_scope
from backend.services import jobs as J
from backend.services import progress as P
from backend.services.problems import create_problem
from tests.app.conftest import free_port
from tests.workers.conftest import ROOT
from tests.workers.problems import DOUBLE as PROBLEM
from workers.engine import parse_problem, validate_config

pytestmark = pytest.mark.slow

# The tiny model rarely emits EOS: a round of this config generates for minutes unless it is stopped.
LONG_SOLVE = {"strategy": "sdpo", "n": 2, "budget": 4, "max_new_tokens": 12000, "context_budget": 14000,
              "device": "cpu"}
LONG_TRAIN = {"dataset": "humaneval", "train_batch_size": 1, "n": 2, "max_new_tokens": 12000, "micro_batch_size": 2,
              "max_steps": 2, "val_max_questions": 1, "val_k": 1, "progress": False, "device": "cpu"}
SHORT_ROUNDS = {"strategy": "sdpo", "n": 2, "budget": 8, "max_new_tokens": 96, "context_budget": 600,
                "device": "cpu"}
TERMINAL = ("succeeded", "failed", "cancelled")
NOT_IMPLEMENTED = "does not implement kill_job"


@pytest.fixture(scope="module")
def problem_id(stack):
    with session_scope(stack.sessions) as s:
        return create_problem(s, data=PROBLEM, validate=parse_problem, settings=stack.settings).id


def submit(stack, kind: str, config: dict, problem_id: int | None = None) -> int:
    with session_scope(stack.sessions) as s:
        return J.submit_job(s, kind=kind, config=config, validate=validate_config, enqueue=stack.queue.enqueue,
                            problem_id=problem_id).id


def cancel(stack, job_id: int) -> None:
    with session_scope(stack.sessions) as s:
        J.cancel_job(s, job_id=job_id, revoke=stack.queue.revoke)


def n_attempts(stack, job_id: int) -> int:
    with session_scope(stack.sessions) as s:
        return P.count_attempts(s, job_id=job_id)


def one_worker(stack):
    """Exactly one live worker of the stack (the others are stopped)."""
    live = [p for p in stack.workers if p.poll() is None]
    for p in live[1:]:
        stack.stop_worker(p)
    return live[0] if live else stack.start_worker()


def registered_workers(stack) -> set[str]:
    from sqlalchemy import select

    from backend.models import Worker

    with session_scope(stack.sessions) as s:
        return set(s.scalars(select(Worker.id)))


def wait_generating(stack, job_id: int) -> None:
    """Until the job's model is loaded and its first round generates (the sampler's log line comes right before
    generation starts; generation then runs for minutes unless stopped)."""
    log = stack.settings.job_dir(job_id) / "job.log"
    stack.wait(lambda: log.is_file() and "sampler: " in log.read_text(errors="replace"), 120,
               f"job {job_id} to start generating")
    time.sleep(1.0)
    d = stack.detail(job_id)
    assert d.status == "running" and n_attempts(stack, job_id) == 0, (d.status, d.error)


@pytest.mark.parametrize("kind", ["solve", "train"])
def test_cancel_during_a_long_generation_ends_cancelled_within_10_s(stack, problem_id, kind):
    worker = one_worker(stack)
    job_id = submit(stack, kind, LONG_SOLVE if kind == "solve" else LONG_TRAIN,
                    problem_id if kind == "solve" else None)
    wait_generating(stack, job_id)
    t0 = time.monotonic()
    cancel(stack, job_id)
    d = stack.wait_status(job_id, TERMINAL, 30)
    took = time.monotonic() - t0
    print(f"[{stack.name}] {kind}: cancelled {took:.1f} s after the request")
    assert d.status == "cancelled" and d.error == "cancelled by the user", f"{d.error}\n{stack.log_tail()}"
    assert took <= 10, f"took {took:.1f} s\n{stack.log_tail()}"
    assert n_attempts(stack, job_id) == 0  # the interrupted round recorded nothing
    assert d.result.get("stopped") is True
    assert worker.poll() is None and "Traceback" not in stack.worker_log(worker)


def test_sigterm_hands_the_running_job_back_and_the_next_worker_finishes_it(stack, problem_id):
    worker = one_worker(stack)
    job_id = submit(stack, "solve", SHORT_ROUNDS, problem_id)
    stack.wait(lambda: n_attempts(stack, job_id) >= 2, 120, "the first round's attempts")
    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    took = time.monotonic() - t0
    log = stack.worker_log(worker)
    assert worker.returncode == 0 and took < 20, (worker.returncode, took, log[-3000:])
    assert "Traceback" not in log and NOT_IMPLEMENTED not in log
    d = stack.detail(job_id)
    assert (d.status, d.resumes, d.worker_id, d.error) == ("queued", 1, None, None), (d.status, d.error)
    assert f"job {job_id} requeued: the worker was shut down (SIGTERM" in log
    committed = n_attempts(stack, job_id)
    assert committed % 2 == 0 and committed < 8  # whole rounds only
    stack.start_worker()  # resumes after the committed attempts
    d = stack.wait_status(job_id, TERMINAL, 180)
    assert d.status == "succeeded", f"{d.error}\n{stack.log_tail()}"
    assert d.result["attempts_used"] == 8 and n_attempts(stack, job_id) == 8


@pytest.mark.parametrize("cancelled", [False, True])
def test_cold_shutdown_stops_the_job_without_a_pool_error(stack, problem_id, cancelled):
    """Ctrl-C twice: Celery's cold shutdown cancels the running task through ``pool.terminate_job``, which
    Celery's solo pool does not implement (the job used to end ``failed`` with that traceback)."""
    if cancelled and stack.name != "sqlite+filesystem":
        pytest.skip("the cancelled case needs no broker message; run once")
    worker = one_worker(stack)
    job_id = submit(stack, "solve", LONG_SOLVE, problem_id)
    wait_generating(stack, job_id)
    if cancelled:
        cancel(stack, job_id)
    worker.send_signal(signal.SIGINT)
    time.sleep(0.3)
    worker.send_signal(signal.SIGINT)  # the second Ctrl-C: cold shutdown
    worker.wait(timeout=30)
    log = stack.worker_log(worker)
    assert NOT_IMPLEMENTED not in log and "Traceback" not in log, log[-3000:]
    d = stack.detail(job_id)
    if cancelled:
        assert d.status == "cancelled" and d.error == "cancelled by the user", d.error
    else:
        assert (d.status, d.resumes, d.error) == ("queued", 1, None), (d.status, d.error)
        cancel(stack, job_id)  # a queued job: cancelled at once (keeps the next test's worker free)
        assert stack.detail(job_id).status == "cancelled"
    assert n_attempts(stack, job_id) == 0


def test_ctrl_c_of_serve_during_a_cancelled_job_records_cancelled(stack, problem_id):
    if stack.name != "sqlite+filesystem":
        pytest.skip("sdpo serve is the single-machine setup; run once")
    for p in stack.workers:  # serve's own worker must take the job
        stack.stop_worker(p)
    before = registered_workers(stack)
    port = free_port()
    env = {**stack.env, "SDPO_PORT": str(port), "SDPO_HOST": "127.0.0.1"}
    log_path = stack.logs / "serve.log"
    with open(log_path, "w") as log:
        serve = subprocess.Popen([sys.executable, "-m", "workers.cli", "serve"], cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            assert serve.poll() is None, log_path.read_text()[-3000:]
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
            except OSError:
                return False

        stack.wait(up, 180, "sdpo serve to answer")
        job_id = submit(stack, "solve", LONG_SOLVE, problem_id)
        wait_generating(stack, job_id)
        cancel(stack, job_id)
        os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        serve.wait(timeout=60)
        d = stack.wait_status(job_id, TERMINAL, 10)
        text = log_path.read_text(errors="replace")
        assert d.status == "cancelled" and d.error == "cancelled by the user", f"{d.error}\n{text[-3000:]}"
        assert NOT_IMPLEMENTED not in text and n_attempts(stack, job_id) == 0
        assert registered_workers(stack) <= before  # serve's worker stopped and deregistered itself
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
