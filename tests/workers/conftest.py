"""Real service stacks for the worker tests: (a) SQLite + Celery's filesystem broker and (b) PostgreSQL +
Redis, each with real ``sdpo worker`` processes (solo pool, one job at a time).

Each stack gets its own data dir, database (a fresh PostgreSQL database, dropped afterwards), Redis db 13
with a unique queue name (workers consume the one-GPU and the two-GPU queue), and short heartbeat /
visibility timeouts (6 s) so crash recovery is observable in seconds. Stacks are module-scoped: worker
start-up (~5 s) is paid once per module and backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backend.db import make_engine, make_session_factory, session_scope
from backend.migrate import upgrade
from backend.models import Worker
from backend.queue import JobQueue
from backend.services import jobs as J
from backend.settings import Settings
from tests.backend.pgutil import create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("SDPO_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
HEARTBEAT_S = 0.5


@dataclass
class Stack:
    """One backend (database + broker) with helpers to run workers and watch jobs."""

    name: str
    env: dict[str, str]
    settings: Settings
    sessions: Any
    queue: JobQueue
    logs: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, timeout: float = 90, wait: bool = True, **env: str) -> subprocess.Popen:
        """Start ``sdpo worker`` (with extra environment ``env``) and (``wait``) wait until it registered
        itself in the database (``wait_started``). Its log is ``worker_log(p)``."""
        log = open(self.logs / f"worker-{len(self.workers)}.log", "w")
        p = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--loglevel", "INFO"],
                             cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(p)
        if wait:
            self.wait_started(p, timeout)
        return p

    def wait_started(self, p: subprocess.Popen, timeout: float = 90) -> None:
        self.wait(lambda: self._registered(p.pid) or p.poll() is not None, timeout, "worker start")
        if p.poll() is not None:
            raise RuntimeError(f"worker exited with {p.returncode}:\n{self.log_tail()}")

    def worker_log(self, p: subprocess.Popen) -> str:
        return (self.logs / f"worker-{self.workers.index(p)}.log").read_text(errors="replace")

    def _registered(self, pid: int) -> bool:
        with session_scope(self.sessions) as s:
            return s.scalar(select(Worker.id).where(Worker.pid == pid)) is not None

    def stop_worker(self, p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def live_worker(self) -> subprocess.Popen:
        """A running worker (started if none is)."""
        alive = [p for p in self.workers if p.poll() is None]
        return alive[0] if alive else self.start_worker()

    def log_tail(self, n: int = 60) -> str:
        out = []
        for f in sorted(self.logs.glob("worker-*.log")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(out)

    def wait(self, pred: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"[{self.name}] timed out after {timeout} s waiting for {what}\n{self.log_tail()}")

    def detail(self, job_id: int):
        with session_scope(self.sessions) as s:
            return J.job_detail(s, job_id=job_id)

    def wait_status(self, job_id: int, statuses: tuple[str, ...], timeout: float) -> Any:
        return self.wait(lambda: (d := self.detail(job_id)).status in statuses and d, timeout,
                         f"job {job_id} to reach {statuses}")


def _stack_env(name: str, data_dir: Path, model: Path, database_url: str, broker_url: str, queue: str,
               **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDPO_")}
    env.update({
        "SDPO_DATA_DIR": str(data_dir), "SDPO_DATABASE_URL": database_url, "SDPO_BROKER_URL": broker_url,
        "SDPO_QUEUE": queue, "SDPO_MODEL": str(model), "SDPO_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "SDPO_HEARTBEAT_TIMEOUT_S": "6", "SDPO_VISIBILITY_TIMEOUT_S": "6", "SDPO_WORKER_QUEUES": f"{queue},{queue}2",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def _settings_from(env: dict[str, str]) -> Settings:
    return Settings(
        data_dir=env["SDPO_DATA_DIR"], database_url=env["SDPO_DATABASE_URL"], broker_url=env["SDPO_BROKER_URL"],
        queue=env["SDPO_QUEUE"], model=env["SDPO_MODEL"], heartbeat_interval_s=float(env["SDPO_HEARTBEAT_INTERVAL_S"]),
        heartbeat_timeout_s=float(env["SDPO_HEARTBEAT_TIMEOUT_S"]),
        visibility_timeout_s=float(env["SDPO_VISIBILITY_TIMEOUT_S"]), worker_queues=env["SDPO_WORKER_QUEUES"],
    )


@pytest.fixture(scope="module", params=["sqlite+filesystem", pytest.param("postgres+redis", marks=[
    pytest.mark.postgres, pytest.mark.redis])])
def stack(request, tmp_path_factory, tiny_model_path):
    name = request.param
    root = tmp_path_factory.mktemp(name.replace("+", "_"))
    queue_name = f"gpu-{uuid.uuid4().hex[:10]}-test"
    pg_url = None
    if name == "sqlite+filesystem":
        db_url, broker = f"sqlite:///{root / 'data' / 'sdpo.db'}", "filesystem://"
    else:
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        except redis.exceptions.ConnectionError as e:
            pytest.skip(f"Redis not reachable at {REDIS_URL}: {e}")
        pg_url = create_pg_database()
        db_url, broker = pg_url, REDIS_URL
    # A killed worker's job is re-enqueued by a live worker's reaper 6 s after its last heartbeat (both
    # brokers); Redis also redelivers unacknowledged messages after the 6 s visibility timeout.
    env = _stack_env(name, root / "data", tiny_model_path, db_url, broker, queue_name)
    settings = _settings_from(env)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    logs = root / "logs"
    logs.mkdir()
    st = Stack(name=name, env=env, settings=settings, sessions=make_session_factory(engine),
               queue=JobQueue(settings), logs=logs)
    yield st
    for p in st.workers:
        st.stop_worker(p, signal.SIGKILL if p.poll() is None else signal.SIGTERM)
    try:
        st.queue.purge()
    except Exception:  # noqa: BLE001 - cleanup only
        pass
    engine.dispose()
    if pg_url:
        drop_pg_database(pg_url)


@pytest.fixture
def settings_env(tmp_path, monkeypatch) -> Settings:
    """Settings from a clean environment pointing at a tmp data dir."""
    for key in list(os.environ):
        if key.startswith("SDPO_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SDPO_DATA_DIR", str(tmp_path / "data"))
    return Settings()
