"""Alembic: upgrade head on empty SQLite and PostgreSQL databases; autogenerate finds no difference."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backend.db import make_engine
from backend.migrate import current_heads, upgrade
from backend.models import Base
from tests.backend.pgutil import create_pg_database, drop_pg_database

TABLES = {"problems", "datasets", "jobs", "attempts", "teacher_views", "metric_points", "checkpoints", "workers",
          "alembic_version"}


def _check_upgraded(url: str) -> None:
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert ctx.get_current_revision() == current_heads()[0]
            diff = compare_metadata(ctx, Base.metadata)
            assert diff == [], f"models and migrations differ: {diff}"
        upgrade(url)  # idempotent: a second upgrade is a no-op
    finally:
        engine.dispose()


def test_single_head():
    assert len(current_heads()) == 1


def test_upgrade_head_on_empty_sqlite(tmp_path):
    _check_upgraded(f"sqlite:///{tmp_path / 'empty.db'}")


@pytest.mark.postgres
def test_upgrade_head_on_empty_postgres():
    url = create_pg_database()
    try:
        _check_upgraded(url)
    finally:
        drop_pg_database(url)


def test_compare_detects_a_drift(tmp_path):
    """The no-diff assertion above can fail: a model column missing from the database is reported."""
    from sqlalchemy import Column, Integer, MetaData, Table

    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    meta = MetaData()
    for t in Base.metadata.tables.values():
        t.to_metadata(meta)
    Table("jobs", meta, Column("extra_column", Integer), extend_existing=True)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), meta)
    engine.dispose()
    assert any(d[0] == "add_column" and d[3].name == "extra_column" for d in diff)
