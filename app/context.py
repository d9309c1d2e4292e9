"""What every view needs: the settings, a session factory, the job queue and the engine hooks.

The engine hooks are the parsing/validation callables of the engines (``backend.schemas.ConfigValidator``
and ``ProblemValidator``). ``app`` imports only ``backend``; the process that starts the app (``sdpo serve``
in ``workers.cli``, or a test) passes hooks bound to the engines, so a job is accepted by the page exactly
when the engine would accept it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from backend.db import session_factory_from_settings, session_scope
from backend.queue import JobQueue
from backend.schemas import ConfigValidator, ProblemValidator
from backend.services.ui import LcbParser, engine_defaults
from backend.settings import Settings


@dataclass(frozen=True)
class EngineHooks:
    """Engine callables the app validates with (bound to ``sdpo`` by ``workers``)."""

    validate_config: ConfigValidator
    parse_problem: ProblemValidator
    parse_lcb: LcbParser | None = None


@dataclass
class AppContext:
    """Settings, database sessions, queue client and engine hooks shared by the views."""

    settings: Settings
    sessions: sessionmaker[Session]
    queue: JobQueue
    hooks: EngineHooks

    @classmethod
    def create(cls, settings: Settings, hooks: EngineHooks) -> AppContext:
        return cls(settings=settings, sessions=session_factory_from_settings(settings), queue=JobQueue(settings),
                   hooks=hooks)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work (commit on success, roll back on error)."""
        with session_scope(self.sessions) as s:
            yield s

    def defaults(self, kind: str, model: str = "") -> tuple[dict[str, Any], str | None]:
        """(engine default config of ``kind`` for ``model``, "" = the server's default; None) or ({}, the reason
        they are unavailable, e.g. no checkpoint at ``model``)."""
        try:
            with self.session() as s:
                return engine_defaults(s, kind, validate=self.hooks.validate_config, model=(model or "").strip()), None
        except Exception as e:  # noqa: BLE001 - shown in the page; the form still works without defaults
            return {}, str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
