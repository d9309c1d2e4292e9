"""The job view both job pages share (``app.views.jobview``): one render answers by component, leaves unchanged
panels alone, clears a form message once its job moved on, and Cancel answers in the view's message line."""

from __future__ import annotations

import gradio as gr

from app.views import solve
from app.views.jobview import JobSnapshot, cancel, job_view
from backend.errors import NotFound
from backend.services import jobs as J
from tests.app.test_app_services import form_problem, small_config


def snap(jid: int, status: str = "running") -> JobSnapshot:
    return JobSnapshot(status_md=f"job {jid} {status}", status=status, terminal=status == "succeeded",
                       cancellable=status == "running", settings_md=f"settings of {jid}", config={"n": jid},
                       signature=(jid, status))


def build(ctx, jobs: dict[int, JobSnapshot]):
    calls = []
    with gr.Blocks():
        form_message = gr.HTML()
        view = job_view(prefix="t", title="Job", noun="job", empty="No job yet.", interval=1.0)
        panel = gr.Markdown()
        pick = gr.State(None)

        def snapshot(jid: int) -> JobSnapshot:
            if jid not in jobs:
                raise NotFound("job", jid)
            return jobs[jid]

        def panels(s, r):
            calls.append((s, r))
            return {panel: "gone" if s is None else ("kept" if r.same else f"panel {r.job_id} {r.inputs[pick]}")}

        view.bind(ctx, snapshot=snapshot, panels=panels, panel_outputs=[panel], panel_inputs=[pick],
                  form_message=form_message, noun="job")
    return view, form_message, panel, pick, calls


def test_render_answers_by_component(ctx):
    view, form_message, panel, pick, calls = build(ctx, {3: snap(3), 4: snap(4, "succeeded")})
    assert view.render("") == gr.skip() and view.render("x") == gr.skip() and not calls

    first = view.open("3")  # opened: the message line is cleared, settings and panels shown, the timer runs
    assert first[view.status] == "job 3 running" and first[view.message] == ""
    assert (first[view.settings_md], first[view.settings_json]) == ("settings of 3", {"n": 3})
    assert first[view.signature] == [3, "running"] and first[view.timer].active is True
    assert first[view.cancel_btn].visible is True and first[panel] == "panel 3 None"
    assert form_message not in first and view.about not in first

    tick = view.render("3", [3, "running"], [3, "queued"], 7)  # nothing changed; the form's job moved on
    assert view.message not in tick and view.settings_md not in tick and tick[panel] == "kept"
    assert (tick[form_message], tick[view.about]) == ("", None)
    assert calls[-1][1].same and not calls[-1][1].other_job and calls[-1][1].inputs == {pick: 7}

    other = view.render("4", [3, "running"], [4, "succeeded"], 7)  # another job: finished, no Cancel, no timer
    assert other[view.message] == "" and other[view.cancel_btn].visible is False and other[view.timer].active is False
    assert form_message not in other and other[panel] == "panel 4 7"

    gone = view.render("9", [4, "succeeded"])
    assert "job 9 not found" in gone[view.status] and gone[view.signature] is None and gone[panel] == "gone"
    assert gone[view.timer].active is False and form_message not in gone


def test_cancel_answers_in_the_message_line(ctx):
    assert "no run to cancel" in cancel(ctx, "", noun="run")
    assert "job 12345 not found" in cancel(ctx, "12345")
    jid = solve.submit(ctx, problem=form_problem(ctx), config=small_config())
    assert cancel(ctx, str(jid)) == ""
    with ctx.session() as s:
        assert J.get_job(s, job_id=jid).status == "cancelled"
    assert "cancelled" in cancel(ctx, str(jid))  # a finished job cannot be cancelled again
