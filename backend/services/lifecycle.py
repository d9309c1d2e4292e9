"""A job's life on the worker side: claim a queued (or orphaned) job, heart-beat while running it, poll its
cancel flag, finish it, hand it back when the worker shuts down, and reap the jobs of workers that went silent.

Every move is a conditional UPDATE on the job row (status, owner, heartbeat), so that concurrent workers and
reapers never both act on one job. Functions are keyword-only and take a ``Session``; the caller commits,
except where a message is re-sent (``release_job``, ``reap_stale``): the row is committed before the message
reaches the broker, as in ``backend.services.jobs.submit_job``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from backend.db import changed_rows
from backend.errors import IllegalTransition, InvalidInput
from backend.models import JOB_TRANSITIONS, TERMINAL_STATUSES, Job, utcnow
from backend.schemas import Enqueue
from backend.text import storable_json


class Claim(enum.Enum):
    """What a worker should do with a job message it received."""

    START = "start"  # the job was queued; it is now ours and running
    RESUME = "resume"  # the job lost its worker (re-enqueued, or running under a dead worker); now ours: continue it
    SKIP = "skip"  # finished, cancelled, deleted or held by a live worker: ack the message and do nothing


def transition(session: Session, *, job: Job, to: str, error: str | None = None) -> Job:
    """Move ``job`` to status ``to`` or raise ``IllegalTransition``; sets started/finished timestamps."""
    allowed = JOB_TRANSITIONS.get(job.status, ())
    if to not in allowed:
        raise IllegalTransition(job.id, job.status, to, allowed)
    now = utcnow()
    job.status = to
    if to == "running" and job.started_at is None:
        job.started_at = now
    if to in TERMINAL_STATUSES:
        job.finished_at = now
    if error is not None:
        job.error = error
    session.flush()
    return job


def _silent(cutoff):
    """SQL condition: the job's heartbeat is older than ``cutoff`` (or it never beat)."""
    return or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)


def claim_job(session: Session, *, job_id: int, worker_id: str, takeover_after_s: float,
              max_resumes: int | None = None) -> Claim:
    """Atomically take ``job_id`` for ``worker_id`` (conditional UPDATEs, safe across processes).

    * queued: START (RESUME when the reaper re-enqueued it after it lost its worker); SKIP when cancelled;
    * running under this worker: RESUME;
    * running under a worker silent for ``takeover_after_s`` (a redelivered message of a dead worker's job):
      taken over (RESUME, ``resumes`` + 1), unless its cancel was requested (it ends ``cancelled``) or it was
      already resumed ``max_resumes`` times (SKIP; the reaper fails it);
    * running under a live worker: SKIP at once. The message is a duplicate (Redis redelivers a long job's
      message after the visibility timeout while its worker still runs it); dropping it is safe because, should
      that worker die, the reaper re-enqueues the job with a new message;
    * finished or deleted: SKIP.
    """
    now = utcnow()
    job = session.get(Job, job_id)
    if job is None or job.status in TERMINAL_STATUSES:
        return Claim.SKIP
    if job.status == "queued":
        if job.cancel_requested:
            transition(session, job=job, to="cancelled", error="cancelled before it started")
            return Claim.SKIP
        resumed = job.resumes > 0
        won = changed_rows(session, update(Job).where(Job.id == job_id, Job.status == "queued").values(
            status="running", worker_id=worker_id, started_at=job.started_at or now, heartbeat_at=now))
        session.expire(job)
        if won:
            return Claim.RESUME if resumed else Claim.START
        return claim_job(session, job_id=job_id, worker_id=worker_id, takeover_after_s=takeover_after_s,
                         max_resumes=max_resumes)
    # running
    if job.worker_id == worker_id:
        return Claim.RESUME
    cutoff = now - timedelta(seconds=takeover_after_s)
    if job.heartbeat_at is not None and job.heartbeat_at >= cutoff:
        return Claim.SKIP  # a live worker runs it
    silent = (Job.id == job_id, Job.status == "running", Job.worker_id == job.worker_id, _silent(cutoff))
    if job.cancel_requested:
        session.execute(update(Job).where(*silent).values(
            status="cancelled", finished_at=now, error=_cancelled_reason(job.worker_id, job.heartbeat_at)))
        session.expire(job)
        return Claim.SKIP
    if max_resumes is not None and job.resumes >= max_resumes:
        return Claim.SKIP
    won = changed_rows(session, update(Job).where(*silent).values(worker_id=worker_id, heartbeat_at=now,
                                                                   resumes=Job.resumes + 1))
    session.expire(job)
    return Claim.RESUME if won else Claim.SKIP


