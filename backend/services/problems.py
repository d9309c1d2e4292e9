"""Problem services: create (format validated by the caller's parser, sizes by the settings), get, list."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.errors import InvalidInput, NotFound
from backend.models import Problem
from backend.schemas import ParsedProblem, ProblemValidator
from backend.settings import Settings
from backend.text import valid_text


def create_problem(session: Session, *, data: Any, validate: ProblemValidator, settings: Settings) -> Problem:
    """Validate and store a problem.

    ``data`` is the problem as a dict (or a JSON string of one). ``validate`` parses it with the engine's
    problem format (``workers.engine.parse_problem``) and returns the normalized form; the sizes are then
    checked against ``settings`` (statement length, number of tests, total test size). Raises
    ``InvalidInput`` naming the field; nothing is stored then. Lone surrogates in its strings are replaced by
    U+FFFD; the stored statement and title follow ``backend.text.storable`` (control characters escaped).
    """
    if isinstance(data, str | bytes):
        raw_size = len(data)
        if raw_size > settings.max_statement_chars + settings.max_test_chars:
            raise InvalidInput("problem", f"{raw_size} characters; at most "
                               f"{settings.max_statement_chars + settings.max_test_chars} are accepted")
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise InvalidInput("problem", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise InvalidInput("problem", f"expected a JSON object, got {type(data).__name__}")
    data = valid_text(data)  # a lone surrogate ("\\ud800" in the JSON) is no text a model or program can read
    raw_size = len(json.dumps(data))
    if raw_size > settings.max_statement_chars + settings.max_test_chars:
        raise InvalidInput("problem", f"{raw_size} characters; at most "
                           f"{settings.max_statement_chars + settings.max_test_chars} are accepted")
    try:
        parsed = validate(data)
    except InvalidInput:
        raise
    except (ValueError, TypeError, KeyError) as e:
        field = getattr(e, "field", None) or "problem"
        message = str(e).strip("'\"")
        if message.startswith(f"{field}: "):
            message = message[len(field) + 2:]
        raise InvalidInput(field, message) from None
    if not isinstance(parsed, ParsedProblem):
        parsed = ParsedProblem.model_validate(parsed)
    check_problem_limits(parsed, settings=settings)
    problem = Problem(title=(parsed.title or _title(parsed.statement))[:200], statement=parsed.statement,
                      data=parsed.data, n_public_tests=parsed.n_public_tests,
                      n_hidden_tests=parsed.n_hidden_tests)
    session.add(problem)
    session.flush()
    return problem


def check_problem_limits(parsed: ParsedProblem, *, settings: Settings) -> None:
    """Raise ``InvalidInput`` when the statement, the number of tests or their total size is too large."""
    if not parsed.statement.strip():
        raise InvalidInput("statement", "is empty; describe the problem to solve")
    if len(parsed.statement) > settings.max_statement_chars:
        raise InvalidInput("statement", f"{len(parsed.statement)} characters; at most "
                           f"{settings.max_statement_chars} are accepted (SDPO_MAX_STATEMENT_CHARS)")
    n_tests = parsed.n_public_tests + parsed.n_hidden_tests
    if parsed.n_public_tests == 0:
        raise InvalidInput("tests", "no public test; at least one is needed to score attempts")
    if n_tests > settings.max_tests:
        raise InvalidInput("tests", f"{n_tests} tests; at most {settings.max_tests} are accepted "
                           "(SDPO_MAX_TESTS)")
    test_chars = len(json.dumps(parsed.data)) - len(parsed.statement)
    if test_chars > settings.max_test_chars:
        raise InvalidInput("tests", f"{test_chars} characters of test data; at most {settings.max_test_chars} "
                           "are accepted (SDPO_MAX_TEST_CHARS)")


def _title(statement: str) -> str:
    first = next((line.strip(" #*") for line in statement.splitlines() if line.strip()), "")
    return first[:80]


def get_problem(session: Session, *, problem_id: int) -> Problem:
    problem = session.get(Problem, problem_id)
    if problem is None:
        raise NotFound("problem", problem_id)
    return problem


def list_problems(session: Session, *, limit: int = 100, offset: int = 0) -> list[Problem]:
    return list(session.scalars(select(Problem).order_by(Problem.id.desc()).limit(limit).offset(offset)))
