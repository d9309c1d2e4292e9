"""System page: health of the database, the broker and the workers (queue length, live workers, GPU info
reported by workers), versions, data dir and model path."""

from __future__ import annotations

import html

import gradio as gr

from app.context import AppContext
from backend.services.health import health


def _mark(state: str) -> str:
    if state == "ok":
        return '<span class="sdpo-dot-ok">●</span> ok'
    return f'<span class="sdpo-dot-bad">●</span> {html.escape(state)}'


def _dot(ok: bool) -> str:
    return '<span class="sdpo-dot-ok">●</span>' if ok else '<span class="sdpo-dot-warn">●</span>'



def health_markdown(ctx: AppContext) -> str:
    with ctx.session() as s:
        h = health(s, settings=ctx.settings, queue=ctx.queue)
    lines = [
        "| part | state |", "|---|---|",
        f"| database | {_mark(h.database)} |",
        f"| broker | {_mark(h.broker)} |",
        f"| queue `{h.queue}` | {'-' if h.queue_length is None else f'{h.queue_length} waiting'} |",
        f"| workers | {_dot(bool(h.workers))} {len(h.workers)} live |",
        f"| jobs | {', '.join(f'{k}: {v}' for k, v in h.jobs_by_status.items())} |",
        f"| data dir | `{h.data_dir}` |",
        f"| model | `{h.model}` |",
    ]
    out = ["### Services", *lines, "", "### Workers"]
    if not h.workers:
        out.append("No live worker: queued jobs wait until one starts (`sdpo worker`).")
    else:
        out += ["| worker | host | pid | queue | current job | last seen | GPUs |", "|---|---|---|---|---|---|---|"]
        for w in h.workers:
            gpus = w.info.get("gpus") if isinstance(w.info, dict) else None
            gpu_text = ", ".join(gpus) if gpus else "CPU"
            out.append(f"| `{w.id}` | {w.hostname} | {w.pid} | {w.queue} | {w.current_job_id or '-'} | "
                       f"{w.last_seen.strftime('%H:%M:%S')} | {html.escape(gpu_text)} |")
    out += ["", "### Versions", "| package | version |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in h.versions.items()]
    return "\n".join(out)


def build(ctx: AppContext):
    refresh_btn = gr.Button("Refresh", elem_id="system-refresh")
    view = gr.Markdown("Open this tab or press Refresh to check the services.", elem_id="system-health")
    refresh_btn.click(lambda: health_markdown(ctx), None, view, api_visibility="private")
    return refresh_btn, view, lambda: health_markdown(ctx)
