"""Job services: submit, cancel, list/filter/search, detail, delete, re-run, and the worker-side calls that
move a job through its states and persist its progress (attempts, metrics, checkpoints, heartbeats).

All functions are keyword-only and take a ``Session``; the caller commits, except ``submit_job`` /
``rerun_job`` which must commit the job row *before* the message reaches the broker (a worker could
otherwise pick the message up before the row exists).

Engine configs are validated by a ``ConfigValidator`` the caller passes in: the worker package binds it to
the engines' own config dataclasses (``workers.engine.validate_config``), so the service validates with
exactly the code the engine runs and ``backend`` never imports the engines.
"""

from __future__ import annotations

import enum
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from backend.errors import EnqueueError, IllegalTransition, InvalidInput, NotFound
from backend.models import (
    JOB_KINDS,
    JOB_STATUSES,
    JOB_TRANSITIONS,
    TERMINAL_STATUSES,
    Attempt,
    Checkpoint,
    Dataset,
    Job,
    MetricPoint,
    Problem,
    utcnow,
)
from backend.schemas import AttemptIn, CheckpointOut, ConfigValidator, Enqueue, JobDetail

MAX_LABEL = 200


# ---------------------------------------------------------------------------------------------------------
# Submitting and managing jobs (UI, CLI)
# ---------------------------------------------------------------------------------------------------------
def validate_job_input(
    session: Session,
    *,
    kind: str,
    config: Any,
    validate: ConfigValidator,
    problem_id: int | None = None,
    dataset_id: int | None = None,
    gpus: int = 1,
) -> dict[str, Any]:
    """Check everything about a job submission without writing; return the normalized config.

    Raises ``InvalidInput`` naming the field (``kind``, ``problem_id``, ``dataset_id``, ``gpus`` or the
    engine config field, e.g. ``budget`` or ``self_distillation.alpha``).
    """
    if kind not in JOB_KINDS:
        raise InvalidInput("kind", f"got {kind!r}; allowed values are {', '.join(map(repr, JOB_KINDS))}")
    if not isinstance(config, dict):
        raise InvalidInput("config", f"expected a mapping of settings, got {type(config).__name__}")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InvalidInput("gpus", f"got {gpus!r}; expected an integer >= 1")
    if kind == "solve":
        if gpus != 1:
            raise InvalidInput("gpus", f"got {gpus}; solve jobs run on one GPU")
        if problem_id is None:
            raise InvalidInput("problem_id", "a solve job needs a problem; create one first")
        if session.get(Problem, problem_id) is None:
            raise InvalidInput("problem_id", f"unknown problem {problem_id}")
    elif problem_id is not None:
        raise InvalidInput("problem_id", "only solve jobs take a problem")
    if dataset_id is not None and session.get(Dataset, dataset_id) is None:
        names = session.scalars(select(Dataset.name).order_by(Dataset.name)).all()
        raise InvalidInput("dataset_id", f"unknown dataset {dataset_id}; registered: {', '.join(names) or 'none'}")
    try:
        normalized = validate(kind, config)
    except InvalidInput:
        raise
    except (ValueError, TypeError) as e:
        field = getattr(e, "field", None) or "config"
        message = str(e)
        if message.startswith(f"{field}: "):
            message = message[len(field) + 2 :]
        raise InvalidInput(field, message) from None
    return normalized


def submit_job(
    session: Session,
    *,
    kind: str,
    config: Any,
    validate: ConfigValidator,
    enqueue: Enqueue,
    problem_id: int | None = None,
    dataset_id: int | None = None,
    model: str = "",
    gpus: int = 1,
    label: str = "",
) -> Job:
    """Validate, store a ``queued`` job, commit, then enqueue it. Nothing is stored or queued when invalid.

    If the broker refuses the message the job is marked ``failed`` with the reason and ``EnqueueError``
    is raised.
    """
    normalized = validate_job_input(
        session, kind=kind, config=config, validate=validate, problem_id=problem_id,
        dataset_id=dataset_id, gpus=gpus,
    )
    if not label and problem_id is not None:
        problem = session.get(Problem, problem_id)
        label = problem.title if problem else ""
    job = Job(
        kind=kind, status="queued", config=normalized, problem_id=problem_id, dataset_id=dataset_id,
        model=model, gpus=gpus, label=label[:MAX_LABEL], task_id=str(uuid.uuid4()),
    )
    session.add(job)
    session.commit()
    try:
        enqueue(kind, job.id, job.task_id)
    except Exception as e:
        job.status, job.error, job.finished_at = "failed", f"could not enqueue the job: {e}", utcnow()
        session.commit()
        raise EnqueueError(f"job {job.id} stored but not queued: {e}") from e
    return job


