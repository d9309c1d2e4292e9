"""What the self-teacher saw and said about a solve job's attempts: written by the worker as each SDPO round is
distilled (``record_teacher_views``), read by the job views (an attempt's full inspection, the rounds table, the
attempts table's teacher column), so a finished job opened from History shows what a running one showed.

Keyword-only, take a ``Session``; the caller commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from backend.models import TERMINAL_STATUSES, Attempt, Job, TeacherView, utcnow
from backend.schemas import RoundSummary, TeacherViewIn
from backend.services import jobs as J

# Why an attempt has no teacher view (``AttemptInspection.teacher_status``).
NO_TEACHER_STRATEGY = "no_teacher_strategy"  # best_of_k / multiturn: nothing is distilled
NO_TEACHER_LOSS = "no_teacher_loss"  # sdpo strategy with the GRPO loss: rewards only
SOLVED_ROUND = "solved_round"  # the round that found the solution is not distilled
NOT_RECORDED = "not_recorded"  # not recorded: the round is still being distilled, or the job stopped before
HAS_VIEW = "view"


def record_teacher_views(session: Session, *, job_id: int, views: Iterable[TeacherViewIn],
                         worker_id: str | None = None) -> int:
    """Store the teacher views of a round; one already stored for the same (job, round, index) is kept.
    Returns how many rows were new. With ``worker_id`` (a worker's writes) nothing is written and ``JobLost``
    is raised unless the job runs under that worker. Texts are stored by the rule of ``backend.text.storable``,
    the per-token view's strings too (a token can be any text a model writes)."""
    J._writable_job(session, job_id, worker_id)
    rows = [dict(v.model_dump(), credit=J._storable_json(v.credit), job_id=job_id, created_at=utcnow())
            for v in views]
    if not rows:
        return 0
    stmt = J._insert(session, TeacherView).values(rows).on_conflict_do_nothing(
        index_elements=["job_id", "round", "index"]).returning(TeacherView.id)
    return len(session.execute(stmt).all())


@dataclass
class TeacherBrief:
    """The attempts table's teacher column: demonstration (attempt number), feedback, distilled."""

    distilled: bool
    demonstration: int | None  # 1-based attempt number of the sibling shown
    feedback: bool

    @property
    def label(self) -> str:
        if not self.distilled:
            return "none (not distilled)"
        parts = ([f"demo #{self.demonstration}"] if self.demonstration is not None else []) + (
            ["feedback"] if self.feedback else [])
        return " + ".join(parts)


def _numbers(session: Session, job_id: int) -> dict[tuple[int, int], int]:
    """(round, index) -> 1-based attempt number in the job's (round, index) order."""
    keys = session.execute(select(Attempt.round, Attempt.index).where(Attempt.job_id == job_id)
                           .order_by(Attempt.round, Attempt.index)).all()
    return {(r, i): n for n, (r, i) in enumerate(keys, 1)}


def teacher_briefs(session: Session, *, job_id: int) -> dict[tuple[int, int], TeacherBrief]:
    """(round, index) -> the attempt's teacher context in brief (light columns only: the table polls it)."""
    numbers = _numbers(session, job_id)
    rows = session.execute(select(TeacherView.round, TeacherView.index, TeacherView.distilled,
                                  TeacherView.demonstration, TeacherView.feedback)
                           .where(TeacherView.job_id == job_id)).all()
    return {(r, i): TeacherBrief(distilled=d, demonstration=None if demo is None else numbers.get((r, demo)),
                                 feedback=fb) for r, i, d, demo, fb in rows}


@dataclass
class AttemptInspection:
    """Everything the attempt detail shows: the attempt, its number, the strategy and loss of its job, its
    round's metrics, and what the teacher saw and said (``teacher_status`` says why there is nothing)."""

    id: int
    job_id: int
    number: int
    round: int
    index: int
    response: str
    code: str | None
    feedback: str | None
    reward: float
    passed_public: int
    total_public: int
    passed_hidden: int | None
    total_hidden: int | None
    tokens: int
    seconds: float
    strategy: str
    loss: str
    finished: bool = False  # the job has ended (nothing more will be recorded)
    round_metrics: dict[str, float] = field(default_factory=dict)
    round_updated: str = ""  # RoundRow.updated of its round
    teacher_status: str = NOT_RECORDED
    distilled: bool = False
    demonstration: int | None = None  # 1-based attempt number of the sibling shown
    teacher_feedback: bool = False
    context: str = ""
    credit: dict[str, Any] | None = None


def attempt_inspection(session: Session, *, attempt_id: int) -> AttemptInspection | None:
    """The attempt with its number, its round's metrics and its teacher view; None for an unknown id."""
    a = session.get(Attempt, attempt_id)
    if a is None:
        return None
    job = session.get(Job, a.job_id)
    config = job.config if job is not None else {}
    finished = job is None or job.status in TERMINAL_STATUSES
    strategy = str(config.get("strategy", ""))
    loss = str(config.get("loss", "sdpo"))
    number = 1 + int(session.scalar(select(func.count(Attempt.id)).where(
        Attempt.job_id == a.job_id,
        or_(Attempt.round < a.round, and_(Attempt.round == a.round, Attempt.index < a.index)))) or 0)
    metrics = {p.name: p.value for p in J.list_metrics(session, job_id=a.job_id) if p.step == a.round}
    out = AttemptInspection(
        id=a.id, job_id=a.job_id, number=number, round=a.round, index=a.index, response=a.response, code=a.code,
        feedback=a.feedback, reward=float(a.reward), passed_public=a.passed_public, total_public=a.total_public,
        passed_hidden=a.passed_hidden, total_hidden=a.total_hidden, tokens=a.tokens, seconds=float(a.seconds),
        strategy=strategy, loss=loss, finished=finished, round_metrics=metrics,
        round_updated=round_update_text(metrics, strategy=strategy, last=_is_last_round(session, a, config),
                                        finished=finished),
    )
    v = session.scalar(select(TeacherView).where(TeacherView.job_id == a.job_id, TeacherView.round == a.round,
                                                 TeacherView.index == a.index))
    if v is not None:
        out.teacher_status, out.distilled, out.teacher_feedback = HAS_VIEW, v.distilled, v.feedback
        out.context, out.credit = v.context, v.credit
        if v.demonstration is not None:
            out.demonstration = _numbers(session, a.job_id).get((a.round, v.demonstration))
    elif strategy in ("best_of_k", "multiturn"):
        out.teacher_status = NO_TEACHER_STRATEGY
    elif loss == "grpo":
        out.teacher_status = NO_TEACHER_LOSS
    elif metrics.get("ttt/discovered") == 1.0:
        out.teacher_status = SOLVED_ROUND
    return out


def _is_last_round(session: Session, a: Attempt, config: dict[str, Any]) -> bool:
    """Whether the attempt's round spent the job's budget (its last attempt is attempt number ``budget``)."""
    budget = config.get("budget")
    if not isinstance(budget, int):
        return False
    upto = session.scalar(select(func.count(Attempt.id)).where(Attempt.job_id == a.job_id, Attempt.round <= a.round))
    return int(upto or 0) >= budget


def round_update_text(metrics: dict[str, float], *, strategy: str, last: bool, finished: bool = False) -> str:
    """Whether the round's update changed the weights, and why not: "yes", "no: solved in this round", "no: no
    teacher signal", "no: budget spent", "no: never (best-of-k)", "no: the job stopped first", ..., or "" while
    the round is not over."""
    if strategy == "best_of_k":
        return "no: best-of-k never updates"
    if strategy == "multiturn":
        return "no: multi-turn never updates"
    if metrics.get("ttt/discovered") == 1.0:
        return "no: solved in this round"
    if "ttt/updated" not in metrics:
        return "no: the job stopped first" if finished else ""
    if metrics["ttt/updated"] == 1.0:
        return "yes"
    if last:
        return "no: budget spent"
    if metrics.get("sdpo/reprompt_sample_fraction", 1.0) == 0.0:
        return "no: no teacher signal"
    return "no: nothing to learn"


@dataclass
class RoundRow:
    """One line of a solve's rounds table: attempts, outcome and what the round's update did."""

    round: int
    attempts: str  # "1-4"
    best: str  # "x/y" public tests
    distilled: float | None  # fraction of the round's attempts with a teacher context
    loss: float | None
    kl: float | None  # teacher-student divergence on the distilled tokens (sdpo/kl_mean)
    updated: str


def round_rows(session: Session, *, job_id: int) -> list[RoundRow]:
    """The rounds of a solve job in order (``jobs.round_summaries``) with their SDPO numbers."""
    job = J.get_job(session, job_id=job_id)
    strategy = str(job.config.get("strategy", ""))
    budget = job.config.get("budget")
    finished = job.status in TERMINAL_STATUSES
    out = []
    for r in J.round_summaries(session, job_id=job_id):
        if not r.attempts:
            continue
        last = isinstance(budget, int) and r.first_attempt + r.attempts - 1 >= budget
        out.append(_round_row(r, strategy, last, finished))
    return out


def _round_row(r: RoundSummary, strategy: str, last: bool, finished: bool) -> RoundRow:
    m = r.metrics
    last_n = r.first_attempt + r.attempts - 1
    return RoundRow(
        round=r.round, attempts=f"{r.first_attempt}" if r.attempts == 1 else f"{r.first_attempt}-{last_n}",
        best="" if r.tests is None else f"{r.best_passed}/{r.tests}",
        distilled=m.get("sdpo/reprompt_sample_fraction"), loss=m.get("sdpo/loss", m.get("loss")),
        kl=m.get("sdpo/kl_mean"), updated=round_update_text(m, strategy=strategy, last=last, finished=finished))
