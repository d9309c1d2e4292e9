"""The SDPO Studio web app (Gradio): Solve, Train, History, Compare and System pages over the backend services.

``build_app(settings, hooks)`` lays out the pages; ``launch(settings, hooks)`` serves them on
``settings.host:settings.port`` with the optional login of ``SDPO_AUTH``. The engine hooks (validation
callables bound to ``sdpo``) come from the caller: ``sdpo serve`` (``workers.cli``) passes them, because ``app``
imports only ``backend``.

Public API endpoints (``gradio_client``): ``/submit_solve`` and ``/submit_train`` (the forms' submit buttons,
returning (message, job id)), ``/job_status`` (job id -> the job's details as JSON).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.auth import make_auth
from app.context import AppContext, EngineHooks
from app.views import compare, history, inspect, solve, system, train
from app.views.common import job_id_of
from backend.errors import NotFound
from backend.services import jobs as J
from backend.settings import Settings

CSS = """
.sdpo-error { color: #b42318; background: #fef3f2; border: 1px solid #fda29b; border-radius: 6px;
              padding: 8px 12px; margin-top: 6px; white-space: pre-wrap; }
.sdpo-ok { color: #05603a; background: #ecfdf3; border: 1px solid #6ce9a6; border-radius: 6px;
           padding: 8px 12px; margin-top: 6px; }
.sdpo-badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 0.9em; }
.sdpo-queued { background: #eef4ff; color: #3538cd; }
.sdpo-running { background: #fffaeb; color: #b54708; }
.sdpo-succeeded { background: #ecfdf3; color: #05603a; }
.sdpo-failed { background: #fef3f2; color: #b42318; }
.sdpo-cancelled { background: #f2f4f7; color: #344054; }
.sdpo-dot-ok { color: #12b76a; } .sdpo-dot-bad { color: #f04438; } .sdpo-dot-warn { color: #f79009; }
"""
TITLE = "SDPO Studio"


def job_status(ctx: AppContext, job_id: int) -> dict[str, Any]:
    """The job's details (status, error, attempts count, best public score, last metrics, checkpoints)."""
    try:
        with ctx.session() as s:
            d = J.job_detail(s, job_id=int(job_id))
    except NotFound as e:
        return {"error": str(e)}
    out = d.model_dump(mode="json")
    out["duration_s"] = d.duration_s
    return out


def build_app(settings: Settings, hooks: EngineHooks, *, ctx: AppContext | None = None) -> gr.Blocks:
    """All pages in one ``gr.Blocks`` (not launched)."""
    ctx = ctx or AppContext.create(settings, hooks)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE} · Self-Distilled Policy Optimization")
        with gr.Tabs(selected="solve") as tabs:
            with gr.Tab("Solve", id="solve", elem_id="tab-solve"):
                s = solve.build(ctx)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                t = train.build(ctx)
            with gr.Tab("History", id="history", elem_id="tab-history") as history_tab:
                h = history.build(ctx)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare_tab:
                compare_refresh = compare.build(ctx)
            with gr.Tab("System", id="system", elem_id="tab-system") as system_tab:
                _, system_view, system_md = system.build(ctx)

        history_tab.select(h.refresh, h.filters, h.table, api_visibility="private")
        system_tab.select(system_md, None, system_view, api_visibility="private")
        compare_tab.select(compare_refresh.fn, None, compare_refresh.outputs, api_visibility="private")

        def on_open(jid):
            jid = job_id_of(jid)
            if jid is None:
                return gr.skip(), gr.skip(), gr.skip()
            kind = history.job_kind(ctx, int(jid))
            if kind == "solve":
                return gr.Tabs(selected="solve"), str(jid), gr.skip()
            if kind == "train":
                return gr.Tabs(selected="train"), gr.skip(), str(jid)
            gr.Warning(f"job {int(jid)} not found")
            return gr.skip(), gr.skip(), gr.skip()

        opened = h.open_btn.click(on_open, h.selected, [tabs, s.job_id, t.job_id], api_visibility="private")
        opened.then(s.open_fn, [s.job_id], s.open_outputs, api_visibility="private")
        opened.then(t.open_fn, [t.job_id], t.open_outputs, api_visibility="private")

        gr.api(_typed_job_status_fn(ctx), api_name="job_status",
               api_description="Status and details of a job by id.")
    return demo


def _typed_job_status_fn(ctx: AppContext):
    def job_status_api(job_id: int) -> dict:
        return job_status(ctx, job_id)

    return job_status_api


def launch(settings: Settings, hooks: EngineHooks, *, prevent_thread_lock: bool = False, quiet: bool = False):
    """Serve the app on ``settings.host:settings.port`` (login when ``SDPO_AUTH`` is set)."""
    demo = build_app(settings, hooks)
    demo.queue(default_concurrency_limit=8)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    return demo.launch(
        server_name=settings.host, server_port=settings.port, auth=make_auth(settings),
        auth_message="SDPO Studio: sign in (users from SDPO_AUTH)", allowed_paths=[str(settings.jobs_dir)],
        prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=True, css=CSS + inspect.CSS,
        footer_links=["api"],
        ssr_mode=False,
    )