def heartbeat(session: Session, *, job_id: int, worker_id: str) -> bool:
    """Refresh the job's heartbeat; False when the job is no longer running under this worker (it was
    reaped, taken over or deleted), in which case the worker must stop working on it."""
    return bool(changed_rows(session, update(Job).where(
        Job.id == job_id, Job.worker_id == worker_id, Job.status == "running").values(heartbeat_at=utcnow())))


def cancel_requested(session: Session, *, job_id: int) -> bool:
    """True when the job was cancelled by a user or is gone (deleted)."""
    flag = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return True if flag is None else bool(flag)


def owns_job(session: Session, *, job_id: int, worker_id: str) -> bool:
    """True while the job is ``running`` under ``worker_id`` (False once reaped, taken over, finished, deleted)."""
    return session.scalar(select(func.count(Job.id)).where(
        Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")) == 1


def finish_job(session: Session, *, job_id: int, worker_id: str, status: str, error: str | None = None,
               result: dict[str, Any] | None = None) -> bool:
    """End a running job owned by ``worker_id``; False (nothing written) if it is no longer ours."""
    if status not in TERMINAL_STATUSES:
        raise InvalidInput("status", f"got {status!r}; a job finishes as one of {', '.join(TERMINAL_STATUSES)}")
    job = session.get(Job, job_id)
    if job is None or job.worker_id != worker_id or job.status != "running":
        return False
    transition(session, job=job, to=status, error=error)
    if result is not None:
        job.result = storable_json(result)
    session.flush()
    return True


def release_job(session: Session, *, job_id: int, worker_id: str, reason: str, enqueue: Enqueue,
                max_resumes: int | None = None) -> str:
    """Hand back a running job that ``worker_id`` stopped because it is shutting down (``reason``, one line,
    e.g. "the worker was shut down (SIGTERM, warm shutdown)"); returns ``"cancelled"``, ``"requeued"``,
    ``"failed"`` or ``"lost"`` (no longer that worker's: nothing written).

    * a cancel was requested: the job ends ``cancelled``;
    * it was resumed ``max_resumes`` times already: it ends ``failed`` with ``reason`` and the limit;
    * otherwise it goes back to ``queued`` (worker cleared, ``resumes`` + 1, a fresh task id), is committed, and
      a new message is sent (as the reaper does): the next worker resumes it (a train job from its last
      checkpoint, a solve job after its committed attempts). If the broker refuses, it ends ``failed``.
    """
    job = session.get(Job, job_id)
    if job is None or job.worker_id != worker_id or job.status != "running":
        return "lost"
    ours = update(Job).where(Job.id == job_id, Job.status == "running", Job.worker_id == worker_id)
    reason = " ".join(reason.split())
    if job.cancel_requested:
        values, outcome = dict(status="cancelled", finished_at=utcnow(), error="cancelled by the user"), "cancelled"
    elif max_resumes is not None and job.resumes >= max_resumes:
        values, outcome = dict(status="failed", finished_at=utcnow(), error=(
            f"stopped because {reason}; it was resumed {job.resumes} time(s) already (limit "
            f"SDPO_MAX_RESUMES={max_resumes}), so it is not queued again. Re-run the job to start it again.")), \
            "failed"
    else:
        task_id = str(uuid.uuid4())  # of the message that queues it again
        values, outcome = dict(status="queued", worker_id=None, heartbeat_at=None, resumes=Job.resumes + 1,
                               task_id=task_id), "requeued"
    if not changed_rows(session, ours.values(**values)):
        return "lost"
    session.expire(job)
    if outcome != "requeued":
        return outcome
    session.commit()
    try:
        enqueue(job.kind, job_id, task_id, job.gpus)
    except Exception as e:  # noqa: BLE001 - recorded on the job
        session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
            status="failed", finished_at=utcnow(),
            error=f"stopped because {reason}; queueing it again failed: {' '.join(str(e).split())}"))
        session.commit()
        return "failed"
    return outcome



