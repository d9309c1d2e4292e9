"""System health: database, broker, queue length, live workers, versions."""

from __future__ import annotations

from importlib import metadata

from sqlalchemy import text
from sqlalchemy.orm import Session

from backend.queue import JobQueue
from backend.schemas import Health
from backend.services.jobs import jobs_by_status
from backend.services.workers import list_workers
from backend.settings import Settings

PACKAGES = ("sdpo-studio", "torch", "transformers", "peft", "celery", "sqlalchemy", "gradio")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def health(session: Session, *, settings: Settings, queue: JobQueue) -> Health:
    """Check each part independently; a failing part is reported as its error, never raised."""
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
        counts = jobs_by_status(session)
        workers = list_workers(session, alive_within_s=settings.heartbeat_timeout_s)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        database, counts, workers = f"error: {e}", {}, []
    try:
        queue.ping()
        length: int | None = queue.length()
        broker = "ok"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        broker, length = f"error: {e}", None
    return Health(
        database=database, broker=broker, queue=settings.queue, queue_length=length, workers=workers,
        jobs_by_status=counts, versions={p: _version(p) for p in PACKAGES},
        data_dir=str(settings.data_dir), model=settings.model,
    )
