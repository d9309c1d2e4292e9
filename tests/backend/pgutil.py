"""Fresh PostgreSQL databases for tests (127.0.0.1:5432, created from the ``test`` database)."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("SDPO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def create_pg_database() -> str:
    """Create an empty database and return its SQLAlchemy URL (skip the test if PostgreSQL is down)."""
    import psycopg

    admin = make_url(PG_ADMIN_URL)
    name = f"sdpo_t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False),
                             autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL not reachable at {admin.host}:{admin.port}: {e}")
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    import psycopg

    admin = make_url(PG_ADMIN_URL)
    name = make_url(url).database
    with psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
