"""Small helpers shared by the views: dotted config paths, status lines, plots, the settings a job ran with.
(Values typed in the forms are read by the engine when it validates a job: ``backend.schemas.RawConfig``.)"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from backend.models import TERMINAL_STATUSES
from backend.schemas import JobDetail
from backend.services.ui import Progress

STATUS_ICONS = {"queued": "…", "running": "▶", "succeeded": "✓", "failed": "✗", "cancelled": "■"}


def plot_frame(rows: Any, columns: Sequence[str]) -> pd.DataFrame:
    """A long-format frame of a line chart: (x, y, series). Typed even when empty (int x, float y, str series)."""
    df = pd.DataFrame(list(rows), columns=list(columns))
    return df.astype({columns[0]: "int64", columns[1]: "float64", columns[2]: "str"})


def integer_ticks(lo: int, hi: int, max_ticks: int = 10) -> list[int]:
    """Whole-number tick values from ``lo`` to ``hi``: every 1, 2, 5, 10, 20, 50, ... whichever gives at most
    ``max_ticks`` ticks (steps, attempts and test counts are never fractional)."""
    lo, hi = int(lo), max(int(hi), int(lo))
    step, k = 1, 0
    while (hi - lo) / step > max_ticks - 1:
        k += 1
        step = (1, 2, 5)[k % 3] * 10 ** (k // 3)
    first = -(-lo // step) * step
    return list(range(first, hi + 1, step)) or [lo]


# Tidy numbers: at most 3 significant digits, no trailing zeros (d3-format); very small or large values in
# exponent notation (1.6e-5, not 0.000016).
NUMBER_FORMAT = ".3~g"
SMALL_FORMAT = ".2~e"


def number_format(values: Sequence[float]) -> str:
    """The d3 format of an axis over ``values``: ``NUMBER_FORMAT``, or ``SMALL_FORMAT`` when the largest
    magnitude is below 0.001 or at least 1e6."""
    big = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    return SMALL_FORMAT if big and (big < 1e-3 or big >= 1e6) else NUMBER_FORMAT


def line_chart(frame: pd.DataFrame, *, title: str, x_domain: tuple[int, int] | None = None,
               y_domain: tuple[float, float] | None = None, y_integer: bool = False, height: int = 240,
               step: bool = False):
    """A line chart of a ``plot_frame`` (columns x, y, series) for ``gr.Plot``: a whole-number x axis (steps,
    attempts) from ``x_domain`` (default: the data's range), y ticks in tidy numbers (whole numbers with
    ``y_integer``), one colour per series with a legend, points and tooltips. ``step``: draw as a step line
    (a best-so-far curve). Gradio's LinePlot cannot keep an axis to whole numbers, so the chart is a Vega-Lite
    spec Gradio's Plot renders as it is (as an Altair chart)."""
    from gradio.components.plot import AltairPlotData

    x, y, color = list(frame.columns[:3])
    if x_domain is None:
        xs = frame[x].tolist()
        x_domain = (min(xs), max(xs)) if xs else (0, 1)
    lo, hi = int(x_domain[0]), max(int(x_domain[1]), int(x_domain[0]) + 1)
    y_axis: dict[str, Any] = {"format": "d" if y_integer else number_format(frame[y].tolist()), "tickCount": 5}
    y_scale: dict[str, Any] = {"zero": False}
    if y_domain is not None:
        y_scale = {"domain": list(y_domain)}
        if y_integer:
            y_axis["values"] = integer_ticks(int(y_domain[0]), int(math.ceil(y_domain[1])), 6)
    series = sorted(frame[color].unique().tolist()) if len(frame) else []
    records = [{x: int(a), y: None if pd.isna(b) else float(b), color: str(c)}
               for a, b, c in frame[[x, y, color]].itertuples(index=False)]
    encoding = {
        "x": {"field": x, "type": "quantitative", "title": x, "scale": {"domain": [lo, hi], "nice": False},
              "axis": {"values": integer_ticks(lo, hi), "format": "d"}},
        "y": {"field": y, "type": "quantitative", "title": y, "scale": y_scale, "axis": y_axis},
        "color": {"field": color, "type": "nominal", "title": None,
                  "scale": {"domain": series or [""], "range": list(PALETTE[:max(1, len(series))])},
                  "legend": {"orient": "bottom", "title": None, "labelLimit": 400,
                             **({"columns": 2} if len(series) > 3 else {})} if series else None},
        "tooltip": [{"field": color, "type": "nominal", "title": "series"},
                    {"field": x, "type": "quantitative", "format": "d"},
                    {"field": y, "type": "quantitative", "format": ".4~g"}],
    }
    mark = {"type": "line", "point": {"size": 30}, "interpolate": "step-after" if step else "linear",
            "strokeWidth": 2}
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": title, "height": height,
            "data": {"values": records}, "layer": [{"mark": mark, "encoding": encoding}],
            "usermeta": {"embedOptions": {"renderer": "svg", "actions": False}}}
    return AltairPlotData(chart="line", plot=json.dumps(spec))


PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777")


def job_id_of(value: Any) -> int | None:
    """A job id from the job-id box (text; empty, 0, negative or not a whole number = no job)."""
    text = str(value).strip() if value is not None else ""
    if not text.isdigit():
        return None
    v = int(text)
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
    """'Job 3 · running · 12 s elapsed · ...' for the job views. What it says about waiting ("queued 5 s ago")
    and stopping ("cancelling…") holds only in that state: a job cancelled before it started "never started"."""
    if d.started_at is None:
        from backend.models import utcnow

        timing = ("never started" if d.status in TERMINAL_STATUSES
                  else f"queued {fmt_duration((utcnow() - d.created_at).total_seconds())} ago")
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


# The settings a solve job's summary line names (the full config is shown beside it).
SOLVE_SUMMARY = (("strategy", "strategy"), ("budget", "budget"), ("n", "n"), ("max_new_tokens", "max tokens"),
                 ("temperature", "temperature"), ("lr", "lr"), ("adapter", "weights"),
                 ("self_distillation.alpha", "alpha"), ("self_distillation.teacher_regularization", "teacher"))
TRAIN_SUMMARY = (("loss", "algorithm"), ("max_steps", "steps"), ("train_batch_size", "questions per step"),
                 ("n", "n"), ("max_new_tokens", "max tokens"), ("lr", "lr"), ("adapter", "weights"),
                 ("self_distillation.alpha", "alpha"), ("self_distillation.teacher_regularization", "teacher"))


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def settings_summary(config: dict[str, Any], model: str, default_model: str,
                     keys: Sequence[tuple[str, str]]) -> str:
    """'Ran with: model tiny · strategy sdpo · budget 16 · ...' (the settings stored on the job; the values a
    job ran with, defaults filled in when it was submitted)."""
    name = (model or default_model or "").rstrip("/").rsplit("/", 1)[-1] or "default"
    parts = [f"model `{html.escape(name)}`"]
    parts += [f"{label} **{html.escape(fmt_value(get_path(config, path)))}**" for path, label in keys
              if has_path(config, path) and get_path(config, path) is not None]
    return "Settings: " + " · ".join(parts)
