"""Teacher views on real SQLite and PostgreSQL databases: stored once per attempt by the job's worker (text
PostgreSQL would refuse included), read back as each attempt's inspection and the rounds table, deleted with
the job."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from backend.db import session_scope
from backend.errors import JobLost
from backend.models import TeacherView
from backend.schemas import AttemptIn, ParsedProblem, TeacherViewIn
from backend.services import jobs as J
from backend.services import teacher as T
from backend.services.problems import create_problem

PROBLEM = {"statement": "Print twice the input.", "tests": [{"input": "2\n", "output": "4\n"}]}
CREDIT = {"tokens": ["print", "(\x00", ")"], "student_logprobs": [-1.0, -2.0, -0.5],
          "teacher_logprobs": [-1.5, -0.5, -0.5], "disagreements": [], "total_tokens": 3, "temperature": 1.0,
          "mean_delta": 0.1667}


def parse(data: dict) -> ParsedProblem:
    return ParsedProblem(statement=data["statement"], data=data, n_public_tests=1, n_hidden_tests=0)


def running_job(db, settings, config: dict) -> int:
    with session_scope(db) as s:
        pid = create_problem(s, data=PROBLEM, validate=parse, settings=settings).id
        job = J.submit_job(s, kind="solve", config=config, validate=lambda kind, c, **_: c,
                           enqueue=lambda *a: None, problem_id=pid)
    with session_scope(db) as s:
        J.claim_job(s, job_id=job.id, worker_id="w1", takeover_after_s=60)
    return job.id


def attempts(rnd: int, n: int, passed: list[int]) -> list[AttemptIn]:
    return [AttemptIn(round=rnd, index=i, response=f"r{rnd}.{i}", reward=float(passed[i]), passed_public=passed[i],
                      total_public=1, feedback=None if passed[i] else "wrong answer", tokens=3)
            for i in range(n)]


def test_views_are_stored_once_read_back_numbered_and_deleted_with_the_job(db, settings):
    job_id = running_job(db, settings, {"strategy": "sdpo", "loss": "sdpo", "budget": 6})
    with session_scope(db) as s:
        J.record_attempts(s, job_id=job_id, attempts=attempts(0, 3, [0, 1, 0]), worker_id="w1")
        views = [TeacherViewIn(round=0, index=0, distilled=True, demonstration=1, feedback=False,
                               context="Correct solution:\n\nr0.1 \x00", credit=CREDIT),
                 TeacherViewIn(round=0, index=1, distilled=False, context=""),
                 TeacherViewIn(round=0, index=2, distilled=True, demonstration=1, context="x", credit=None)]
        assert T.record_teacher_views(s, job_id=job_id, views=views, worker_id="w1") == 3
        assert T.record_teacher_views(s, job_id=job_id, views=views[:1], worker_id="w1") == 0  # kept, not doubled
        with pytest.raises(JobLost):
            T.record_teacher_views(s, job_id=job_id, views=views, worker_id="someone-else")
        J.append_metrics(s, job_id=job_id, step=0, metrics={
            "ttt/updated": 1.0, "sdpo/reprompt_sample_fraction": 2 / 3, "sdpo/loss": 0.25, "sdpo/kl_mean": 0.125,
            "ttt/discovered": 0.0}, worker_id="w1")
        J.record_attempts(s, job_id=job_id, attempts=attempts(1, 3, [0, 0, 0]), worker_id="w1")
        J.append_metrics(s, job_id=job_id, step=1, metrics={"ttt/updated": 0.0, "ttt/discovered": 0.0,
                                                            "sdpo/reprompt_sample_fraction": 1.0}, worker_id="w1")
    with session_scope(db) as s:
        ids = [a.id for a in J.list_attempts(s, job_id=job_id)]
        first = T.attempt_inspection(s, attempt_id=ids[0])
        assert (first.number, first.teacher_status, first.distilled, first.demonstration) == (1, T.HAS_VIEW, True, 2)
        # stored as every text is (backend.text.storable): the NUL escaped visibly, here and in the tokens
        assert first.context == "Correct solution:\n\nr0.1 \\x00"
        assert first.credit == {**CREDIT, "tokens": ["print", "(\\x00", ")"]}
        assert first.round_metrics["sdpo/kl_mean"] == 0.125 and first.round_updated == "yes"
        assert T.attempt_inspection(s, attempt_id=ids[1]).distilled is False
        later = T.attempt_inspection(s, attempt_id=ids[4])
        assert (later.number, later.teacher_status, later.round_updated) == (5, T.NOT_RECORDED, "no: budget spent")
        assert T.attempt_inspection(s, attempt_id=10**9) is None
        briefs = T.teacher_briefs(s, job_id=job_id)
        assert [briefs[(0, i)].label for i in range(3)] == ["demo #2", "none (not distilled)", "demo #2"]
        rows = T.round_rows(s, job_id=job_id)
        assert [(r.round, r.attempts, r.best, r.loss, r.kl, r.updated) for r in rows] == [
            (0, "1-3", "1/1", 0.25, 0.125, "yes"), (1, "4-6", "0/1", None, None, "no: budget spent")]
        J.finish_job(s, job_id=job_id, worker_id="w1", status="succeeded")
    with session_scope(db) as s:
        J.delete_job(s, job_id=job_id, jobs_dir=settings.jobs_dir)
    with session_scope(db) as s:
        assert s.scalar(select(func.count(TeacherView.id))) == 0


@pytest.mark.parametrize("config, status, updated", [
    ({"strategy": "best_of_k", "budget": 4}, T.NO_TEACHER_STRATEGY, "no: best-of-k never updates"),
    ({"strategy": "multiturn", "budget": 4}, T.NO_TEACHER_STRATEGY, "no: multi-turn never updates"),
    ({"strategy": "sdpo", "loss": "grpo", "budget": 4}, T.NO_TEACHER_LOSS, "no: no teacher signal"),
])
def test_without_a_teacher_the_inspection_says_why(db, settings, config, status, updated):
    job_id = running_job(db, settings, config)
    with session_scope(db) as s:
        J.record_attempts(s, job_id=job_id, attempts=attempts(0, 1, [0]), worker_id="w1")
        J.append_metrics(s, job_id=job_id, step=0, metrics={"ttt/updated": 0.0, "ttt/discovered": 0.0,
                                                            "sdpo/reprompt_sample_fraction": 0.0}, worker_id="w1")
        a = T.attempt_inspection(s, attempt_id=J.list_attempts(s, job_id=job_id)[0].id)
        assert (a.teacher_status, a.round_updated) == (status, updated)


def test_the_round_that_solved_is_not_distilled(db, settings):
    job_id = running_job(db, settings, {"strategy": "sdpo", "budget": 8})
    with session_scope(db) as s:
        J.record_attempts(s, job_id=job_id, attempts=attempts(0, 2, [0, 1]), worker_id="w1")
        J.append_metrics(s, job_id=job_id, step=0, metrics={"ttt/discovered": 1.0}, worker_id="w1")
        a = T.attempt_inspection(s, attempt_id=J.list_attempts(s, job_id=job_id)[0].id)
        assert (a.teacher_status, a.round_updated) == (T.SOLVED_ROUND, "no: solved in this round")


def test_a_round_the_job_stopped_in_says_so_once_the_job_has_ended(db, settings):
    job_id = running_job(db, settings, {"strategy": "sdpo", "budget": 8})
    with session_scope(db) as s:
        J.record_attempts(s, job_id=job_id, attempts=attempts(0, 2, [0, 0]), worker_id="w1")
        assert [r.updated for r in T.round_rows(s, job_id=job_id)] == [""]  # still being distilled
        a = T.attempt_inspection(s, attempt_id=J.list_attempts(s, job_id=job_id)[0].id)
        assert (a.teacher_status, a.finished) == (T.NOT_RECORDED, False)
        J.cancel_job(s, job_id=job_id)
        J.finish_job(s, job_id=job_id, worker_id="w1", status="cancelled")
    with session_scope(db) as s:
        assert [r.updated for r in T.round_rows(s, job_id=job_id)] == ["no: the job stopped first"]
        a = T.attempt_inspection(s, attempt_id=J.list_attempts(s, job_id=job_id)[0].id)
        assert (a.teacher_status, a.finished, a.round_updated) == (T.NOT_RECORDED, True, "no: the job stopped first")
