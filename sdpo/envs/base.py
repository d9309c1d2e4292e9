"""What every environment returns for one response (paper Sec. 2: reward + rich feedback)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Score:
    """Outcome of scoring one response.

    reward: scalar reward (sparse 0/1 for code by default).
    feedback: environment feedback text for the teacher context, or None when there is none.
    passed / total: unit tests passed / run (code) or 1/1, 0/1 for single-answer tasks.
    details: environment-specific extras (JSON-serialisable).
    """

    reward: float
    feedback: str | None
    passed: int = 0
    total: int = 0
    details: dict[str, Any] = field(default_factory=dict)
