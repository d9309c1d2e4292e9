"""Text from models, programs and users stored on real SQLite and PostgreSQL databases: NUL and other control
bytes, lone surrogates, invalid UTF-8 and 10 MB texts never make a write fail; they are stored escaped,
replaced and capped by one rule (``backend.text.storable``), and the raw response is kept in a file."""

from __future__ import annotations

import json

import pytest

from backend.db import session_scope
from backend.errors import InvalidInput
from backend.schemas import AttemptIn
from backend.services import jobs as J
from backend.services import lifecycle as L
from backend.services import progress as P
from backend.services.datasets import upload_dataset
from backend.services.problems import create_problem
from backend.text import ERROR_CHARS, FEEDBACK_CHARS, RESPONSE_CHARS, database_error_reason, storable
from tests.backend.jobutil import parse, submit

MB10 = 10 * 1024 * 1024
# what a byte-level model or a program can produce: NUL, a terminal escape, BEL, DEL, a C1 control, invalid
# UTF-8 decoded with surrogateescape (lone low surrogates) and a lone high surrogate
HOSTILE = "ok\x00then\x1b[2J\x07\x7f\x85" + b"\xff\xfe".decode("utf-8", "surrogateescape") + "\ud800 end\t\n"
HOSTILE_STORED = "ok\\x00then\\x1b[2J\\x07\\x7f\\u0085\ufffd\ufffd\ufffd end\t\n"


# ------------------------------------------------------------------------------------------- the rule
def test_storable_escapes_replaces_and_keeps_the_rest():
    assert storable(HOSTILE) == HOSTILE_STORED
    assert storable(b"a\xffb\x00") == "a\ufffdb\\x00"  # invalid UTF-8 bytes
    clean = "naïve 😀 — tab\there\r\nline"
    assert storable(clean) == clean


def test_storable_caps_with_a_marker_saying_how_much_was_cut():
    text = "x" * 1000
    out = storable(text, limit=100)
    assert len(out) <= 100 and out.startswith("x" * 50)
    kept = out.index("\n[")
    assert out.endswith(f"[... {1000 - kept} more characters cut]")
    assert storable(text, limit=1000) == text


@pytest.mark.parametrize("text", [HOSTILE, "x" * 500, HOSTILE * 40, "\\x00 already escaped"])
def test_storable_is_idempotent(text):
    once = storable(text, limit=300)
    assert storable(once, limit=300) == once


# ------------------------------------------------------------------------------- on both databases
def _claimed_job(db, queue, problem_id) -> int:  # noqa: F811
    with session_scope(db) as s:
        job_id = submit(s, queue, problem_id).id
        L.claim_job(s, job_id=job_id, worker_id="w:1", takeover_after_s=60)
    return job_id


def test_a_response_with_a_nul_byte_is_recorded(db, queue, problem_id):  # noqa: F811
    job_id = _claimed_job(db, queue, problem_id)
    with session_scope(db) as s:
        n = P.record_attempts(s, job_id=job_id, worker_id="w:1", attempts=[AttemptIn(
            round=0, index=0, response="print(1)\x00", code="print(1)\x00", reward=0.0, passed_public=0,
            total_public=1, feedback="Runtime Error\x00", tokens=3)])
    assert n == 1
    with session_scope(db) as s:
        (a,) = P.list_attempts(s, job_id=job_id)
        assert (a.response, a.code, a.feedback) == ("print(1)\\x00", "print(1)\\x00", "Runtime Error\\x00")


