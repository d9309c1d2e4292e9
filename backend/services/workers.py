"""Worker presence: each worker process records itself (host, pid, queue, GPU info) and refreshes
``last_seen``; the System view lists the ones seen recently."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from backend.models import Worker, utcnow
from backend.schemas import WorkerOut


def register_worker(session: Session, *, worker_id: str, hostname: str, pid: int, queue: str,
                    info: dict[str, Any]) -> Worker:
    w = session.get(Worker, worker_id)
    now = utcnow()
    if w is None:
        w = Worker(id=worker_id, hostname=hostname, pid=pid, queue=queue, info=info, started_at=now, last_seen=now)
        session.add(w)
    else:
        w.hostname, w.pid, w.queue, w.info, w.last_seen = hostname, pid, queue, info, now
    session.flush()
    return w


def touch_worker(session: Session, *, worker_id: str, current_job_id: int | None = None) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id)
                    .values(last_seen=utcnow(), current_job_id=current_job_id))


def remove_worker(session: Session, *, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def list_workers(session: Session, *, alive_within_s: float, include_dead: bool = False) -> list[WorkerOut]:
    """Workers, newest first; ``alive`` when seen within ``alive_within_s`` seconds."""
    cutoff = utcnow() - timedelta(seconds=alive_within_s)
    out = []
    for w in session.scalars(select(Worker).order_by(Worker.last_seen.desc())):
        item = WorkerOut.model_validate(w)
        item.alive = w.last_seen >= cutoff
        if item.alive or include_dead:
            out.append(item)
    return out


def gpus_offered(session: Session, *, alive_within_s: float = 300.0) -> bool | None:
    """Whether the workers seen within ``alive_within_s`` seconds offer GPUs: True when any does, False when
    there are live workers and none does (CPU hosts), None without a live worker (not known). Job defaults
    fit the machines that will run the job (``sdpo.sizing``)."""
    cutoff = utcnow() - timedelta(seconds=alive_within_s)
    offers = [(w.info or {}).get("offers_gpus") for w in session.scalars(select(Worker).where(Worker.last_seen >= cutoff))]
    if not offers:
        return None
    return any(isinstance(n, int) and n > 0 for n in offers)