def _when(beat) -> str:
    return beat.isoformat(timespec="seconds") if beat else "never"


def _cancelled_reason(worker_id: str | None, beat) -> str:
    return (f"cancelled by the user; its worker {worker_id} stopped heart-beating (last heartbeat {_when(beat)}) "
            "before the job could stop")


def reap_stale(session: Session, *, timeout_s: float, enqueue: Enqueue | None = None,
               max_resumes: int | None = None) -> list[tuple[int, str]]:
    """Deal with every running job whose worker stopped heart-beating ``timeout_s`` ago; returns
    ``(job_id, outcome)`` pairs, outcome ``"requeued"``, ``"failed"`` or ``"cancelled"``.

    * a job whose cancel was requested ends ``cancelled`` (its worker died before it could stop);
    * a job already resumed ``max_resumes`` times (``Settings.max_resumes``; None: no limit) ends ``failed``
      with the reason;
    * otherwise, given ``enqueue``, it goes back to ``queued`` (worker cleared, ``resumes`` + 1, a fresh task
      id) and a new message is sent to the queue of its GPU count: the worker that takes it resumes it (a train
      job from its last checkpoint, a solve job after its committed attempts). The row is committed before the
      message is sent (as in ``jobs.submit_job``), so this commits the session when it re-enqueues; if the broker
      refuses, the job ends ``failed`` with the reason. Without ``enqueue`` (callers that send no messages,
      e.g. the UI) the job is left running for a worker's reaper to re-enqueue.

    Every change is a conditional UPDATE (still running, still silent, same worker), so concurrent reapers and a
    worker that takes the job over meanwhile never both act on it.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    stale = session.execute(
        select(Job.id, Job.kind, Job.gpus, Job.worker_id, Job.heartbeat_at, Job.resumes, Job.cancel_requested)
        .where(Job.status == "running", _silent(cutoff))
    ).all()
    reaped: list[tuple[int, str]] = []
    for job_id, kind, gpus, worker_id, beat, resumes, cancel in stale:
        still = update(Job).where(Job.id == job_id, Job.status == "running", _silent(cutoff),
                                  Job.worker_id.is_(None) if worker_id is None else Job.worker_id == worker_id)
        lost = (f"worker {worker_id} stopped heart-beating (last heartbeat {_when(beat)}, timeout {timeout_s:g} s); "
                "the worker probably crashed, ran out of memory or lost its connection")
        if cancel:
            values, outcome = dict(status="cancelled", error=_cancelled_reason(worker_id, beat), finished_at=now), \
                "cancelled"
        elif max_resumes is not None and resumes >= max_resumes:
            values, outcome = dict(status="failed", finished_at=now, error=(
                f"{lost}. It was resumed {resumes} time(s) already (limit SDPO_MAX_RESUMES={max_resumes}), so it "
                "is not resumed again. Re-run the job to start it again.")), "failed"
        elif enqueue is not None:
            task_id = str(uuid.uuid4())  # of the message that queues it again
            values, outcome = dict(status="queued", worker_id=None, heartbeat_at=None, resumes=Job.resumes + 1,
                                   task_id=task_id), "requeued"
        else:
            continue
        if not changed_rows(session, still.values(**values)):
            continue
        reaped.append((job_id, outcome))
        if outcome == "requeued" and enqueue is not None:
            session.commit()
            try:
                enqueue(kind, job_id, task_id, gpus)
            except Exception as e:  # noqa: BLE001 - recorded on the job
                session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                    status="failed", finished_at=utcnow(), error=f"{lost}; re-enqueueing it failed: {e}"))
                session.commit()
                reaped[-1] = (job_id, "failed")
    return reaped
