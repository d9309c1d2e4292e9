"""The Solve page's job view without a browser, on a real migrated SQLite database: attempts numbered as the CLI
numbers them with their teacher contexts, the rounds table, an attempt's raw response, feedback, teacher context
and per-token view, the settings a job ran with; where a form error is shown; the job-id box; status lines that
say only what holds now; whole-number plot axes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from app.views import common, solve
from app.views.common import integer_ticks, job_id_of, line_chart, plot_frame, status_line
from backend.models import utcnow
from backend.schemas import AttemptIn, JobDetail, TeacherViewIn
from backend.services import jobs as J
from backend.services import teacher as T

PROBLEM = {"title": "Add", "statement": "Print a+b.", "tests": {"inputs": ["1 2"], "outputs": ["3"],
                                                              "testtype": "stdin"}}
CREDIT = {"tokens": ["print", "(", "0", ")"], "student_logprobs": [-0.1, -0.2, -0.5, -0.1],
          "teacher_logprobs": [-0.1, -0.2, -3.0, -0.1], "total_tokens": 4, "temperature": 1.0, "mean_delta": -0.625,
          "disagreements": [{"position": 2, "token": "0", "student_logprob": -0.5, "teacher_logprob": -3.0,
                             "teacher_top": [{"token": "a", "prob": 0.6}, {"token": "int", "prob": 0.2}]}]}


def sdpo_job(ctx) -> int:
    jid = solve.submit(ctx, problem=PROBLEM, config={"strategy": "sdpo", "budget": 4, "n": 2, "max_new_tokens": 16})
    with ctx.session() as s:
        J.claim_job(s, job_id=jid, worker_id="w:1", takeover_after_s=60)
        J.record_attempts(s, job_id=jid, worker_id="w:1", attempts=[
            AttemptIn(round=0, index=i, response=r, code=c, reward=float(p), passed_public=p, total_public=1,
                      feedback=None if p else "Wrong answer: expected 3, got 0.", tokens=4, seconds=0.5)
            for i, (r, c, p) in enumerate([("I think print(0)", None, 0),
                                           ("```python\nprint(3)\n```", "print(3)", 1)])])
    return jid


def test_sdpo_job_view_shows_teacher_contexts_rounds_and_the_per_token_view(ctx):
    jid = sdpo_job(ctx)
    snap = solve.snapshot(ctx, jid)
    assert snap.attempts["attempt"].tolist() == [1, 2] and snap.attempts["teacher context"].tolist() == ["…", "…"]
    assert snap.teacher_note == "" and "strategy **sdpo**" in snap.settings_md and snap.config["budget"] == 4
    with ctx.session() as s:  # the worker records what the teacher saw, then the round's update
        T.record_teacher_views(s, job_id=jid, worker_id="w:1", views=[
            TeacherViewIn(round=0, index=0, distilled=True, demonstration=1, feedback=False,
                          context="Print a+b.\nCorrect solution:\n\nprint(3)", credit=CREDIT),
            TeacherViewIn(round=0, index=1, distilled=False, context="")])
        J.append_metrics(s, job_id=jid, step=0, worker_id="w:1", metrics={
            "ttt/updated": 1.0, "ttt/discovered": 0.0, "sdpo/reprompt_sample_fraction": 0.5, "sdpo/loss": 0.0123,
            "sdpo/kl_mean": 0.0456})
    again = solve.snapshot(ctx, jid)
    assert again.signature != snap.signature  # the open view re-renders (and so does the selected attempt)
    assert again.attempts["teacher context"].tolist() == ["demo #2", "none (not distilled)"]
    assert again.rounds.values.tolist() == [[0, "1-2", "1/1", "50%", "0.0123", "0.0456", "yes"]]
    v = solve.attempt_view(ctx, again.attempt_ids[0])
    assert v.header.startswith("**Attempt 1** (round 0) · failed") and v.response == "I think print(0)"
    assert "no code block found" in v.code and v.feedback == "Wrong answer: expected 3, got 0."
    assert "attempt **2** (a sibling that passed the public tests) as the demonstration" in v.teacher
    assert "loss 0.0123" in v.teacher and "teacher–student KL 0.0456" in v.teacher and "**yes**" in v.teacher
    assert v.context.endswith("Correct solution:\n\nprint(3)")
    # the per-token view: every token, the disagreeing one marked red with the teacher's alternatives
    assert v.tokens.count('title="token ') == 4 and "sdpo-tok-worst" in v.tokens
    assert "rgba(220,38,38,0.70)" in v.tokens  # the largest disagreement at full colour
    assert "<code>a</code> 0.6" in v.tokens and "<code>int</code> 0.2" in v.tokens
    assert "teacher p=0.05" in v.tokens and "-2.500" in v.tokens
    none = solve.attempt_view(ctx, again.attempt_ids[1])
    assert "No teacher signal — not distilled" in none.teacher and "not distilled" in none.tokens


@pytest.mark.parametrize("field, place", [("file", "dataset"), ("path", "dataset"), ("dataset", "dataset"),
                                          ("model", "model"), ("model_path", "model"), ("lr", "form"),
                                          ("self_distillation.alpha", "form"), ("extra settings", "form")])
def test_train_form_errors_go_next_to_the_dataset_the_model_or_the_hyperparameters(field, place):
    from app.views import train

    assert train.error_place(field) == place


@pytest.mark.parametrize("field, source, slot", [
    ("statement", "editor", "statement"), ("title", "editor", "statement"), ("tests.row 2", "editor", "tests"),
    ("fn_name", "editor", "tests"), ("tests.outputs", "json", "json"), ("json", "json", "json"),
    ("budget", "editor", "budget"), ("model", "json", "model"), ("n", "editor", "advanced"),
    ("self_distillation.alpha", "editor", "advanced"), ("extra settings", "editor", "extra"),
    ("temprature", "editor", "extra"), ("ppo_epochs", "editor", "extra"), ("strategy", "editor", "main"),
])
def test_form_errors_go_next_to_the_control_they_name(field, source, slot):
    advanced = [p for p, _ in solve.ADVANCED]
    assert solve.error_slot(field, source=source, advanced=advanced) == slot


def test_the_job_id_box_reads_text():
    assert [job_id_of(v) for v in ("", None, "  ", "0", "-3", "2.5", "abc", " 7 ", 7)] == \
        [None, None, None, None, None, None, None, 7, 7]


def _detail(**kw) -> JobDetail:
    now = utcnow()
    base = dict(id=3, kind="solve", status="queued", model="", label="", problem_id=None, dataset_id=None, gpus=1,
                error=None, worker_id=None, cancel_requested=False, resumes=0, created_at=now - timedelta(seconds=90),
                started_at=None, finished_at=None, heartbeat_at=None, config={}, result=None, task_id=None)
    return JobDetail(**{**base, **kw})


def test_status_lines_say_only_what_holds_in_the_current_state():
    now = utcnow()
    assert "queued 1 min 30 s ago" in status_line(_detail())
    cancelled = status_line(_detail(status="cancelled", cancel_requested=True, finished_at=now))
    assert "never started" in cancelled and "queued" not in cancelled and "cancelling" not in cancelled
    running = _detail(status="running", cancel_requested=True, started_at=now - timedelta(seconds=5))
    assert "cancelling…" in status_line(running)
    done = status_line(_detail(status="cancelled", cancel_requested=True, started_at=now - timedelta(seconds=9),
                               finished_at=now))
    assert "cancelling" not in done and "took 9 s" in done


def test_plots_have_whole_number_axes_and_tidy_numbers():
    assert integer_ticks(1, 4) == [1, 2, 3, 4]
    assert integer_ticks(1, 16) == [2, 4, 6, 8, 10, 12, 14, 16]
    assert integer_ticks(0, 2, 6) == [0, 1, 2]
    assert integer_ticks(1, 64) == [10, 20, 30, 40, 50, 60] and integer_ticks(5, 5) == [5]
    for hi in range(1, 300, 7):
        ticks = integer_ticks(1, hi)
        assert len(ticks) <= 10 and all(isinstance(t, int) for t in ticks)
    frame = plot_frame([[1, 0.0, "public"], [2, 1.0, "public"], [3, 3.2e-05, "loss"]], ["step", "value", "metric"])
    spec = json.loads(line_chart(frame, title="t", x_domain=(1, 3), y_domain=(0, 2), y_integer=True).plot)
    enc = spec["layer"][0]["encoding"]
    assert enc["x"]["axis"] == {"values": [1, 2, 3], "format": "d"} and enc["x"]["scale"]["domain"] == [1, 3]
    assert enc["y"]["axis"]["values"] == [0, 1, 2] and enc["y"]["axis"]["format"] == "d"
    assert enc["color"]["scale"]["domain"] == ["loss", "public"]
    loose = json.loads(line_chart(frame, title="t").plot)["layer"][0]["encoding"]
    assert loose["y"]["axis"]["format"] == common.NUMBER_FORMAT and loose["x"]["scale"]["domain"] == [1, 3]
    tiny = plot_frame([[1, 3.2e-05, "loss"], [2, 1.6e-05, "loss"]], ["step", "value", "metric"])
    assert json.loads(line_chart(tiny, title="t").plot)["layer"][0]["encoding"]["y"]["axis"]["format"] == ".2~e"
