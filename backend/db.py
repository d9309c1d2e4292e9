"""Database engine and sessions.

SQLite (the default) is opened in WAL mode with a busy timeout and foreign keys on, so the UI, the CLI and a
worker process can write concurrently; PostgreSQL needs nothing special. Services take a ``Session``; the
caller owns the transaction (``with session_scope(factory) as s: ...`` commits or rolls back).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import CursorResult, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import UpdateBase

from backend.settings import Settings


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine for ``url``; for SQLite create the parent folder and set WAL/busy-timeout/FKs."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            # Let SQLAlchemy issue BEGIN itself so BEGIN IMMEDIATE below works.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn) -> None:  # pragma: no cover - trivial
            # Take the write lock at BEGIN: avoids SQLITE_BUSY deadlocks on read-then-write upgrades.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def session_factory_from_settings(settings: Settings) -> sessionmaker[Session]:
    return make_session_factory(make_engine(settings.database_url))


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def changed_rows(session: Session, statement: UpdateBase) -> int:
    """Execute an UPDATE or DELETE; how many rows it changed (a conditional move of a job row tells whether
    it won)."""
    result = session.execute(statement)
    assert isinstance(result, CursorResult)
    return result.rowcount
