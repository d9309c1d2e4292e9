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
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from backend.errors import EnqueueError, IllegalTransition, InvalidInput, JobLost, NotFound
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
from backend.schemas import (
    AttemptIn,
    CheckpointOut,
    ConfigValidator,
    Enqueue,
    JobDetail,
    RawConfig,
    RoundSummary,
)
from backend.services.workers import gpus_offered
from backend.text import RESPONSE_CHARS, storable

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
    model: str = "",
) -> dict[str, Any]:
    """Check everything about a job submission without writing; return the normalized config.

    ``config``: a mapping, or a ``RawConfig`` as typed in a form (read by the engine's parser). ``model``: the
    model the job will use ("" = the server's default); the validator checks that it exists and fits the
    defaults to it and to the live workers (GPUs or not, ``gpus_offered``).

    Raises ``InvalidInput`` naming the field (``kind``, ``problem_id``, ``dataset_id``, ``gpus``, ``model`` or
    the engine config field, e.g. ``budget`` or ``self_distillation.alpha``). A train job on ``gpus`` > 1 must
    also pass the trainer's rules for that many processes (``check_world_size``).
    """
    if kind not in JOB_KINDS:
        raise InvalidInput("kind", f"got {kind!r}; allowed values are {', '.join(map(repr, JOB_KINDS))}")
    if not isinstance(config, dict | RawConfig):
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
        normalized = validate(kind, config, model=model, gpu=gpus_offered(session))
    except InvalidInput:
        raise
    except (ValueError, TypeError) as e:
        field = getattr(e, "field", None) or "config"
        message = str(e)
        if message.startswith(f"{field}: "):
            message = message[len(field) + 2 :]
        raise InvalidInput(field, message) from None
    if kind == "train" and gpus > 1:
        check_world_size(normalized, gpus)
    return normalized