def rerun_job(session: Session, *, job_id: int, validate: ConfigValidator, enqueue: Enqueue) -> Job:
    """Submit a new job with the same kind, config, problem, dataset, model and GPU count as ``job_id``."""
    old = get_job(session, job_id=job_id)
    return submit_job(
        session, kind=old.kind, config=dict(old.config), validate=validate, enqueue=enqueue,
        problem_id=old.problem_id, dataset_id=old.dataset_id, model=old.model, gpus=old.gpus,
        label=old.label,
    )


def cancel_job(session: Session, *, job_id: int, revoke: Callable[[str], None] | None = None) -> Job:
    """Cancel a job: a queued one is ``cancelled`` at once (and its message revoked when possible); a
    running one gets its cancel flag set and its worker ends it ``cancelled`` after the current step."""
    job = get_job(session, job_id=job_id)
    if job.status in TERMINAL_STATUSES:
        raise IllegalTransition(job.id, job.status, "cancelled", JOB_TRANSITIONS[job.status])
    job.cancel_requested = True
    if job.status == "queued":
        moved = session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued")
            .values(status="cancelled", finished_at=utcnow(), error="cancelled before it started")
        ).rowcount
        if moved and revoke and job.task_id:
            revoke(job.task_id)
    session.flush()
    session.refresh(job)
    return job


def get_job(session: Session, *, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    return job


def _job_query(kind: str | None, status: str | Sequence[str] | None, search: str | None,
               problem_id: int | None) -> Select:
    q = select(Job)
    if kind is not None:
        if kind not in JOB_KINDS:
            raise InvalidInput("kind", f"got {kind!r}; allowed values are {', '.join(JOB_KINDS)}")
        q = q.where(Job.kind == kind)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        bad = [s for s in statuses if s not in JOB_STATUSES]
        if bad:
            raise InvalidInput("status", f"got {bad[0]!r}; allowed values are {', '.join(JOB_STATUSES)}")
        q = q.where(Job.status.in_(statuses))
    if problem_id is not None:
        q = q.where(Job.problem_id == problem_id)
    if search:
        term = f"%{search.strip().lower()}%"
        conds = [func.lower(Job.label).like(term), func.lower(Job.model).like(term),
                 func.lower(func.coalesce(Job.error, "")).like(term)]
        if search.strip().isdigit():
            conds.append(Job.id == int(search.strip()))
        q = q.where(or_(*conds))
    return q


def list_jobs(
    session: Session,
    *,
    kind: str | None = None,
    status: str | Sequence[str] | None = None,
    search: str | None = None,
    problem_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Job]:
    """Jobs newest first, filtered by kind/status/problem and a case-insensitive search over the label
    (problem title or dataset), model and error text (a number also matches the job id)."""
    q = _job_query(kind, status, search, problem_id).order_by(Job.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(q))


def count_jobs(session: Session, *, kind: str | None = None, status: str | Sequence[str] | None = None,
               search: str | None = None) -> int:
    q = _job_query(kind, status, search, None).with_only_columns(func.count(Job.id))
    return int(session.scalar(q) or 0)


def jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count(Job.id)).group_by(Job.status)).all()
    counts = {s: 0 for s in JOB_STATUSES}
    counts.update({s: int(n) for s, n in rows})
    return counts


def job_detail(session: Session, *, job_id: int) -> JobDetail:
    """Status, config, error, attempt count and best public score, last metrics and checkpoints."""
    job = get_job(session, job_id=job_id)
    n_attempts, best = session.execute(
        select(func.count(Attempt.id), func.max(Attempt.passed_public)).where(Attempt.job_id == job_id)
    ).one()
    last_step = session.scalar(select(func.max(MetricPoint.step)).where(MetricPoint.job_id == job_id))
    last_metrics: dict[str, float] = {}
    if last_step is not None:
        rows = session.execute(
            select(MetricPoint.name, MetricPoint.value)
            .where(MetricPoint.job_id == job_id, MetricPoint.step == last_step)
        ).all()
        last_metrics = {name: value for name, value in rows}
    detail = JobDetail.model_validate(job)
    detail.n_attempts = int(n_attempts)
    detail.best_passed_public = best
    detail.last_step = last_step
    detail.last_metrics = last_metrics
    detail.checkpoints = [CheckpointOut.model_validate(c) for c in list_checkpoints(session, job_id=job_id)]
    return detail


