"""Compare page: overlay the training curves of two or more runs (one metric at a time) and the discovery
curves of solve jobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from app.context import AppContext
from app.views.common import line_chart, plot_frame
from backend.services import jobs as J
from backend.services import ui as U

TRAIN_COLUMNS = ["step", "value", "run"]
SOLVE_COLUMNS = ["attempt", "best tests passed", "job"]


def _label(job) -> str:
    return f"#{job.id} {job.label or job.kind} ({job.status})"


def job_choices(ctx: AppContext, kind: str) -> list[tuple[str, int]]:
    with ctx.session() as s:
        return [(_label(j), j.id) for j in J.list_jobs(s, kind=kind, limit=200)]


def training_overlay(ctx: AppContext, job_ids: Sequence[int], metric: str) -> pd.DataFrame:
    """Long-format (step, value, run) rows of ``metric`` for each run."""
    rows = []
    with ctx.session() as s:
        for jid in job_ids:
            job = J.get_job(s, job_id=int(jid))
            for p in J.list_metrics(s, job_id=job.id, names=[metric]):
                rows.append([p.step, p.value, _label(job)])
    return plot_frame(rows, TRAIN_COLUMNS)


def discovery_overlay(ctx: AppContext, job_ids: Sequence[int]) -> pd.DataFrame:
    """Long-format (attempt, best public tests passed so far, job) rows for each solve job."""
    rows = []
    with ctx.session() as s:
        for jid in job_ids:
            job = J.get_job(s, job_id=int(jid))
            for n, pub, _ in U.discovery_curve(J.list_attempts(s, job_id=job.id)):
                rows.append([n, pub, _label(job)])
    return plot_frame(rows, SOLVE_COLUMNS)


@dataclass
class CompareHandles:
    fn: Callable[[], tuple]
    outputs: list


def build(ctx: AppContext) -> CompareHandles:
    gr.Markdown("### Training runs")
    with gr.Row():
        runs = gr.Dropdown(job_choices(ctx, "train"), multiselect=True, label="Runs (pick two or more)",
                           elem_id="compare-runs", scale=3)
        metric = gr.Dropdown(["reward/mean"], value="reward/mean", allow_custom_value=True, label="Metric",
                             elem_id="compare-metric", scale=2)
        refresh_btn = gr.Button("Refresh lists", elem_id="compare-refresh", scale=0)
    train_plot = gr.Plot(value=None, show_label=False, elem_id="compare-train-plot")
    gr.Markdown("### Solve jobs")
    solves = gr.Dropdown(job_choices(ctx, "solve"), multiselect=True, label="Solve jobs", elem_id="compare-solves")
    solve_plot = gr.Plot(value=None, show_label=False, elem_id="compare-solve-plot")

    def on_runs(ids, m):
        with ctx.session() as s:
            names = U.metric_names(s, job_ids=[int(i) for i in ids or []])
        m = m if m in names or not names else ("reward/mean" if "reward/mean" in names else names[0])
        df = training_overlay(ctx, ids or [], m)
        return gr.Dropdown(choices=names or ["reward/mean"], value=m), line_chart(df, title=m, height=280)

    def on_metric(ids, m):
        return line_chart(training_overlay(ctx, ids or [], m), title=m, height=280)

    def on_solves(ids):
        df = discovery_overlay(ctx, ids or [])
        return line_chart(df, title="Discovery curves: best public tests passed so far", height=280, y_integer=True,
                          x_domain=(1, max(df["attempt"].tolist(), default=1)),
                          y_domain=(0, max(1.0, max(df["best tests passed"].tolist(), default=1.0))), step=True)

    runs.change(on_runs, [runs, metric], [metric, train_plot], api_visibility="private")
    metric.input(on_metric, [runs, metric], train_plot, api_visibility="private")
    solves.change(on_solves, solves, solve_plot, api_visibility="private")

    def refresh_lists():
        return gr.Dropdown(choices=job_choices(ctx, "train")), gr.Dropdown(choices=job_choices(ctx, "solve"))

    refresh_btn.click(refresh_lists, None, [runs, solves], api_visibility="private")
    return CompareHandles(fn=refresh_lists, outputs=[runs, solves])
