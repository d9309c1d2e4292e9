"""SQLAlchemy 2.0 typed models: problems, jobs and what jobs produce (attempts, what the self-teacher said about
them, metrics, checkpoints), datasets, and the workers that run jobs.

Timestamps are stored as naive UTC and returned timezone-aware (``UTCDateTime``) on every backend.
Every text column stores its value through ``backend.text.storable`` (``StorableText``/``StorableString``): text
from models, programs and users (NUL bytes, control characters, lone surrogates, megabytes) is written the same
on SQLite and PostgreSQL, escaped visibly and capped, never refused by the database.
The job status machine (``JOB_TRANSITIONS``) is enforced by ``backend.services.jobs``; a CHECK constraint
keeps the column to the known states.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from backend.text import ERROR_CHARS, FEEDBACK_CHARS, RESPONSE_CHARS, STATEMENT_CHARS, storable

JOB_KINDS = ("solve", "train")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
# queued -> running -> succeeded|failed|cancelled. running -> running is a worker taking over a job whose
# worker died (the job resumes); running -> queued is the reaper re-enqueueing such a job (the worker that
# takes the new message resumes it); queued -> failed is an enqueue failure.
JOB_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "queued": ("running", "cancelled", "failed"),
    "running": ("running", "queued", "succeeded", "failed", "cancelled"),
    "succeeded": (),
    "failed": (),
    "cancelled": (),
}
CHECKPOINT_KINDS = ("lora", "full")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC (backend.models.utcnow())")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class StorableText(TypeDecorator[str]):
    """A text column whose every written value goes through ``backend.text.storable`` (capped at ``limit``
    characters; None: no cap). Comparisons bind through it too, so a filter matches what was stored."""

    impl = Text
    cache_ok = True

    def __init__(self, limit: int | None = None):
        super().__init__()
        self.limit = limit

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else storable(value, limit=self.limit)

    def process_literal_param(self, value: str | None, dialect: Any) -> str | None:
        return self.process_bind_param(value, dialect)


class StorableString(StorableText):
    """``VARCHAR(length)`` through ``backend.text.storable``, capped at ``length`` (PostgreSQL refuses more)."""

    impl = String
    cache_ok = True

    def __init__(self, length: int):
        TypeDecorator.__init__(self, length)
        self.limit = length


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Problem(Base):
    """A programming problem (statement + tests) as submitted; ``data`` is the normalized problem dict."""

    __tablename__ = "problems"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(StorableString(200), default="")
    statement: Mapped[str] = mapped_column(StorableText(STATEMENT_CHARS))
    data: Mapped[dict[str, Any]]
    n_public_tests: Mapped[int] = mapped_column(Integer, default=0)
    n_hidden_tests: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A training dataset on the server: uploaded JSONL or a registered path."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    path: Mapped[str] = mapped_column(StorableText())
    format: Mapped[str] = mapped_column(String(32))
    train_rows: Mapped[int] = mapped_column(Integer, default=0)
    test_rows: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    uploaded: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One solve or train run. ``config`` is the normalized engine config (all fields, defaults filled)."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN {JOB_STATUSES!r}", name="status"),
        CheckConstraint(f"kind IN {JOB_KINDS!r}", name="kind"),
        CheckConstraint("gpus >= 1", name="gpus"),
        Index("ix_jobs_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    config: Mapped[dict[str, Any]]
    problem_id: Mapped[int | None] = mapped_column(ForeignKey("problems.id", ondelete="SET NULL"), index=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    gpus: Mapped[int] = mapped_column(Integer, default=1)
    model: Mapped[str] = mapped_column(StorableString(500), default="")
    label: Mapped[str] = mapped_column(StorableString(200), default="")
    error: Mapped[str | None] = mapped_column(StorableText(ERROR_CHARS))
    result: Mapped[dict[str, Any] | None]
    task_id: Mapped[str | None] = mapped_column(StorableString(64))
    worker_id: Mapped[str | None] = mapped_column(StorableString(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    resumes: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    problem: Mapped[Problem | None] = relationship()
    dataset: Mapped[Dataset | None] = relationship()


class Attempt(Base):
    """One scored response of a job (a test-time attempt or a training rollout). Unique per
    (job, round, index) so a redelivered job can never insert the same attempt twice."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "round", "index", name="uq_attempts_job_round_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    problem_id: Mapped[int | None] = mapped_column(ForeignKey("problems.id", ondelete="SET NULL"))
    task_id: Mapped[str | None] = mapped_column(StorableString(200))
    round: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(StorableText(RESPONSE_CHARS))
    code: Mapped[str | None] = mapped_column(StorableText(RESPONSE_CHARS))
    reward: Mapped[float] = mapped_column(Float)
    passed_public: Mapped[int] = mapped_column(Integer)
    total_public: Mapped[int] = mapped_column(Integer)
    passed_hidden: Mapped[int | None] = mapped_column(Integer)
    total_hidden: Mapped[int | None] = mapped_column(Integer)
    feedback: Mapped[str | None] = mapped_column(StorableText(FEEDBACK_CHARS))
    tokens: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TeacherView(Base):
    """What the self-teacher saw and said about one attempt of an SDPO round, keyed like the attempt
    (job, round, index): whether it was distilled, the sibling shown as the demonstration (its index in the
    round), whether its own feedback was shown, the teacher's re-prompt message, and the per-token view
    (``credit``: the engine's ``TokenCredit`` as JSON; None when not distilled or the view was off)."""

    __tablename__ = "teacher_views"
    __table_args__ = (UniqueConstraint("job_id", "round", "index", name="uq_teacher_views_job_round_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    distilled: Mapped[bool] = mapped_column(Boolean)
    demonstration: Mapped[int | None] = mapped_column(Integer)
    feedback: Mapped[bool] = mapped_column(Boolean)
    context: Mapped[str] = mapped_column(StorableText(RESPONSE_CHARS))
    credit: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricPoint(Base):
    """One scalar of one step (namespaced name, e.g. ``reward/mean``); re-logging a step overwrites."""

    __tablename__ = "metric_points"
    __table_args__ = (UniqueConstraint("job_id", "step", "name", name="uq_metric_points_job_step_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(StorableString(120))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    """A checkpoint folder written by a job (LoRA adapter or full weights)."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("job_id", "step", "kind", name="uq_checkpoints_job_step_kind"),
        CheckConstraint(f"kind IN {CHECKPOINT_KINDS!r}", name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(StorableText())
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A live (or recently live) worker process, as it reports itself; ``info`` holds GPU/versions."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(StorableString(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(StorableString(200))
    pid: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(StorableString(200))
    info: Mapped[dict[str, Any]]
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
