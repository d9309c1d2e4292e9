"""History page: every job with filters and search; open one in its view (read-only when finished), re-run
it with the same config, or delete it (with confirmation; attempts, metrics, checkpoints and files go too)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from app.context import AppContext
from app.views.common import STATUS_ICONS, error_md, fmt_duration, job_id_of, ok_md
from backend.errors import EnqueueError, IllegalTransition, InvalidInput, NotFound
from backend.models import JOB_STATUSES
from backend.schemas import JobSummary
from backend.services import jobs as J

COLUMNS = ["id", "kind", "status", "model", "problem / dataset", "created", "duration", "outcome"]
ALL = "all"


def outcome(d: JobSummary, result: dict | None, error: str | None) -> str:
    """A short outcome text: solved at attempt N / steps done / the first line of the error."""
    if d.status == "succeeded" and result:
        if "discovered_at" in result:
            at = result.get("discovered_at")
            return f"solved at attempt {at}" if at else f"not solved ({result.get('attempts_used', '?')} attempts)"
        if "steps" in result:
            return f"{result['steps']} steps"
    if error:
        return error.strip().splitlines()[0][:80]
    return ""


def rows(ctx: AppContext, *, kind: str = ALL, status: str = ALL, search: str = "", limit: int = 200) -> pd.DataFrame:
    """The jobs table (newest first) for the filters."""
    with ctx.session() as s:
        # a job whose worker died goes back to the queue (resumed by the next free worker) or ends with the
        # reason, as the workers' own reapers do
        J.reap_stale(s, timeout_s=ctx.settings.heartbeat_timeout_s, enqueue=ctx.queue.enqueue,
                     max_resumes=ctx.settings.max_resumes)
    with ctx.session() as s:
        jobs = J.list_jobs(s, kind=None if kind == ALL else kind, status=None if status == ALL else status,
                           search=(search or "").strip() or None, limit=limit)
        out = []
        for j in jobs:
            d = JobSummary.model_validate(j)
            model = (d.model or ctx.settings.model).rstrip("/").rsplit("/", 1)[-1]
            out.append([d.id, d.kind, f"{STATUS_ICONS.get(d.status, '')} {d.status}", model, d.label,
                        d.created_at.strftime("%Y-%m-%d %H:%M:%S"), fmt_duration(d.duration_s),
                        outcome(d, j.result, j.error)])
    return pd.DataFrame(out, columns=COLUMNS)


@dataclass
class HistoryHandles:
    table: gr.Dataframe
    selected: gr.Textbox
    open_btn: gr.Button
    refresh: object
    filters: list


def build(ctx: AppContext) -> HistoryHandles:
    with gr.Row():
        kind = gr.Dropdown([ALL, "solve", "train"], value=ALL, label="Kind", elem_id="history-kind", scale=1)
        status = gr.Dropdown([ALL, *JOB_STATUSES], value=ALL, label="Status", elem_id="history-status", scale=1)
        search = gr.Textbox(label="Search (title, dataset, model, error, id)", elem_id="history-search", scale=3)
        refresh_btn = gr.Button("Refresh", elem_id="history-refresh", scale=0)
    table = gr.Dataframe(value=pd.DataFrame(columns=COLUMNS), interactive=False, max_height=420,
                         label="Jobs (click a row to select it)", elem_id="history-table")
    with gr.Row():
        selected = gr.Textbox(label="Selected job", value="", placeholder="click a row", max_lines=1,
                              elem_id="history-selected", scale=1)
        open_btn = gr.Button("Open", variant="primary", elem_id="history-open", scale=0)
        rerun_btn = gr.Button("Re-run with same config", elem_id="history-rerun", scale=0)
        delete_btn = gr.Button("Delete…", variant="stop", elem_id="history-delete", scale=0)
    with gr.Row(visible=False) as confirm_row:
        confirm_text = gr.Markdown(elem_id="history-confirm-text")
        confirm_btn = gr.Button("Yes, delete it", variant="stop", elem_id="history-confirm", scale=0)
        keep_btn = gr.Button("Keep it", elem_id="history-keep", scale=0)
    message = gr.HTML(elem_id="history-message")

    filters = [kind, status, search]

    def refresh(k, st, q):
        try:
            return rows(ctx, kind=k, status=st, search=q)
        except InvalidInput as e:
            gr.Warning(str(e))
            return gr.skip()

    for ev in (refresh_btn.click, kind.change, status.change, search.submit):
        ev(refresh, filters, table, api_visibility="private")

    def on_select(df, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        try:
            return str(int(df.iloc[row]["id"]) if isinstance(df, pd.DataFrame) else int(df[row][0]))
        except (IndexError, KeyError, ValueError, TypeError):
            return gr.skip()

    table.select(on_select, table, selected, api_visibility="private")

    def on_rerun(jid):
        jid = job_id_of(jid)
        if jid is None:
            return error_md("select a job first")
        try:
            with ctx.session() as s:
                job = J.rerun_job(s, job_id=int(jid), validate=ctx.hooks.validate_config, enqueue=ctx.queue.enqueue)
                return ok_md(f"Job {job.id} queued (re-run of job {int(jid)}).")
        except (InvalidInput, NotFound, EnqueueError) as e:
            return error_md(str(e))

    rerun_btn.click(on_rerun, selected, message, api_visibility="private").then(
        refresh, filters, table, api_visibility="private")

    def on_delete(jid):
        jid = job_id_of(jid)
        if jid is None:
            return gr.Row(visible=False), "", error_md("select a job first")
        return (gr.Row(visible=True), f"Delete job **{int(jid)}** with its attempts, metrics, checkpoints and "
                "files? This cannot be undone.", "")

    delete_btn.click(on_delete, selected, [confirm_row, confirm_text, message], api_visibility="private")
    keep_btn.click(lambda: gr.Row(visible=False), None, confirm_row, api_visibility="private")

    def on_confirm(jid):
        jid = job_id_of(jid)
        if jid is None:
            return gr.Row(visible=False), error_md("select a job first"), gr.skip()
        try:
            with ctx.session() as s:
                J.delete_job(s, job_id=int(jid), jobs_dir=ctx.settings.jobs_dir)
            return gr.Row(visible=False), ok_md(f"Job {int(jid)} deleted."), ""
        except (InvalidInput, NotFound, IllegalTransition, TypeError) as e:
            return gr.Row(visible=False), error_md(str(e)), gr.skip()

    confirm_btn.click(on_confirm, selected, [confirm_row, message, selected], api_visibility="private").then(
        refresh, filters, table, api_visibility="private")

    return HistoryHandles(table=table, selected=selected, open_btn=open_btn, refresh=refresh, filters=filters)


def job_kind(ctx: AppContext, job_id: int) -> str | None:
    with ctx.session() as s:
        try:
            return J.get_job(s, job_id=job_id).kind
        except NotFound:
            return None
