"""The worker's execution pool: Celery's solo pool (one job at a time, in the worker's main thread) that can
stop its running job.

Celery's cold shutdown (a second Ctrl-C, SIGQUIT) cancels the running task through ``terminate_job``, which the
solo pool does not implement: the ``NotImplementedError`` was raised inside the signal handler, i.e. inside
the job's own code, and ended the job ``failed`` with Celery's traceback. Here ``terminate_job`` asks the
running job to stop (``WorkerContext.request_stop``); the job returns within seconds and ``workers.runner``
records how it ended (``cancelled`` when a cancel was requested, else handed back to the queue).
"""

from __future__ import annotations

from celery.concurrency.solo import TaskPool

from workers.celery_app import context


class StoppableSoloPool(TaskPool):
    """Solo pool whose ``terminate_job`` stops the running job gracefully (no process to kill: the job runs in
    this process)."""

    def terminate_job(self, pid, signal=None):
        context().request_stop(f"the worker is shutting down (Celery cancelled the running job, signal {signal})")
