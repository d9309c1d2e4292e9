"""Service settings: one pydantic ``Settings`` read from ``SDPO_*`` environment variables.

Everything a running service writes lives under ``data_dir`` (default ``var/`` in the working directory):
the SQLite file, the filesystem broker's folders, job folders (checkpoints, adapters), uploaded datasets and
the default tiny model. Defaults need no server: SQLite + Celery's filesystem transport. Production sets
``SDPO_DATABASE_URL=postgresql+psycopg://…`` and ``SDPO_BROKER_URL=redis://…``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def parse_auth(auth: str | None) -> list[tuple[str, str]]:
    """Parse ``"user:pass,user2:pass2"`` into pairs; raise ``ValueError`` naming the bad entry."""
    if not auth:
        return []
    pairs: list[tuple[str, str]] = []
    for i, entry in enumerate(auth.split(",")):
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(
                f"SDPO_AUTH entry {i + 1} ({entry.strip()!r}) is not 'user:password'; "
                "use a comma-separated list like 'alice:secret,bob:hunter2'"
            )
        pairs.append((user, password))
    return pairs


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts local connections (127.0.0.0/8, ::1, localhost)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """All service settings. Each field is ``SDPO_<NAME>`` in the environment (e.g. ``SDPO_DATA_DIR``)."""

    model_config = SettingsConfigDict(env_prefix="SDPO_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Holds the SQLite file, broker folders, jobs, datasets, models.")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///<data_dir>/sdpo.db.")
    broker_url: str = Field("", description="Celery broker; default filesystem:// with folders under data_dir.")
    model: str = Field("", description="Default model path; default <data_dir>/models/tiny (built on first use).")
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)
    auth: str | None = Field(None, description="Optional users 'user:pass,user2:pass2' for the UI login.")
    queue: str = Field("gpu", description="Queue of one-GPU jobs; a job asking for N > 1 GPUs goes to <queue>N.")
    worker_queues: str = Field(
        "", description="Comma-separated queues a worker consumes; default: the queue of its GPU count."
    )
    worker_gpus: int | None = Field(
        None, ge=1, description="GPUs a worker offers; default: the CUDA devices it sees (no limit on a CPU host)."
    )
    heartbeat_interval_s: float = Field(5.0, gt=0, description="How often a running job heart-beats.")
    heartbeat_timeout_s: float = Field(
        120.0, gt=0, description="A running job silent this long has lost its worker: it is resumed elsewhere."
    )
    max_resumes: int = Field(3, ge=0, description="Times a job that lost its worker is resumed before it is failed.")
    visibility_timeout_s: float = Field(
        3600.0, gt=0, description="Redis: seconds before an unacknowledged job message is redelivered "
        "(>= heartbeat_timeout_s)."
    )
    max_statement_chars: int = Field(20_000, gt=0)
    max_tests: int = Field(500, gt=0)
    max_test_chars: int = Field(5_000_000, gt=0, description="Total characters of all test inputs/outputs.")
    max_upload_bytes: int = Field(200 * 1024 * 1024, gt=0)

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, v: str) -> str:
        _check_queue_name("SDPO_QUEUE", v)
        if v[-1].isdigit():
            raise ValueError(f"SDPO_QUEUE={v!r} ends in a digit; N-GPU jobs go to the queue SDPO_QUEUE + N "
                             f"(e.g. {v}2 would be ambiguous), so end it with a letter (e.g. 'gpu')")
        return v

    @field_validator("worker_queues")
    @classmethod
    def _worker_queue_names(cls, v: str) -> str:
        names = [q.strip() for q in v.split(",") if q.strip()]
        for q in names:
            _check_queue_name("SDPO_WORKER_QUEUES", q)
        return ",".join(names)

    @field_validator("auth")
    @classmethod
    def _auth_format(cls, v: str | None) -> str | None:
        parse_auth(v)
        return v or None

    @model_validator(mode="after")
    def _defaults_and_safety(self) -> Settings:
        data_dir = self.data_dir.expanduser().resolve()
        self.data_dir = data_dir
        if not self.database_url:
            self.database_url = f"sqlite:///{data_dir / 'sdpo.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.model:
            self.model = str(data_dir / "models" / "tiny")
        if not is_loopback(self.host) and not self.auth:
            raise ValueError(
                f"refusing to bind SDPO_HOST={self.host!r} without SDPO_AUTH: anyone on the network could "
                "run code on this machine. Set SDPO_AUTH='user:password' or bind SDPO_HOST=127.0.0.1"
            )
        if self.heartbeat_timeout_s < 4 * self.heartbeat_interval_s:
            raise ValueError(
                f"SDPO_HEARTBEAT_TIMEOUT_S={self.heartbeat_timeout_s} must be at least 4x "
                f"SDPO_HEARTBEAT_INTERVAL_S={self.heartbeat_interval_s}, or healthy jobs would be reaped"
            )
        if self.broker_url.startswith(("redis://", "rediss://")) and self.visibility_timeout_s < self.heartbeat_timeout_s:
            raise ValueError(
                f"SDPO_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s:g} is below SDPO_HEARTBEAT_TIMEOUT_S="
                f"{self.heartbeat_timeout_s:g}: Redis would hand a crashed worker's job message to another worker "
                "before the job can be judged abandoned (no heartbeat for SDPO_HEARTBEAT_TIMEOUT_S), and that "
                "worker would have to drop it. Jobs that lose their worker are resumed by the heartbeat reaper, "
                "which re-enqueues them; set SDPO_VISIBILITY_TIMEOUT_S >= SDPO_HEARTBEAT_TIMEOUT_S (default "
                "3600) so redelivery is only a late backstop"
            )
        return self

    # Derived paths -------------------------------------------------------------------------------
    @property
    def broker_dir(self) -> Path:
        """Folder of the filesystem transport (used only when ``broker_url`` is ``filesystem://``)."""
        return self.data_dir / "broker"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def default_model_path(self) -> Path:
        return self.data_dir / "models" / "tiny"

    @property
    def users(self) -> list[tuple[str, str]]:
        return parse_auth(self.auth)

    def job_dir(self, job_id: int) -> Path:
        return self.jobs_dir / str(job_id)

    @property
    def takeover_after_s(self) -> float:
        """A job message for a running job whose heartbeat is older than this is taken over (resumed).

        The same threshold as the reaper's (``heartbeat_timeout_s``): one rule decides that a worker is gone,
        whether a redelivered message or the reaper notices first.
        """
        return self.heartbeat_timeout_s

    def queue_for(self, gpus: int) -> str:
        """The queue of jobs asking for ``gpus`` GPUs: ``queue`` for one, ``queue`` + N for N > 1 (gpu4)."""
        return self.queue if gpus <= 1 else f"{self.queue}{gpus}"

    def consumed_queues(self, gpus: int | None) -> list[str]:
        """The queues a worker offering ``gpus`` GPUs consumes: ``worker_queues`` when set, else the queue of
        its GPU count (``queue`` for one GPU or none, ``queue`` + N for N)."""
        if self.worker_queues:
            return self.worker_queues.split(",")
        return [self.queue_for(gpus or 1)]


def _check_queue_name(variable: str, v: str) -> None:
    if not v or not all(c.isalnum() or c in "-_." for c in v):
        raise ValueError(f"{variable}={v!r}: use letters, digits, '-', '_' or '.'")


def get_settings() -> Settings:
    """Read the settings from the environment now (not cached: tests change the environment)."""
    return Settings()
