"""The unit of data every engine consumes: one question with its verifier."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("code", "mcq", "tooluse")


@dataclass
class Task:
    """One question.

    id: stable identifier (dataset row id, HumanEval task_id, LiveCodeBench question_id).
    messages: the chat prompt shown to the model (optional system message, then the user message).
    kind: "code" | "mcq" | "tooluse"; selects the environment in ``sdpo.envs.score``.
    tests: for code, a ``sdpo.envs.code.TestSpec`` (tests used for reward/feedback in training).
    answer: for mcq the correct letter; for tooluse the ground-truth action list.
    hidden_tests: optional held-out tests (test-time discovery, validation on all tests).
    meta: anything else worth keeping (dataset, difficulty, contest_date, canonical_solution, ...).
    """

    id: str
    messages: list[dict[str, str]]
    kind: str = "code"
    tests: Any = None
    answer: Any = None
    hidden_tests: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