def check_world_size(config: dict[str, Any], gpus: int) -> None:
    """The trainer's rules for a run on ``gpus`` processes, which it can only check under torchrun (its
    ``sdpo.trainer.check_world``; ``tests/workers/test_engine.py`` keeps the two in agreement), checked here
    at submit time so that no job its ranks would refuse is queued. Raises ``InvalidInput``."""
    batch = config.get("train_batch_size")
    if isinstance(batch, int) and batch < gpus:
        raise InvalidInput("train_batch_size", f"got {batch}; must be >= gpus ({gpus}): each of the {gpus} ranks "
                           "needs at least one question per step")
    if config.get("sampler") == "vllm":
        raise InvalidInput("sampler", f"got 'vllm' with gpus={gpus}; multi-process (torchrun) runs sample with HF: "
                           "use 'hf' or 'auto' (auto picks hf there)")


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
        dataset_id=dataset_id, gpus=gpus, model=model,
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
        enqueue(kind, job.id, job.task_id, gpus)
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
    running one gets its cancel flag set and its worker ends it ``cancelled`` within seconds (the engine polls
    the flag while it generates, scores and updates)."""
    job = get_job(session, job_id=job_id)
    if job.status in TERMINAL_STATUSES:
        raise IllegalTransition(job.id, job.status, "cancelled", JOB_TRANSITIONS[job.status])
    job.cancel_requested = True
    if job.status == "queued":
        reason = "cancelled before it started" if job.started_at is None else "cancelled while waiting to resume"
        moved = session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued")
            .values(status="cancelled", finished_at=utcnow(), error=reason)
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
        term = storable(search.strip().lower())  # as stored; matched literally (%, _ and \ are no wildcards)
        conds = [func.lower(Job.label).contains(term, autoescape=True),
                 func.lower(Job.model).contains(term, autoescape=True),
                 func.lower(func.coalesce(Job.error, "")).contains(term, autoescape=True)]
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


def round_summaries(session: Session, *, job_id: int) -> list[RoundSummary]:
    """Every round of the job (a training job's rounds are its steps) in order: its attempts (count, mean
    reward, best public tests passed, how many passed every public and hidden test, the 1-based number of its
    first attempt in the job's (round, index) order) and the metrics logged for it."""
    get_job(session, job_id=job_id)
    rounds: dict[int, RoundSummary] = {}
    number = 0
    for a in list_attempts(session, job_id=job_id):
        number += 1
        r = rounds.setdefault(a.round, RoundSummary(round=a.round, first_attempt=number, reward_mean=0.0))
        r.attempts += 1
        r.reward_mean += (float(a.reward) - r.reward_mean) / r.attempts
        if r.best_passed is None or a.passed_public > r.best_passed:
            r.best_passed = a.passed_public
        r.tests = a.total_public
        r.solved += int(a.total_public > 0 and a.passed_public == a.total_public
                        and (a.total_hidden is None or a.passed_hidden == a.total_hidden))
    for p in list_metrics(session, job_id=job_id):
        rounds.setdefault(p.step, RoundSummary(round=p.step)).metrics[p.name] = p.value
    return [rounds[k] for k in sorted(rounds)]


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
        won = session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued")
            .values(status="running", worker_id=worker_id, started_at=job.started_at or now, heartbeat_at=now)
        ).rowcount
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
    won = session.execute(
        update(Job).where(*silent).values(worker_id=worker_id, heartbeat_at=now, resumes=Job.resumes + 1)
    ).rowcount
    session.expire(job)
    return Claim.RESUME if won else Claim.SKIP


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
        job.result = _storable_json(result)
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
        values, outcome = dict(status="queued", worker_id=None, heartbeat_at=None, resumes=Job.resumes + 1,
                               task_id=str(uuid.uuid4())), "requeued"
    if not session.execute(ours.values(**values)).rowcount:
        return "lost"
    session.expire(job)
    if outcome != "requeued":
        return outcome
    session.commit()
    task_id = session.scalar(select(Job.task_id).where(Job.id == job_id))
    try:
        enqueue(job.kind, job_id, task_id, job.gpus)
    except Exception as e:  # noqa: BLE001 - recorded on the job
        session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
            status="failed", finished_at=utcnow(),
            error=f"stopped because {reason}; queueing it again failed: {' '.join(str(e).split())}"))
        session.commit()
        return "failed"
    return outcome


def _storable_json(value: Any) -> Any:
    """``value`` with every string in it made ``storable`` (an engine's result holds e.g. the solution code)."""
    if isinstance(value, str):
        return storable(value, limit=RESPONSE_CHARS)
    if isinstance(value, dict):
        return {storable(str(k)): _storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_json(v) for v in value]
    return value


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
      message is sent (as in ``submit_job``), so this commits the session when it re-enqueues; if the broker
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
            values, outcome = dict(status="queued", worker_id=None, heartbeat_at=None, resumes=Job.resumes + 1,
                                   task_id=str(uuid.uuid4())), "requeued"
        else:
            continue
        if not session.execute(still.values(**values)).rowcount:
            continue
        reaped.append((job_id, outcome))
        if outcome == "requeued":
            session.commit()
            task_id = session.scalar(select(Job.task_id).where(Job.id == job_id))
            try:
                enqueue(kind, job_id, task_id, gpus)
            except Exception as e:  # noqa: BLE001 - recorded on the job
                session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                    status="failed", finished_at=utcnow(), error=f"{lost}; re-enqueueing it failed: {e}"))
                session.commit()
                reaped[-1] = (job_id, "failed")
    return reaped


# ---------------------------------------------------------------------------------------------------------
# Progress: attempts, metrics, checkpoints
# ---------------------------------------------------------------------------------------------------------
def _insert(session: Session, model: type):
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(model)


