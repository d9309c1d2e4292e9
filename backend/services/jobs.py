"""Job services: submit, cancel, re-run, delete, and the queries the UI and the CLI show (list/filter/search,
detail, rounds, log tail). A worker moves a job through its states with ``backend.services.lifecycle`` and
records what it produced with ``backend.services.progress``.

All functions are keyword-only and take a ``Session``; the caller commits, except ``submit_job`` /
``rerun_job`` which must commit the job row *before* the message reaches the broker (a worker could
otherwise pick the message up before the row exists).

Engine configs are validated by a ``ConfigValidator`` the caller passes in: the worker package binds it to
the engines' own config dataclasses (``workers.engine.validate_config``), so the service validates with
exactly the code the engine runs and ``backend`` never imports the engines.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.orm import Session

from backend.db import changed_rows
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
from backend.schemas import CheckpointOut, ConfigValidator, Enqueue, JobDetail, RawConfig, RoundSummary
from backend.services.progress import list_attempts, list_checkpoints, list_metrics
from backend.services.workers import gpus_offered
from backend.text import storable

MAX_LABEL = 200


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
    task_id = str(uuid.uuid4())
    job = Job(
        kind=kind, status="queued", config=normalized, problem_id=problem_id, dataset_id=dataset_id,
        model=model, gpus=gpus, label=label[:MAX_LABEL], task_id=task_id,
    )
    session.add(job)
    session.commit()
    try:
        enqueue(kind, job.id, task_id, gpus)
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
        moved = changed_rows(session, update(Job).where(Job.id == job_id, Job.status == "queued")
                             .values(status="cancelled", finished_at=utcnow(), error=reason))
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
        mean = r.reward_mean or 0.0
        r.reward_mean = mean + (float(a.reward) - mean) / r.attempts
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