def delete_job(session: Session, *, job_id: int, jobs_dir: Path) -> None:
    """Delete a finished or queued-and-cancelled job with its attempts, metrics, checkpoints and its folder
    ``jobs_dir/<id>``. A running or queued job must be cancelled first."""
    job = get_job(session, job_id=job_id)
    if job.status not in TERMINAL_STATUSES:
        raise InvalidInput("job_id", f"job {job_id} is {job.status}; cancel it before deleting it")
    for model in (Attempt, MetricPoint, Checkpoint):
        session.execute(delete(model).where(model.job_id == job_id))
    session.delete(job)
    session.flush()
    folder = Path(jobs_dir) / str(job_id)
    if folder.exists():
        shutil.rmtree(folder)


def job_log_tail(*, jobs_dir: Path, job_id: int, lines: int = 50) -> str:
    """The last ``lines`` lines of the job's log (``<jobs_dir>/<id>/job.log``, written by its worker); ""
    when there is none yet."""
    path = Path(jobs_dir) / str(job_id) / "job.log"
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 200 * lines))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------------------
# State machine (worker side)
# ---------------------------------------------------------------------------------------------------------
class Claim(enum.Enum):
    """What a worker should do with a job message it received."""

    START = "start"  # the job was queued; it is now ours and running
    RESUME = "resume"  # the job was running under a dead worker; it is now ours, continue it
    WAIT = "wait"  # another worker heart-beat recently; wait and claim again
    SKIP = "skip"  # finished, cancelled or deleted: ack the message and do nothing


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


def claim_job(session: Session, *, job_id: int, worker_id: str, takeover_after_s: float) -> Claim:
    """Atomically take ``job_id`` for ``worker_id`` (conditional UPDATEs, safe across processes)."""
    now = utcnow()
    job = session.get(Job, job_id)
    if job is None or job.status in TERMINAL_STATUSES:
        return Claim.SKIP
    if job.status == "queued":
        if job.cancel_requested:
            transition(session, job=job, to="cancelled", error="cancelled before it started")
            return Claim.SKIP
        won = session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued")
            .values(status="running", worker_id=worker_id, started_at=now, heartbeat_at=now)
        ).rowcount
        session.expire(job)
        return Claim.START if won else claim_job(
            session, job_id=job_id, worker_id=worker_id, takeover_after_s=takeover_after_s)
    # running
    if job.worker_id == worker_id:
        return Claim.RESUME
    cutoff = now - timedelta(seconds=takeover_after_s)
    won = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running",
               or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
        .values(worker_id=worker_id, heartbeat_at=now, resumes=Job.resumes + 1)
    ).rowcount
    session.expire(job)
    return Claim.RESUME if won else Claim.WAIT


def heartbeat(session: Session, *, job_id: int, worker_id: str) -> bool:
    """Refresh the job's heartbeat; False when the job is no longer running under this worker (it was
    reaped, taken over or deleted), in which case the worker must stop working on it."""
    return bool(session.execute(
        update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
        .values(heartbeat_at=utcnow())
    ).rowcount)


def cancel_requested(session: Session, *, job_id: int) -> bool:
    """True when the job was cancelled by a user or is gone (deleted)."""
    flag = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return True if flag is None else bool(flag)


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
        job.result = result
    session.flush()
    return True


def reap_stale(session: Session, *, timeout_s: float) -> list[int]:
    """Fail every running job whose worker stopped heart-beating ``timeout_s`` ago; returns their ids."""
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    stale = session.execute(
        select(Job.id, Job.worker_id, Job.heartbeat_at)
        .where(Job.status == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
    ).all()
    reaped = []
    for job_id, worker_id, beat in stale:
        when = beat.isoformat(timespec="seconds") if beat else "never"
        reason = (f"worker {worker_id} stopped heart-beating (last heartbeat {when}, timeout {timeout_s:g} s); "
                  "the worker probably crashed or lost its connection. Re-run the job to start it again.")
        moved = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running",
                   or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
            .values(status="failed", error=reason, finished_at=now)
        ).rowcount
        if moved:
            reaped.append(job_id)
    return reaped


# ---------------------------------------------------------------------------------------------------------
# Progress: attempts, metrics, checkpoints
# ---------------------------------------------------------------------------------------------------------
def _insert(session: Session, model: type):
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(model)


