"""Services behind the Gradio app (``app/``): building a problem from the page's form, submitting a solve or
train job in one transaction, and the read models of the job views (attempts table, discovery curve,
metric series, history rows).

Like every service these are keyword-only and take a ``Session``; engine-specific parsing and validation
arrive as callables (``ProblemValidator``, ``ConfigValidator``) so ``backend`` never imports the engines.
Functions without a session are pure helpers over plain data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.errors import InvalidInput
from backend.models import Attempt, Job, MetricPoint
from backend.schemas import ConfigValidator, Enqueue, ProblemValidator
from backend.services import jobs as J
from backend.services.problems import create_problem
from backend.services.workers import gpus_offered
from backend.settings import Settings

TESTTYPES = ("stdin", "functional")
# (LiveCodeBench row) -> problem dict in the engine's format; raises ValueError naming the field.
LcbParser = Callable[[dict[str, Any]], dict[str, Any]]


# ---------------------------------------------------------------------------------------------------------
# Building a problem from the form
# ---------------------------------------------------------------------------------------------------------
def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "hidden", "x", "✓")
    return bool(value)


def problem_from_form(
    *,
    title: str,
    statement: str,
    testtype: str,
    fn_name: str | None,
    rows: Sequence[Sequence[Any]],
    starter_code: str | None = None,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """The problem dict (engine format) of the Solve form.

    ``rows`` are ``(input, expected output, hidden)`` triples; blank rows (input and output empty) are
    skipped. Rows flagged hidden go to ``hidden_tests`` (held out: they decide discovery, never give
    feedback). Raises ``InvalidInput`` naming the field (``statement``, ``tests``, ``tests.row N``,
    ``fn_name``) when the form is incomplete; the engine's parser checks the rest.
    """
    if not isinstance(statement, str) or not statement.strip():
        raise InvalidInput("statement", "is empty; describe the problem to solve")
    if testtype not in TESTTYPES:
        raise InvalidInput("testtype", f"got {testtype!r}; allowed values are {', '.join(TESTTYPES)}")
    fn_name = (fn_name or "").strip() or None
    if testtype == "functional" and not fn_name:
        raise InvalidInput("fn_name", "functional tests call a function; give its name (e.g. 'twoSum')")
    public: tuple[list[str], list[str]] = ([], [])
    hidden: tuple[list[str], list[str]] = ([], [])
    for i, row in enumerate(rows, 1):
        row = list(row) + [None] * (3 - len(row))
        inp, out, flag = row[0], row[1], row[2]
        inp = "" if inp is None else str(inp)
        out = "" if out is None else str(out)
        if not inp.strip() and not out.strip():
            continue
        if not out.strip():
            raise InvalidInput(f"tests.row {i}", "has an input but no expected output")
        if testtype == "functional":
            for name, text in (("input", inp), ("expected", out)):
                for line in text.strip().splitlines():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InvalidInput(
                            f"tests.row {i}",
                            f"{name} line {line!r} is not JSON ({e.msg}); functional tests take one JSON "
                            "value per argument line, e.g. [2, 7, 11] then 9",
                        ) from None
        target = hidden if _truthy(flag) else public
        target[0].append(inp)
        target[1].append(out)
    if not public[0]:
        raise InvalidInput("tests", "no public test; add at least one row (input -> expected) not marked hidden")

    def spec(io: tuple[list[str], list[str]]) -> dict[str, Any]:
        s: dict[str, Any] = {"inputs": io[0], "outputs": io[1], "testtype": testtype, "fn_name": fn_name}
        if time_limit is not None:
            s["time_limit"] = time_limit
        return s

    title = (title or "").strip() or next(
        (line.strip(" #*") for line in statement.splitlines() if line.strip(" #*")), "Untitled")[:80]
    return {
        "title": title,
        "statement": statement,
        "tests": spec(public),
        "hidden_tests": spec(hidden) if hidden[0] else None,
        "starter_code": (starter_code or None) if (starter_code or "").strip() else None,
    }


def problem_from_json(text: str, *, parse_lcb: LcbParser | None = None) -> dict[str, Any]:
    """A problem dict from pasted JSON: the engine's problem format (has ``statement``) or one
    LiveCodeBench row (has ``question_content``; converted by ``parse_lcb``)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("json", "is empty; paste a problem or a LiveCodeBench row as JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput("json", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise InvalidInput("json", f"expected a JSON object, got {type(data).__name__}")
    if "question_content" in data:
        if parse_lcb is None:
            raise InvalidInput("json", "LiveCodeBench rows are not supported by this server")
        try:
            return parse_lcb(data)
        except InvalidInput:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise InvalidInput(getattr(e, "field", None) or "json", str(e)) from None
    return data


def rows_from_problem(data: dict[str, Any]) -> tuple[str, str | None, list[list[Any]]]:
    """(testtype, fn_name, rows) of a stored problem, for showing it back in the tests editor."""
    tests = data.get("tests") or {}
    rows = [[i, o, False] for i, o in zip(tests.get("inputs", []), tests.get("outputs", []), strict=False)]
    hidden = data.get("hidden_tests") or {}
    rows += [[i, o, True] for i, o in zip(hidden.get("inputs", []), hidden.get("outputs", []), strict=False)]
    return tests.get("testtype", "stdin"), tests.get("fn_name"), rows


# ---------------------------------------------------------------------------------------------------------
# Submitting
# ---------------------------------------------------------------------------------------------------------
def submit_solve(
    session: Session,
    *,
    problem: dict[str, Any] | str,
    config: dict[str, Any],
    settings: Settings,
    parse_problem: ProblemValidator,
    validate: ConfigValidator,
    enqueue: Enqueue,
    model: str = "",
) -> Job:
    """Create the problem and submit its solve job in one transaction: when the problem or the config is
    invalid (``InvalidInput``) nothing is stored and nothing is queued (the caller's session rolls back)."""
    p = create_problem(session, data=problem, validate=parse_problem, settings=settings)
    return J.submit_job(session, kind="solve", config=config, validate=validate, enqueue=enqueue,
                        problem_id=p.id, model=model)


def engine_defaults(session: Session, kind: str, *, validate: ConfigValidator, model: str = "",
                    base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine's default config of ``kind`` (every field) for a job on ``model`` ("" = the server's default):
    what a submission that sets nothing would run with, as normalized by the engine's own validator; the
    defaults fit the model and the live workers (CPU-sized for the demo models or without GPUs).

    ``base`` supplies what the engine requires without a default (a train config needs a dataset).
    """
    if base is None:
        base = {"dataset": "humaneval"} if kind == "train" else {}
    return validate(kind, dict(base), model=model, gpu=gpus_offered(session))


# ---------------------------------------------------------------------------------------------------------
# Read models of the job views
# ---------------------------------------------------------------------------------------------------------
@dataclass
class AttemptRow:
    """One line of the live attempts table."""

    id: int
    round: int
    index: int
    number: int  # 1-based attempt number in (round, index) order
    public: str  # "x/y"
    hidden: str  # "x/y" or "-"
    reward: float
    tokens: int
    solved: bool


def attempt_rows(attempts: Sequence[Attempt]) -> list[AttemptRow]:
    """Table rows of attempts given in (round, index) order; ``solved`` = all public and hidden pass."""
    out = []
    for n, a in enumerate(attempts, 1):
        hidden = "-" if a.total_hidden is None else f"{a.passed_hidden}/{a.total_hidden}"
        solved = a.total_public > 0 and a.passed_public == a.total_public and (
            a.total_hidden is None or a.passed_hidden == a.total_hidden)
        out.append(AttemptRow(id=a.id, round=a.round, index=a.index, number=n,
                              public=f"{a.passed_public}/{a.total_public}", hidden=hidden,
                              reward=round(float(a.reward), 4), tokens=a.tokens, solved=solved))
    return out


def discovery_curve(attempts: Sequence[Attempt]) -> list[tuple[int, int, int | None]]:
    """``(attempt number, best public tests passed so far, best hidden passed so far)`` per attempt, in
    (round, index) order: the discovery curve of a solve job."""
    best_pub, best_hid = 0, None
    out = []
    for n, a in enumerate(attempts, 1):
        best_pub = max(best_pub, a.passed_public)
        if a.passed_hidden is not None:
            best_hid = a.passed_hidden if best_hid is None else max(best_hid, a.passed_hidden)
        out.append((n, best_pub, best_hid))
    return out


def get_attempt(session: Session, *, attempt_id: int) -> Attempt | None:
    return session.get(Attempt, attempt_id)


def solution_attempt(session: Session, *, job_id: int) -> Attempt | None:
    """The first attempt of a job that passes all public and hidden tests (the discovery), if any."""
    for a in J.list_attempts(session, job_id=job_id):
        if a.total_public > 0 and a.passed_public == a.total_public and (
                a.total_hidden is None or a.passed_hidden == a.total_hidden) and a.code:
            return a
    return None


def metric_names(session: Session, *, job_ids: Sequence[int]) -> list[str]:
    """Distinct metric names logged by any of ``job_ids`` (for the Compare view's picker)."""
    if not job_ids:
        return []
    return list(session.scalars(select(MetricPoint.name).where(MetricPoint.job_id.in_(list(job_ids)))
                                .distinct().order_by(MetricPoint.name)))


# ---------------------------------------------------------------------------------------------------------
# Time per round and what is left
# ---------------------------------------------------------------------------------------------------------
SOLVE_TIME_METRICS = ("perf/sample_s", "perf/score_s", "perf/token_view_s", "perf/update_s")


@dataclass
class Progress:
    """Measured time per round (a solve's round, a training step) and an estimate for the rest of the job:
    ``remaining`` attempts (solve) or steps (train) at the measured rate, ``remaining_s`` seconds."""

    per_round_s: float
    rounds: int
    remaining: int
    remaining_s: float
    unit: str  # "attempts" | "steps"


def job_progress(session: Session, *, job_id: int, kind: str, config: dict[str, Any]) -> Progress | None:
    """From the job's round metrics (``perf/*`` seconds of sampling, scoring, the teacher view and updating;
    ``ttt/attempts`` per round; ``perf/step_s`` per training step): None before the first round is measured."""
    if kind == "solve":
        rows = J.list_metrics(session, job_id=job_id, names=[*SOLVE_TIME_METRICS, "ttt/attempts"])
        seconds: dict[int, float] = {}
        attempts: dict[int, float] = {}
        for p in rows:
            if p.name == "ttt/attempts":
                attempts[p.step] = p.value
            else:
                seconds[p.step] = seconds.get(p.step, 0.0) + p.value
        done = [r for r in seconds if attempts.get(r)]
        budget = config.get("budget")
        if not done or not isinstance(budget, int):
            return None
        spent, used = sum(seconds[r] for r in done), sum(attempts[r] for r in done)
        left = max(0, budget - J.count_attempts(session, job_id=job_id))
        return Progress(per_round_s=spent / len(done), rounds=len(done), remaining=left,
                        remaining_s=spent / used * left, unit="attempts")
    rows = J.list_metrics(session, job_id=job_id, names=["perf/step_s"])
    steps = config.get("max_steps")
    if not rows or not isinstance(steps, int):
        return None
    per = sum(p.value for p in rows) / len(rows)
    left = max(0, steps - max(p.step for p in rows))
    return Progress(per_round_s=per, rounds=len(rows), remaining=left, remaining_s=per * left, unit="steps")