def test_hostile_and_huge_attempt_texts_are_stored_and_the_raw_response_kept(db, queue, problem_id, tmp_path):  # noqa: F811
    job_id = _claimed_job(db, queue, problem_id)
    jobs_dir = tmp_path / "jobs"
    huge = ("A\x00" * (MB10 // 2))  # 10 MB with a NUL every other character
    attempts = [
        AttemptIn(round=0, index=0, response=HOSTILE, code=HOSTILE, reward=0.0, passed_public=0, total_public=1,
                  feedback="stdout: " + HOSTILE, tokens=9, task_id="t\x00" * 150),
        AttemptIn(round=0, index=1, response=huge, code=huge, reward=0.0, passed_public=0, total_public=1,
                  feedback=huge, tokens=9),
        AttemptIn(round=0, index=2, response="clean response", code="print(1)", reward=1.0, passed_public=1,
                  total_public=1, feedback=None, tokens=2),
    ]
    with session_scope(db) as s:
        assert P.record_attempts(s, job_id=job_id, worker_id="w:1", attempts=attempts, jobs_dir=jobs_dir) == 3
    with session_scope(db) as s:
        a0, a1, a2 = P.list_attempts(s, job_id=job_id)
        assert (a0.response, a0.code, a0.feedback) == (HOSTILE_STORED, HOSTILE_STORED, "stdout: " + HOSTILE_STORED)
        assert a0.task_id == storable("t\x00" * 150, limit=200) and a0.task_id.endswith("more characters cut]")
        assert len(a1.response) <= RESPONSE_CHARS and len(a1.feedback) <= FEEDBACK_CHARS
        assert a1.response.startswith("A\\x00A\\x00") and a1.response.endswith(" more characters cut]")
        cut = int(a1.response.rsplit("[... ", 1)[1].split()[0])
        assert cut == (MB10 // 2) * 5 - a1.response.index("\n[... ")  # each "A\x00" is stored as 5 characters
        assert (a2.response, a2.code, a2.feedback) == ("clean response", "print(1)", None)
        lines = [json.loads(x) for x in P.iter_attempt_lines(s, job_id=job_id, jobs_dir=jobs_dir)]
    # the raw responses of the altered attempts, byte for byte (lone surrogates too); none for the clean one
    raw = [P.raw_response_path(jobs_dir=jobs_dir, job_id=job_id, round=0, index=i) for i in range(3)]
    assert raw[0].read_bytes() == HOSTILE.encode("utf-8", "surrogatepass")
    assert raw[1].read_bytes() == huge.encode()
    assert not raw[2].exists()
    # the same text in attempts.jsonl / `sdpo jobs attempts` as in the database
    assert [(x["response"], x["feedback"], x["raw_response"]) for x in lines] == [
        (HOSTILE_STORED, "stdout: " + HOSTILE_STORED, str(raw[0])), (a1.response, a1.feedback, str(raw[1])),
        ("clean response", None, None)]


def test_a_job_error_and_result_with_hostile_text_are_stored(db, queue, problem_id):  # noqa: F811
    job_id = _claimed_job(db, queue, problem_id)
    with session_scope(db) as s:
        assert L.finish_job(s, job_id=job_id, worker_id="w:1", status="failed", error="boom " + HOSTILE + "x" * MB10,
                            result={"solution": HOSTILE, "nested": [HOSTILE]})
    with session_scope(db) as s:
        d = J.job_detail(s, job_id=job_id)
        assert d.status == "failed" and d.error.startswith("boom " + HOSTILE_STORED) and len(d.error) <= ERROR_CHARS
        assert d.result == {"solution": HOSTILE_STORED, "nested": [HOSTILE_STORED]}
        # searching with hostile text is no database error either
        assert [j.id for j in J.list_jobs(s, search="boom ok\x00then")] == [job_id]


def test_a_problem_with_hostile_text_is_stored(db, settings):
    data = {"title": "T\x00" + "\ud800" * 300, "statement": "Print \x00 then \x1b[1m and \udcff.",
            "tests": [{"input": "\x00\n", "output": "ok\n"}]}
    def parse_titled(d: dict):
        return parse(d).model_copy(update={"title": d["title"]})

    with session_scope(db) as s:
        p = create_problem(s, data=data, validate=parse_titled, settings=settings)
    with session_scope(db) as s:
        from backend.services.problems import get_problem

        p = get_problem(s, problem_id=p.id)
        assert p.statement == "Print \\x00 then \\x1b[1m and \ufffd."
        assert p.title.startswith("T\\x00\ufffd") and len(p.title) <= 200 and p.title.endswith("characters cut]")
        # the problem document keeps its (meaningful) control characters; lone surrogates are replaced
        assert p.data["tests"][0]["input"] == "\x00\n" and p.data["statement"].endswith("\ufffd.")


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "a"}\n{"prompt": "\xff"}\n', "line 2 is not UTF-8 text (byte 0xff at column 13)"),
    (b'{"prompt": "a \\ud800"}\n', "line 1 holds a lone surrogate escape (\\ud800)"),
])
def test_an_upload_that_is_not_text_is_refused_naming_the_line(db, settings, content, message):
    with session_scope(db) as s:
        with pytest.raises(InvalidInput) as e:
            upload_dataset(s, name="bad", content=content, settings=settings)
    assert e.value.field == "file" and message in e.value.message


def test_an_upload_with_nul_escapes_is_accepted(db, settings):
    with session_scope(db) as s:
        ds = upload_dataset(s, name="nul", content=b'{"prompt": "a\\u0000b", "answer": "\\u001b"}\n', settings=settings)
        assert ds.train_rows == 1


def test_a_database_error_reason_is_one_line_without_sql(db, queue, problem_id):  # noqa: F811
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    with session_scope(db) as s:
        with pytest.raises(SQLAlchemyError) as e:
            s.execute(text("INSERT INTO attempts (job_id) VALUES (NULL)"))
    reason = database_error_reason(e.value)
    assert "\n" not in reason and "INSERT" not in reason and "sqlalche.me" not in reason
    assert "null" in reason.lower() and "job_id" in reason, reason
