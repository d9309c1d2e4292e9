"""The Celery side of the service, configured from settings; no task code lives here.

``make_celery`` is used both by the worker (``workers.celery_app`` adds the tasks to it) and by callers that
only enqueue (UI, CLI): jobs are sent by task *name*, so ``backend`` never imports ``workers``.
Broker defaults to Celery's filesystem transport under ``<data_dir>/broker`` (no server); production uses
Redis. Job tasks are ``acks_late`` with ``reject_on_worker_lost`` and a prefetch of one.

Jobs are routed by GPU count: a one-GPU job goes to ``settings.queue`` (``gpu``), a job asking for N > 1 GPUs
to ``settings.queue`` + N (``gpu4``), which only workers offering N GPUs consume (``Settings.consumed_queues``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from backend.settings import Settings

TASK_NAMES = {"solve": "workers.tasks.run_solve_job", "train": "workers.tasks.run_train_job"}
# GPU counts whose queues ``JobQueue.length`` / ``purge`` look at besides the one-GPU queue.
COUNTED_GPUS = tuple(range(2, 9))


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Transport options: folders for the filesystem broker, the visibility timeout for Redis."""
    if settings.broker_url.startswith("filesystem://"):
        queue_dir = settings.broker_dir / "queue"
        processed = settings.broker_dir / "processed"
        control = settings.broker_dir / "control"
        for d in (queue_dir, processed, control):
            Path(d).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(processed),
            "control_folder": str(control),  # broadcast (inspect/revoke); default would be ./control
            "store_processed": False,
            "polling_interval": 0.5,
        }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": max(1, int(settings.heartbeat_interval_s)),
            "unacked_restore_throttle": 1,
        }
    return {}


def make_celery(settings: Settings) -> Celery:
    """A Celery app bound to the configured broker, routing job tasks to ``settings.queue``."""
    app = Celery("sdpo", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_queues=[Queue(settings.queue, routing_key=settings.queue)],
        task_routes={name: {"queue": settings.queue} for name in TASK_NAMES.values()},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        # Workers on a filesystem broker cannot receive broadcasts; don't try.
        worker_enable_remote_control=not settings.broker_url.startswith("filesystem://"),
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


class JobQueue:
    """Sends job tasks by name and reports queue length; one instance per process is enough."""

    def __init__(self, settings: Settings, app: Celery | None = None):
        self.settings = settings
        self.app = app or make_celery(settings)

    def enqueue(self, kind: str, job_id: int, task_id: str, gpus: int = 1) -> None:
        """Send ``run_<kind>_job(job_id)`` with the given task id to the queue of ``gpus``-GPU jobs."""
        self.app.send_task(TASK_NAMES[kind], args=[job_id], task_id=task_id, queue=self.settings.queue_for(gpus))

    def revoke(self, task_id: str) -> None:
        """Best-effort revoke of a queued task (brokers without broadcast ignore it; the DB flag rules)."""
        if self.app.conf.worker_enable_remote_control:
            try:
                self.app.control.revoke(task_id)
            except Exception:  # noqa: BLE001 - revoke is an optimisation; cancellation is the DB flag
                pass

    def queues(self, gpus: int | None = None) -> list[str]:
        """The queue of ``gpus``-GPU jobs, or (None) the one-GPU queue and those of 2..8 GPUs."""
        if gpus is not None:
            return [self.settings.queue_for(gpus)]
        return [self.settings.queue_for(n) for n in (1, *COUNTED_GPUS)]

    def length(self, gpus: int | None = None) -> int:
        """Messages waiting for workers (not counting the ones workers hold): in the queue of ``gpus``-GPU
        jobs, or (None) in all job queues."""
        total = 0
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in self.queues(gpus):
                _, count, _ = channel.queue_declare(queue=queue, durable=True, auto_delete=False)
                total += int(count)
        return total

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    def purge(self) -> int:
        """Drop every waiting message of the job queues (tests, admin); returns how many."""
        with self.app.connection_for_write() as conn:
            return sum(int(conn.default_channel.queue_purge(q) or 0) for q in self.queues())
