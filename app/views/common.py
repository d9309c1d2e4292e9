"""Small helpers shared by the views: typed values from text boxes, dotted config paths, status lines."""

from __future__ import annotations

import html
import math
from typing import Any

import yaml

from backend.errors import InvalidInput
from backend.models import TERMINAL_STATUSES
from backend.schemas import JobDetail

STATUS_ICONS = {"queued": "⏳", "running": "▶️", "succeeded": "✅", "failed": "❌", "cancelled": "⏹"}


def parse_value(raw: Any) -> Any:
    """A config value from a text box: int, float, true/false/null, a YAML list, else the text itself.
    Empty text is None (meaning "keep the default")."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if not text:
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_int(field: str, raw: Any, *, what: str, minimum: int = 1) -> int:
    """A whole number from a text box, or ``InvalidInput`` naming the field and what it expects."""
    if isinstance(raw, bool):
        raise InvalidInput(field, f"got {raw!r}; expected {what}")
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = raw
    else:
        text = str(raw or "").strip()
        if not text:
            raise InvalidInput(field, f"is empty; expected {what}")
        try:
            value = float(text)
        except ValueError:
            raise InvalidInput(field, f"got {text!r}; expected {what}") from None
    if not math.isfinite(value) or value != int(value):
        raise InvalidInput(field, f"got {raw!r}; expected {what}")
    if value < minimum:
        raise InvalidInput(field, f"got {int(value)}; must be >= {minimum}")
    return int(value)


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


def parse_yaml_mapping(field: str, text: str | None) -> dict[str, Any]:
    """A mapping from a YAML editor (empty -> {}), or ``InvalidInput`` naming the field."""
    if not text or not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidInput(field, f"not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput(field, f"expected a mapping of settings (key: value), got {type(data).__name__}")
    return data


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


def error_md(message: str) -> str:
    """A visible error message block (the text is escaped)."""
    return f'<div class="sdpo-error" role="alert">⚠️ {html.escape(message)}</div>'


def ok_md(message: str) -> str:
    return f'<div class="sdpo-ok">{html.escape(message)}</div>'


def status_line(d: JobDetail) -> str:
    """'Job 3 · running · 12 s elapsed · ...' for the job views."""
    icon = STATUS_ICONS.get(d.status, "")
    if d.started_at is None:
        from backend.models import utcnow

        timing = f"queued {fmt_duration((utcnow() - d.created_at).total_seconds())} ago"
    else:
        verb = "took" if d.status in TERMINAL_STATUSES else "elapsed"
        timing = f"{verb} {fmt_duration(d.duration_s)}" if verb == "took" else f"{fmt_duration(d.duration_s)} {verb}"
    parts = [f"**Job {d.id}** ({d.kind})", f"{icon} **{d.status}**", timing]
    if d.cancel_requested and d.status == "running":
        parts.append("cancelling…")
    if d.worker_id:
        parts.append(f"worker `{d.worker_id}`")
    return " · ".join(parts)


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES
