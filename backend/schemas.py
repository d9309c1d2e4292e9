"""Plain data passed in and out of the services (pydantic, built from the ORM rows with ``from_attributes``).

The UI and the CLI render these; they never hold ORM objects beyond a session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ParsedProblem(BaseModel):
    """What a problem validator returns: the normalized problem and the counts the service checks."""

    title: str = ""
    statement: str
    n_public_tests: int = Field(ge=0)
    n_hidden_tests: int = Field(ge=0)
    data: dict[str, Any]


# (problem dict) -> ParsedProblem; raises ValueError (with ``.field`` when it can) on a malformed problem.
ProblemValidator = Callable[[dict[str, Any]], ParsedProblem]


@dataclass(frozen=True)
class RawConfig:
    """A job config as typed in a form. ``backend`` and ``app`` never read values themselves: the engine's one
    settings parser does, when the config is validated (``sdpo.config.compose_config``, reached through the
    ``ConfigValidator``), so ``1e-5`` means the same in a form, on a command line and in a config file.

    Later pieces win: ``values`` (settings typed already: a choice, a stored config), ``fields`` (``(dotted key,
    text)`` of single-value boxes; empty text keeps the default), ``text`` (a YAML mapping typed in an editor,
    named ``text_field`` in errors), ``fixed`` (set by the page itself, e.g. the dataset it chose)."""

    values: dict[str, Any] = field(default_factory=dict)
    fields: tuple[tuple[str, str], ...] = ()
    text: str = ""
    text_field: str = "extra settings"
    fixed: dict[str, Any] = field(default_factory=dict)


# (kind, config, *, model, gpu) -> the normalized engine config (every field, defaults filled); raises
# ValueError with ``.field`` (e.g. ``sdpo.config.ConfigError``) when invalid. ``config`` is a mapping or a
# ``RawConfig``; ``model`` the model the job will use ("" = the server's default; checked to exist);
# ``gpu`` whether the machines that will run it offer GPUs (None = not known): the defaults fit both.
ConfigValidator = Callable[..., dict[str, Any]]
# (kind, job_id, task_id, gpus) -> None; sends the job task to the broker, to the queue of ``gpus``-GPU jobs
# (``backend.queue.JobQueue.enqueue``).
Enqueue = Callable[[str, int, str, int], None]


class AttemptIn(BaseModel):
    """One attempt as reported by an engine (public = the tests used for feedback/reward)."""

    round: int = Field(ge=0)
    index: int = Field(ge=0)
    response: str
    code: str | None = None
    reward: float
    passed_public: int = Field(ge=0)
    total_public: int = Field(ge=0)
    passed_hidden: int | None = None
    total_hidden: int | None = None
    feedback: str | None = None
    tokens: int = Field(0, ge=0)
    seconds: float = Field(0.0, ge=0)
    task_id: str | None = None


class TeacherViewIn(BaseModel):
    """What the self-teacher saw and said about one attempt of an SDPO round, as reported by the engine
    (``round``/``index`` as the attempt's; ``demonstration``: index in the round of the sibling shown)."""

    round: int = Field(ge=0)
    index: int = Field(ge=0)
    distilled: bool
    demonstration: int | None = Field(None, ge=0)
    feedback: bool = False
    context: str = ""
    credit: dict[str, Any] | None = None


class ProblemOut(_Out):
    id: int
    title: str
    statement: str
    data: dict[str, Any]
    n_public_tests: int
    n_hidden_tests: int
    created_at: datetime


class AttemptOut(_Out):
    id: int
    job_id: int
    round: int
    index: int
    response: str
    code: str | None
    reward: float
    passed_public: int
    total_public: int
    passed_hidden: int | None
    total_hidden: int | None
    feedback: str | None
    tokens: int
    seconds: float
    task_id: str | None
    created_at: datetime


class MetricOut(_Out):
    step: int
    name: str
    value: float


class CheckpointOut(_Out):
    id: int
    step: int
    kind: str
    path: str
    bytes: int
    created_at: datetime


class JobSummary(_Out):
    id: int
    kind: str
    status: str
    model: str
    label: str
    problem_id: int | None
    dataset_id: int | None
    gpus: int
    error: str | None
    worker_id: str | None
    cancel_requested: bool
    resumes: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (or to now while running); None before it starts."""
        if self.started_at is None:
            return None
        from backend.models import utcnow

        return ((self.finished_at or utcnow()) - self.started_at).total_seconds()


class JobDetail(JobSummary):
    config: dict[str, Any]
    result: dict[str, Any] | None
    task_id: str | None
    n_attempts: int = 0
    best_passed_public: int | None = None
    last_metrics: dict[str, float] = Field(default_factory=dict)
    last_step: int | None = None
    checkpoints: list[CheckpointOut] = Field(default_factory=list)


class RoundSummary(BaseModel):
    """One round of a solve (one step of a training run): its attempts and every metric logged for it."""

    round: int
    attempts: int = 0
    first_attempt: int | None = None  # 1-based number of the round's first attempt in the job (solve)
    reward_mean: float | None = None
    best_passed: int | None = None
    tests: int | None = None
    solved: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)


class DatasetOut(_Out):
    id: int
    name: str
    path: str
    format: str
    train_rows: int
    test_rows: int
    bytes: int
    uploaded: bool
    created_at: datetime


class WorkerOut(_Out):
    id: str
    hostname: str
    pid: int
    queue: str
    info: dict[str, Any]
    current_job_id: int | None
    started_at: datetime
    last_seen: datetime
    alive: bool = False


class Health(BaseModel):
    """System health: each part ``ok`` or an error string."""

    database: str
    broker: str
    queue: str
    queue_length: int | None
    workers: list[WorkerOut]
    jobs_by_status: dict[str, int]
    versions: dict[str, str]
    data_dir: str
    model: str
