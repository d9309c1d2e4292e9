"""What a job produced: its attempts (with the raw responses kept beside the database when their text had to
change), its metrics and its checkpoints. A worker writes them while it owns the job (every write is refused
with ``JobLost`` once the job is no longer that worker's); the views, the CLI and ``attempts.jsonl`` read them.

Functions are keyword-only and take a ``Session``; the caller commits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from backend.db import changed_rows
from backend.errors import InvalidInput, JobLost, NotFound
from backend.models import Attempt, Checkpoint, Job, MetricPoint, utcnow
from backend.schemas import AttemptIn
from backend.text import RESPONSE_CHARS, storable


def dialect_insert(session: Session, model: type):
    """An INSERT of ``model`` in the session's dialect (PostgreSQL or SQLite), for ``on_conflict_do_*``."""
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(model)


def writable_job(session: Session, job_id: int, worker_id: str | None) -> Job:
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
    job = writable_job(session, job_id, worker_id)
    attempts = list(attempts)
    rows = [dict(a.model_dump(), job_id=job_id, problem_id=job.problem_id, created_at=utcnow())
            for a in attempts]
    if not rows:
        return 0
    stmt = dialect_insert(session, Attempt).values(rows).on_conflict_do_nothing(
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
    writable_job(session, job_id, worker_id)
    rows = []
    for name, value in metrics.items():
        try:
            rows.append({"job_id": job_id, "step": int(step), "name": str(name)[:120], "value": float(value),
                         "created_at": utcnow()})
        except (TypeError, ValueError):
            raise InvalidInput(f"metrics.{name}", f"got {value!r}; expected a number") from None
    stmt = dialect_insert(session, MetricPoint).values(rows)
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
    writable_job(session, job_id, worker_id)
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
    writable_job(session, job_id, worker_id)
    n = 0
    for model, column in ((Attempt, Attempt.round), (MetricPoint, MetricPoint.step), (Checkpoint, Checkpoint.step)):
        n += changed_rows(session, delete(model).where(model.job_id == job_id, column > step))
    return n


def list_checkpoints(session: Session, *, job_id: int) -> list[Checkpoint]:
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))


def latest_checkpoint(session: Session, *, job_id: int) -> Checkpoint | None:
    """The newest registered checkpoint whose folder still exists (what a resumed train job loads)."""
    for ck in reversed(list_checkpoints(session, job_id=job_id)):
        if Path(ck.path).exists():
            return ck
    return None
