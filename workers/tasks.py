"""Celery tasks: job ids in, glue only (``workers.runner`` does the work).

``acks_late`` + ``reject_on_worker_lost``: the message is acknowledged only when the job ended, so a worker
that dies mid-job leaves it to be redelivered (Redis: after the visibility timeout) and resumed.
"""

from __future__ import annotations

from workers.celery_app import app, context
from workers.runner import run_job


@app.task(name="workers.tasks.run_solve_job", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_solve_job(job_id: int) -> str:
    return run_job(context(), job_id, "solve")


@app.task(name="workers.tasks.run_train_job", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_train_job(job_id: int) -> str:
    return run_job(context(), job_id, "train")
