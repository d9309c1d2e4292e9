"""Small helpers shared by the views: dotted config paths, status lines, plots. (Values typed in the forms are
read by the engine when it validates a job: ``backend.schemas.RawConfig``.)"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import pandas as pd

from backend.models import TERMINAL_STATUSES
from backend.schemas import JobDetail
from backend.services.ui import Progress

STATUS_ICONS = {"queued": "…", "running": "▶", "succeeded": "✓", "failed": "✗", "cancelled": "■"}


def plot_frame(rows: Any, columns: Sequence[str]) -> pd.DataFrame:
    """A long-format frame for ``gr.LinePlot``: (x, y, series). Typed even when empty (int x, float y, str
    series) so the chart's axes are quantitative from the first render on."""
    df = pd.DataFrame(list(rows), columns=list(columns))
    return df.astype({columns[0]: "int64", columns[1]: "float64", columns[2]: "str"})


def series_of(df: pd.DataFrame) -> list[str]:
    """The series names (third column) of a plot frame, sorted."""
    return sorted(df[df.columns[2]].unique().tolist()) if len(df) else []


def legend_updates(legends: Any, n: int) -> tuple:
    """Second phase of a plot refresh: ``gr.LinePlot(colors_in_legend=...)`` for each plot whose data changed.

    Gradio's LinePlot builds its colour scale (which series are drawn) only when a prop other than the value
    changes, and that rebuild reads the data of the *previous* update. So a view first sends the new values
    (phase one), then, in a chained event, the series names as ``colors_in_legend`` (phase two), which rebuilds
    the chart from the data it now holds. ``legends`` is None (nothing changed) or one list per plot.
    """
    import gradio as gr

    if not legends:
        return (gr.skip(),) * n if n > 1 else gr.skip()
    out = tuple(gr.skip() if s is None else gr.LinePlot(colors_in_legend=list(s)) for s in legends)
    return out if n > 1 else out[0]


def job_id_of(value: Any) -> int | None:
    """A job id from a number box (None, 0 or negative = no job)."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def badge(status: str) -> str:
    """A coloured status label (CSS class ``sdpo-badge sdpo-<status>``)."""
    return f'<span class="sdpo-badge sdpo-{html.escape(status)}">{STATUS_ICONS.get(status, "")} {html.escape(status)}</span>'


def get_path(d: dict[str, Any], dotted: str) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def has_path(d: dict[str, Any], dotted: str) -> bool:
    try:
        get_path(d, dotted)
        return True
    except KeyError:
        return False


def set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def progress_text(p: Progress, *, running: bool) -> str:
    """' · 12 s per round · about 2 min 30 s for the remaining 12 attempts' (the estimate while it runs)."""
    per = "step" if p.unit == "steps" else "round"
    text = f" · {fmt_duration(p.per_round_s) if p.per_round_s >= 1 else f'{p.per_round_s:.1f} s'} per {per}"
    if running and p.remaining > 0:
        text += f" · about {fmt_duration(p.remaining_s)} for the remaining {p.remaining} {p.unit}"
    return text


def error_md(message: str) -> str:
    """A visible error message block (the text is escaped)."""
    return f'<div class="sdpo-error" role="alert">⚠️ {html.escape(message)}</div>'


def ok_md(message: str) -> str:
    return f'<div class="sdpo-ok">{html.escape(message)}</div>'


def status_line(d: JobDetail) -> str:
    """'Job 3 · running · 12 s elapsed · ...' for the job views."""
    if d.started_at is None:
        from backend.models import utcnow

        timing = f"queued {fmt_duration((utcnow() - d.created_at).total_seconds())} ago"
    else:
        verb = "took" if d.status in TERMINAL_STATUSES else "elapsed"
        timing = f"{verb} {fmt_duration(d.duration_s)}" if verb == "took" else f"{fmt_duration(d.duration_s)} {verb}"
    parts = [f"**Job {d.id}** ({d.kind})", badge(d.status), timing]
    if d.cancel_requested and d.status == "running":
        parts.append("cancelling…")
    if d.worker_id:
        parts.append(f"worker `{d.worker_id}`")
    return " · ".join(parts)


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES
