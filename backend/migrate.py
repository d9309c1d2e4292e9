"""Run the Alembic migrations programmatically (``sdpo db upgrade``, the compose ``migrate`` service, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parents[1]


def alembic_config(url: str) -> Config:
    """An Alembic config for the repository's ``migrations/`` pointed at ``url``."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creates the tables on an empty database)."""
    command.upgrade(alembic_config(url), revision)


def current_heads() -> tuple[str, ...]:
    """Revision ids of the migration heads (exactly one in a healthy tree)."""
    return tuple(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())