def record_attempts(session: Session, *, job_id: int, attempts: Iterable[AttemptIn]) -> int:
    """Insert attempts; one already stored for the same (job, round, index) is kept, never duplicated.
    Returns how many rows were new."""
    job = get_job(session, job_id=job_id)
    rows = [dict(a.model_dump(), job_id=job_id, problem_id=job.problem_id, created_at=utcnow())
            for a in attempts]
    if not rows:
        return 0
    stmt = _insert(session, Attempt).values(rows).on_conflict_do_nothing(
        index_elements=["job_id", "round", "index"]).returning(Attempt.id)
    return len(session.execute(stmt).all())


def list_attempts(session: Session, *, job_id: int, after_id: int | None = None,
                  limit: int | None = None) -> list[Attempt]:
    """Attempts in order (round, index); ``after_id`` returns only rows newer than a previous poll."""
    q = select(Attempt).where(Attempt.job_id == job_id)
    if after_id is not None:
        q = q.where(Attempt.id > after_id)
    q = q.order_by(Attempt.round, Attempt.index)
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


def count_attempts(session: Session, *, job_id: int) -> int:
    return int(session.scalar(select(func.count(Attempt.id)).where(Attempt.job_id == job_id)) or 0)


def next_round(session: Session, *, job_id: int) -> int:
    """The round number after the last committed one (0 for a fresh job); a resumed solve starts here."""
    last = session.scalar(select(func.max(Attempt.round)).where(Attempt.job_id == job_id))
    return 0 if last is None else int(last) + 1


def append_metrics(session: Session, *, job_id: int, step: int, metrics: dict[str, float]) -> None:
    """Store one step's scalars; re-logging the same (step, name) after a resume overwrites the value."""
    if not metrics:
        return
    rows = []
    for name, value in metrics.items():
        try:
            rows.append({"job_id": job_id, "step": int(step), "name": str(name)[:120], "value": float(value),
                         "created_at": utcnow()})
        except (TypeError, ValueError):
            raise InvalidInput(f"metrics.{name}", f"got {value!r}; expected a number") from None
    stmt = _insert(session, MetricPoint).values(rows)
    stmt = stmt.on_conflict_do_update(index_elements=["job_id", "step", "name"],
                                      set_={"value": stmt.excluded.value})
    session.execute(stmt)


def list_metrics(session: Session, *, job_id: int, names: Sequence[str] | None = None,
                 after_step: int | None = None) -> list[MetricPoint]:
    q = select(MetricPoint).where(MetricPoint.job_id == job_id)
    if names:
        q = q.where(MetricPoint.name.in_(list(names)))
    if after_step is not None:
        q = q.where(MetricPoint.step > after_step)
    return list(session.scalars(q.order_by(MetricPoint.step, MetricPoint.name)))


def metric_series(session: Session, *, job_id: int) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a job as ``{name: [(step, value), ...]}`` in step order (for plots)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for p in list_metrics(session, job_id=job_id):
        series.setdefault(p.name, []).append((p.step, p.value))
    return series


def _folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def register_checkpoint(session: Session, *, job_id: int, step: int, kind: str, path: str) -> Checkpoint:
    """Record a checkpoint folder (size measured now); registering the same (step, kind) again updates it."""
    if kind not in ("lora", "full"):
        raise InvalidInput("kind", f"got {kind!r}; allowed values are 'lora', 'full'")
    p = Path(path)
    if not p.exists():
        raise InvalidInput("path", f"checkpoint path {path} does not exist")
    size = _folder_bytes(p)
    existing = session.scalar(select(Checkpoint).where(
        Checkpoint.job_id == job_id, Checkpoint.step == step, Checkpoint.kind == kind))
    if existing:
        existing.path, existing.bytes = str(p), size
        session.flush()
        return existing
    ck = Checkpoint(job_id=job_id, step=step, kind=kind, path=str(p), bytes=size)
    session.add(ck)
    session.flush()
    return ck


def list_checkpoints(session: Session, *, job_id: int) -> list[Checkpoint]:
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))


def latest_checkpoint(session: Session, *, job_id: int) -> Checkpoint | None:
    """The newest registered checkpoint whose folder still exists (what a resumed train job loads)."""
    for ck in reversed(list_checkpoints(session, job_id=job_id)):
        if Path(ck.path).exists():
            return ck
    return None
