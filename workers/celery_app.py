"""The worker's Celery app: ``backend.queue.make_celery`` (same config as the enqueuing side) plus the job
tasks, and worker lifecycle hooks that register the worker in the database and run the reaper.

Start a worker with ``sdpo worker`` (one job at a time; one worker per GPU, or per group of GPUs for N-GPU
jobs: it consumes the queue(s) of ``Settings.consumed_queues``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import cache

from celery import signals

from backend.db import session_scope
from backend.queue import make_celery
from backend.services.workers import register_worker, remove_worker, touch_worker
from backend.settings import get_settings
from workers.runner import WorkerContext, reap

log = logging.getLogger("sdpo.worker")

app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]
# Celery's solo pool, whose terminate_job stops the running job instead of raising (workers.pool).
app.conf.worker_pool = "workers.pool:StoppableSoloPool"


@cache
def context() -> WorkerContext:
    """This process's settings, session factory and worker id (built once, on first use)."""
    return WorkerContext.from_settings(get_settings())


def gpu_info() -> dict:
    """What the System view shows about this worker's accelerators."""
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus}
    except Exception as e:  # noqa: BLE001 - informational only
        return {"error": str(e)}


class Presence(threading.Thread):
    """Keeps the worker's row fresh and runs the reaper: jobs whose worker (any worker) stopped heart-beating
    are re-enqueued to resume elsewhere, or failed after ``max_resumes``, or ended cancelled if so asked."""

    def __init__(self) -> None:
        super().__init__(name="sdpo-presence", daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        ctx = context()
        while not self.stopped.wait(ctx.settings.heartbeat_interval_s):
            try:
                with session_scope(ctx.sessions) as s:
                    touch_worker(s, worker_id=ctx.worker_id)
                reap(ctx)
            except Exception:  # noqa: BLE001 - retried next tick
                log.exception("presence tick failed")


_presence: Presence | None = None


@signals.worker_ready.connect
def _on_ready(**_kwargs) -> None:
    global _presence
    ctx = context()
    with session_scope(ctx.sessions) as s:
        register_worker(s, worker_id=ctx.worker_id, hostname=socket.gethostname(), pid=os.getpid(),
                        queue=",".join(ctx.queues)[:200], info={**gpu_info(), "offers_gpus": ctx.gpus})
    reap(ctx)
    _presence = Presence()
    _presence.start()
    log.info("worker %s ready on queue(s) %s (GPUs offered: %s)", ctx.worker_id, ",".join(ctx.queues),
             ctx.gpus if ctx.gpus is not None else "no CUDA; N-GPU jobs run as gloo processes")


@signals.worker_shutting_down.connect
def _on_shutting_down(sig=None, how=None, **_kwargs) -> None:
    """SIGTERM, Ctrl-C (SIGINT), SIGQUIT: the running job stops at its next stop check (within seconds) instead
    of running to its end; ``workers.runner.run_job`` then ends it ``cancelled`` if a cancel was requested, else
    hands it back to the queue. Runs inside the signal handler: only sets a flag."""
    context().request_stop(f"the worker was shut down ({sig or 'signal'}, {str(how or 'warm').lower()} shutdown)")


@signals.worker_shutdown.connect
def _on_shutdown(**_kwargs) -> None:
    if _presence is not None:
        _presence.stopped.set()
    ctx = context()
    try:
        with session_scope(ctx.sessions) as s:
            remove_worker(s, worker_id=ctx.worker_id)
    except Exception:  # noqa: BLE001 - best effort at shutdown
        log.exception("could not deregister worker %s", ctx.worker_id)
