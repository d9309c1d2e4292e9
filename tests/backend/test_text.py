"""Text from models, programs and users stored on real SQLite and PostgreSQL databases: NUL and other control
bytes, lone surrogates, invalid UTF-8 and 10 MB texts never make a write fail."""

from __future__ import annotations

from backend.db import session_scope
from backend.schemas import AttemptIn
from backend.services import jobs as J
from tests.backend.test_jobs import problem_id, queue, submit  # noqa: F401 - fixtures

__all__ = ["problem_id", "queue"]


def test_a_response_with_a_nul_byte_is_recorded(db, queue, problem_id):  # noqa: F811
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
        J.claim_job(s, job_id=job_id, worker_id="w:1", takeover_after_s=60)
    with session_scope(db) as s:
        n = J.record_attempts(s, job_id=job_id, worker_id="w:1", attempts=[AttemptIn(
            round=0, index=0, response="print(1)\x00", code="print(1)\x00", reward=0.0, passed_public=0,
            total_public=1, feedback="Runtime Error\x00", tokens=3)])
    assert n == 1
