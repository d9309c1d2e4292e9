"""App fixtures: a migrated SQLite database and a filesystem broker in a tmp data dir, the engine hooks of
``sdpo serve`` (``workers.cli.engine_hooks``), and an ``AppContext`` over them. Nothing touches ``var/``."""

from __future__ import annotations

import os
import socket

import pytest

from app.context import AppContext
from backend.migrate import upgrade
from backend.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def hooks():
    from workers.cli import engine_hooks

    return engine_hooks()


@pytest.fixture
def app_settings(tmp_path, monkeypatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("SDPO_"):
            monkeypatch.delenv(key)
    settings = Settings(data_dir=tmp_path / "data", queue="gpu-app-test", max_upload_bytes=4096)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def ctx(app_settings, hooks) -> AppContext:
    return AppContext.create(app_settings, hooks)