def _writable_job(session: Session, job_id: int, worker_id: str | None) -> Job:
    """The job row, locked until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite transactions here
    hold the write lock from BEGIN). With ``worker_id``, raise ``JobLost`` unless the job is ``running``
    under that worker, so a worker that lost the job (taken over, re-enqueued, finished) writes nothing: a
    takeover or the reaper waits for the lock, and a write after them sees the new owner."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update()
                         .execution_options(populate_existing=True))
    if job is None:
        if worker_id is not None:
            raise JobLost(job_id, worker_id)
        raise NotFound("job", job_id)
    if worker_id is not None and (job.worker_id != worker_id or job.status != "running"):
        raise JobLost(job_id, worker_id)
    return job


def raw_response_path(*, jobs_dir: Path, job_id: int, round: int, index: int) -> Path:
    """Where the raw response of attempt (``round``, ``index``) is kept when its stored text had to differ
    (escaped control characters, replaced invalid text, cut) or it could not be stored at all."""
    return Path(jobs_dir) / str(job_id) / "responses" / f"round-{round}-index-{index}.txt"


def _keep_raw(path: Path, response: str) -> None:
    """Write ``response`` byte for byte (lone surrogates too) to ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(response.encode("utf-8", "surrogatepass"))
    os.replace(tmp, path)


def record_attempts(session: Session, *, job_id: int, attempts: Iterable[AttemptIn],
                    worker_id: str | None = None, jobs_dir: Path | None = None) -> int:
    """Insert attempts; one already stored for the same (job, round, index) is kept, never duplicated.
    Returns how many rows were new. With ``worker_id`` (a worker's writes) nothing is written and
    ``JobLost`` is raised unless the job runs under that worker.

    Texts are stored by the rule of ``backend.text.storable`` (the column types apply it). With ``jobs_dir``,
    the raw response of each new attempt whose stored response differs from it is kept in
    ``raw_response_path`` (a stale one of a re-run attempt is removed)."""
    job = _writable_job(session, job_id, worker_id)
    attempts = list(attempts)
    rows = [dict(a.model_dump(), job_id=job_id, problem_id=job.problem_id, created_at=utcnow())
            for a in attempts]
    if not rows:
        return 0
    stmt = _insert(session, Attempt).values(rows).on_conflict_do_nothing(
        index_elements=["job_id", "round", "index"]).returning(Attempt.round, Attempt.index)
    new = set(map(tuple, session.execute(stmt).all()))
    if jobs_dir is not None:
        for a in attempts:
            if (a.round, a.index) not in new:
                continue
            path = raw_response_path(jobs_dir=jobs_dir, job_id=job_id, round=a.round, index=a.index)
            if storable(a.response, limit=RESPONSE_CHARS) != a.response:
                _keep_raw(path, a.response)
            else:
                path.unlink(missing_ok=True)
    return len(new)


def record_unstored_attempt(session: Session, *, job_id: int, attempt: AttemptIn, reason: str,
                            worker_id: str | None = None, jobs_dir: Path | None = None) -> int:
    """Record in place of an attempt the database refused (``reason``, one line) a row with its numbers
    (round, index, reward, tests passed, tokens, time) and the reason as its response and feedback, so the
    job's attempts stay complete; with ``jobs_dir`` its raw response is kept in ``raw_response_path``.
    Returns 1 when the row was new (``record_attempts``)."""
    note = f"this attempt could not be stored in the database: {reason}"
    if jobs_dir is not None:
        path = raw_response_path(jobs_dir=jobs_dir, job_id=job_id, round=attempt.round, index=attempt.index)
        _keep_raw(path, attempt.response)
        note += f"; its raw response is in {path}"
    note = f"[{note}]"
    stand_in = attempt.model_copy(update={"response": note, "code": None, "feedback": note, "task_id": None})
    return record_attempts(session, job_id=job_id, attempts=[stand_in], worker_id=worker_id)


