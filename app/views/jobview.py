"""The job part of the Solve and Train pages: the job id box with Open and Cancel, a message line, the status
line and the settings the job runs with, and a timer that refreshes the view while the job runs.

``job_view`` lays these out and returns them by name (``JobView``); the page lays out its own panels below
(attempts, plots, ...) and calls ``JobView.bind`` with a function that says what those panels show. One render
then serves Open, the job id box, the timer, Cancel and the page's submit button, and every handler returns
its updates by component (a dict; a component left out keeps its value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.context import AppContext
from app.views.common import error_md, is_terminal, job_id_of, settings_summary
from backend.errors import IllegalTransition, NotFound
from backend.schemas import JobDetail
from backend.services import jobs as J


@dataclass
class JobSnapshot:
    """What every job view shows of a job at one moment; a page's snapshot extends it with its panels' data."""

    status_md: str
    status: str
    terminal: bool
    cancellable: bool
    settings_md: str
    config: dict[str, Any]
    signature: tuple  # changes whenever anything shown changes; an equal one means "leave the panels"


def job_fields(ctx: AppContext, d: JobDetail, summary: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The ``JobSnapshot`` fields of job ``d`` but the status line and the signature (which the page extends)."""
    return dict(status=d.status, terminal=is_terminal(d.status),
                cancellable=d.status in ("queued", "running") and not d.cancel_requested,
                settings_md=settings_summary(d.config, d.model, ctx.settings.model, summary), config=d.config)


@dataclass
class Refresh:
    """How a render relates to the last one: ``same`` (the signature did not change: leave the panels as they
    are), ``other_job`` (a job was (re)opened: clear what belonged to the previous one) and the values of the
    page's own render inputs."""

    job_id: int
    same: bool
    other_job: bool
    inputs: dict[Any, Any]


# (snapshot, refresh) -> updates of the page's panels; ``None`` as the snapshot: the job was not found
Panels = Callable[[Any, Refresh], dict[Any, Any]]


@dataclass
class JobView:
    """The components of a page's job view, by name, and (after ``bind``) its render's inputs and outputs."""

    job_id: gr.Textbox
    open_btn: gr.Button
    cancel_btn: gr.Button
    message: gr.HTML  # what Cancel answers; cleared when another job is opened
    status: gr.Markdown
    settings_md: gr.Markdown
    settings_json: gr.JSON
    timer: gr.Timer
    signature: gr.State  # the last render's snapshot signature
    about: gr.State  # [job id, status] the page's form message describes; cleared once that job moved on
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    render: Callable[..., Any] | None = None

    def open(self, jid: Any) -> Any:
        """Render job ``jid`` afresh (Open, the job id box, History's Open)."""
        assert self.render is not None, "bind the view first"
        return self.render(jid)

    def bind(self, ctx: AppContext, *, snapshot: Callable[[int], JobSnapshot], panels: Panels,
             panel_outputs: Sequence[Any], panel_inputs: Sequence[Any] = (), form_message: gr.HTML,
             noun: str) -> None:
        """Wire Open, the job id box, the timer and Cancel to one render: ``snapshot`` reads the job (raises
        ``NotFound``), ``panels`` says what the page's ``panel_outputs`` show (reading ``panel_inputs`` from
        ``Refresh.inputs``), ``form_message`` is the page's message about its last submission and ``noun`` names
        a job in messages ("job", "run")."""
        outputs = [self.status, self.cancel_btn, self.message, self.settings_md, self.settings_json, self.timer,
                   self.signature, form_message, self.about, *panel_outputs]
        inputs = [self.job_id, self.signature, self.about, *panel_inputs]

        def render(jid: Any, last_sig: Any = None, about: Any = None, *values: Any) -> Any:
            jid = job_id_of(jid)
            if jid is None:
                return gr.skip()
            refresh = Refresh(job_id=jid, same=False, other_job=True,
                              inputs={c: values[i] if i < len(values) else None for i, c in enumerate(panel_inputs)})
            try:
                snap = snapshot(jid)
            except NotFound:
                return {self.status: error_md(f"job {jid} not found"), self.cancel_btn: gr.Button(visible=False),
                        self.message: "", self.settings_md: "", self.settings_json: None,
                        self.timer: gr.Timer(active=False), self.signature: None, **panels(None, refresh)}
            refresh.same = last_sig is not None and tuple(last_sig) == snap.signature
            refresh.other_job = last_sig is None or last_sig[0] != jid
            out = {self.status: snap.status_md, self.cancel_btn: gr.Button(visible=snap.cancellable),
                   self.timer: gr.Timer(active=not snap.terminal), self.signature: list(snap.signature)}
            if refresh.other_job:
                out[self.message] = ""
            if not refresh.same:
                out |= {self.settings_md: snap.settings_md, self.settings_json: snap.config}
            if about is not None and about[0] == jid and about[1] != snap.status:
                out |= {form_message: "", self.about: None}
            return out | panels(snap, refresh)

        self.inputs, self.outputs, self.render = inputs, outputs, render
        self.open_btn.click(self.open, [self.job_id], outputs, api_visibility="private")
        self.job_id.submit(self.open, [self.job_id], outputs, api_visibility="private")
        self.timer.tick(render, inputs, outputs, api_visibility="private", show_progress="hidden")
        self.refresh_after(self.cancel_btn.click(lambda jid: cancel(ctx, jid, noun=noun), [self.job_id], [self.message],
                                                 api_visibility="private"))

    def refresh_after(self, event: Any) -> Any:
        """Render the view again once ``event`` (a submission, a cancel) is done."""
        return event.then(self.render, self.inputs, self.outputs, api_visibility="private", show_progress="hidden")


