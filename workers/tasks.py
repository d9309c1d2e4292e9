"""Celery tasks: job ids in, glue only (``workers.runner`` does the work).

``acks_late`` + ``reject_on_worker_lost``: the message is acknowledged only when the job ended, so a worker
that dies mid-job leaves it to be redelivered (Redis: after the visibility timeout) and resumed. A message that
reaches a worker already shutting down is sent back to its queue unchanged for the next worker
(``workers.runner.defer_message``).
"""

from __future__ import annotations

from workers.celery_app import app, context
from workers.runner import defer_message, run_job


def _run(task, job_id: int, kind: str) -> str:
    ctx = context()
    if ctx.stopping.is_set():
        return defer_message(ctx, job_id, kind, task.request.id)
    return run_job(ctx, job_id, kind)


@app.task(bind=True, name="workers.tasks.run_solve_job", acks_late=True, reject_on_worker_lost=True,
          ignore_result=True)
def run_solve_job(self, job_id: int) -> str:
    return _run(self, job_id, "solve")


@app.task(bind=True, name="workers.tasks.run_train_job", acks_late=True, reject_on_worker_lost=True,
          ignore_result=True)
def run_train_job(self, job_id: int) -> str:
    return _run(self, job_id, "train")