def attempt_record(a: Attempt, *, jobs_dir: Path | None = None) -> dict[str, Any]:
    """One attempt as stored, as the JSON object of an ``attempts.jsonl`` line (the keys of ``sdpo solve``'s
    file, plus response, tokens, seconds, task id and, with ``jobs_dir``, the raw response file if one was
    kept)."""
    record: dict[str, Any] = {
        "round": a.round, "index": a.index, "reward": a.reward, "passed": a.passed_public,
        "total": a.total_public, "hidden_passed": a.passed_hidden, "hidden_total": a.total_hidden,
        "feedback": a.feedback, "code": a.code, "response": a.response, "tokens": a.tokens,
        "seconds": a.seconds, "task_id": a.task_id}
    if jobs_dir is not None:
        raw = raw_response_path(jobs_dir=jobs_dir, job_id=a.job_id, round=a.round, index=a.index)
        record["raw_response"] = str(raw) if raw.exists() else None
    return record


def iter_attempt_lines(session: Session, *, job_id: int, jobs_dir: Path | None = None) -> Iterable[str]:
    """The job's attempts in (round, index) order as ``attempts.jsonl`` lines (``attempt_record``), read in
    batches (a long training job has many)."""
    q = (select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.round, Attempt.index)
         .execution_options(yield_per=500))
    for a in session.scalars(q):
        yield json.dumps(attempt_record(a, jobs_dir=jobs_dir), ensure_ascii=False) + "\n"


def write_attempts_file(session: Session, *, job_id: int, jobs_dir: Path) -> Path:
    """Write ``<jobs_dir>/<id>/attempts.jsonl`` from the stored attempts (atomically); returns its path."""
    path = Path(jobs_dir) / str(job_id) / "attempts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".attempts.jsonl.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(iter_attempt_lines(session, job_id=job_id, jobs_dir=jobs_dir))
    os.replace(tmp, path)
    return path


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


def append_metrics(session: Session, *, job_id: int, step: int, metrics: dict[str, float],
                   worker_id: str | None = None) -> None:
    """Store one step's scalars; re-logging the same (step, name) after a resume overwrites the value.
    With ``worker_id``, only while the job runs under that worker (``JobLost`` otherwise)."""
    if not metrics:
        return
    _writable_job(session, job_id, worker_id)
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


def register_checkpoint(session: Session, *, job_id: int, step: int, kind: str, path: str,
                        worker_id: str | None = None) -> Checkpoint:
    """Record a checkpoint folder (size measured now); registering the same (step, kind) again updates it.
    With ``worker_id``, only while the job runs under that worker (``JobLost`` otherwise)."""
    if kind not in ("lora", "full"):
        raise InvalidInput("kind", f"got {kind!r}; allowed values are 'lora', 'full'")
    _writable_job(session, job_id, worker_id)
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


def discard_progress_after(session: Session, *, job_id: int, step: int, worker_id: str) -> int:
    """Before a train job resumes from its checkpoint at ``step`` (0: none, it starts over), delete what its
    previous run recorded after that step: attempts of later rounds (a train attempt's round is its step),
    metric points and checkpoints of later steps. The resumed run re-runs those steps and records them anew,
    so the job shows one timeline. Only for the job's owner (``JobLost`` otherwise). Returns rows deleted."""
    _writable_job(session, job_id, worker_id)
    n = 0
    for model, column in ((Attempt, Attempt.round), (MetricPoint, MetricPoint.step), (Checkpoint, Checkpoint.step)):
        n += session.execute(delete(model).where(model.job_id == job_id, column > step)).rowcount or 0
    return n


def list_checkpoints(session: Session, *, job_id: int) -> list[Checkpoint]:
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))


def latest_checkpoint(session: Session, *, job_id: int) -> Checkpoint | None:
    """The newest registered checkpoint whose folder still exists (what a resumed train job loads)."""
    for ck in reversed(list_checkpoints(session, job_id=job_id)):
        if Path(ck.path).exists():
            return ck
    return None