def cancel(ctx: AppContext, jid: Any, *, noun: str = "job") -> str:
    """Ask the job in the job id box to stop (the status line says "cancelling…" until it has, then
    "cancelled"); what the view's message line shows: "" or the error."""
    jid = job_id_of(jid)
    if jid is None:
        return error_md(f"no {noun} to cancel: open one first")
    try:
        with ctx.session() as s:
            J.cancel_job(s, job_id=jid, revoke=ctx.queue.revoke)
        return ""
    except (NotFound, IllegalTransition) as e:
        return error_md(str(e))


def job_view(*, prefix: str, title: str, noun: str, empty: str, interval: float) -> JobView:
    """Lay out the job view under a ``title`` heading (elem ids ``<prefix>-job-id``, ``<prefix>-open``,
    ``<prefix>-cancel``, ``<prefix>-job-message``, ``<prefix>-status``, ``<prefix>-settings``...): ``empty`` is
    the status line before any job, ``interval`` the seconds between refreshes while a job runs."""
    gr.Markdown(f"---\n### {title}")
    with gr.Row():
        job_id = gr.Textbox(label="Job id", value="", placeholder="job number", elem_id=f"{prefix}-job-id", scale=1,
                            max_lines=1)
        open_btn = gr.Button("Open", elem_id=f"{prefix}-open", scale=0)
        cancel_btn = gr.Button(f"Cancel {noun}", variant="stop", visible=False, elem_id=f"{prefix}-cancel", scale=0)
    message = gr.HTML("", elem_id=f"{prefix}-job-message", padding=False)
    status = gr.Markdown(empty, elem_id=f"{prefix}-status")
    settings_md = gr.Markdown("", elem_id=f"{prefix}-settings")
    with gr.Accordion(f"Every setting of this {noun}", open=False, elem_id=f"{prefix}-settings-all"):
        settings_json = gr.JSON(value=None, label="Settings (as stored with the job)", elem_id=f"{prefix}-settings-json")
    return JobView(job_id=job_id, open_btn=open_btn, cancel_btn=cancel_btn, message=message, status=status,
                   settings_md=settings_md, settings_json=settings_json, timer=gr.Timer(interval, active=False),
                   signature=gr.State(None), about=gr.State(None))

