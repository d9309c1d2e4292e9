"""Database fixtures on real servers: a migrated SQLite file in a tmp dir and a fresh PostgreSQL database
(created on 127.0.0.1:5432 from the ``test`` database, dropped afterwards). Tests never touch ``var/``."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from backend.db import make_engine, make_session_factory, session_scope
from backend.migrate import upgrade
from backend.models import Base
from backend.queue import JobQueue
from backend.services.problems import create_problem
from backend.settings import Settings
from tests.backend.jobutil import PROBLEM, parse
from tests.backend.pgutil import create_pg_database, drop_pg_database


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("SDPO_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SDPO_DATA_DIR", str(tmp_path / "data"))
    return Settings()


@pytest.fixture(scope="module")
def pg_url():
    """A migrated PostgreSQL database for the module (created now, dropped afterwards)."""
    url = create_pg_database()
    upgrade(url)
    yield url
    drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    """A migrated, empty database (both backends) as a session factory. SQLite: a new file per test;
    PostgreSQL: the module's database with every table truncated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    if request.param == "postgres":
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def queue(settings):
    q = JobQueue(settings)
    yield q


@pytest.fixture
def problem_id(db, settings):
    with session_scope(db) as s:
        return create_problem(s, data=PROBLEM, validate=parse, settings=settings).id
