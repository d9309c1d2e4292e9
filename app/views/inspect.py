"""What the Solve page shows about one attempt: its header, the verdict and feedback, what the self-teacher saw
(its context: which sibling was the demonstration, which feedback, or none) with the round's numbers, and the
per-token view (the response's tokens coloured by teacher minus student log-probability, and the tokens where
the teacher disagrees most with the teacher's preferred alternatives). Pure functions of
``backend.services.teacher.AttemptInspection``; the page lays them out."""

from __future__ import annotations

import html
import math
from typing import Any

from backend.services import teacher as T

STRATEGY_NAMES = {"sdpo": "SDPO test-time training", "best_of_k": "Best-of-k sampling",
                  "multiturn": "Multi-turn retries"}
NO_TEACHER = {
    "best_of_k": "Best-of-k sampling has no teacher: attempts are sampled and scored, nothing is distilled and "
                 "the weights never change.",
    "multiturn": "Multi-turn retries have no teacher: the feedback goes into the next attempt's prompt, nothing "
                 "is distilled and the weights never change.",
}
# Colour scale of the per-token view: full colour at this many nats of teacher - student (or the attempt's
# largest difference, if smaller, so that small models' small differences still show).
FULL_COLOUR_NATS = 2.0


def _fmt(x: float | None, digits: str = ".3g") -> str:
    return "–" if x is None else format(x, digits)


def header_md(a: T.AttemptInspection) -> str:
    """'**Attempt 3** · round 0 · public 1/2 · hidden – · reward 0 · 384 tokens · 2.1 s'."""
    hidden = "–" if a.total_hidden is None else f"{a.passed_hidden}/{a.total_hidden}"
    solved = a.total_public > 0 and a.passed_public == a.total_public and (
        a.total_hidden is None or a.passed_hidden == a.total_hidden)
    verdict = "solved ✓" if solved else ("public tests pass, hidden fail" if a.passed_public == a.total_public
                                         and a.total_public else "failed")
    return (f"**Attempt {a.number}** (round {a.round}) · {verdict} · public {a.passed_public}/{a.total_public} · "
            f"hidden {hidden} · reward {a.reward:g} · {a.tokens} tokens · {a.seconds:.1f} s")


def feedback_text(a: T.AttemptInspection) -> str:
    """The feedback the environment gave (what the teacher and a multi-turn retry see)."""
    if a.feedback:
        return a.feedback
    if a.total_public and a.passed_public == a.total_public:
        return "All public tests passed (no feedback)."
    return "(no feedback)"


def round_md(a: T.AttemptInspection) -> str:
    """The round's SDPO numbers: loss, teacher-student KL, fraction distilled, whether the weights changed."""
    m = a.round_metrics
    if a.strategy in NO_TEACHER:
        return f"Round {a.round}: {a.round_updated or 'in progress'}."
    if not m:
        return f"Round {a.round}: " + ("the job stopped before its update." if a.finished
                                       else "still running (its update has not finished).")
    parts = [f"Round {a.round}"]
    if "sdpo/reprompt_sample_fraction" in m:
        parts.append(f"distilled {m['sdpo/reprompt_sample_fraction']:.0%} of its attempts")
    if "sdpo/loss" in m:
        parts.append(f"loss {_fmt(m['sdpo/loss'])}")
    if "sdpo/kl_mean" in m:
        parts.append(f"teacher–student KL {_fmt(m['sdpo/kl_mean'])}")
    parts.append(f"weights updated: **{a.round_updated or 'not yet'}**")
    return " · ".join(parts)


def teacher_md(a: T.AttemptInspection) -> str:
    """Which teacher context this attempt got (or why there is none), then the round's numbers."""
    if a.teacher_status == T.HAS_VIEW:
        if not a.distilled:
            what = ("**No teacher signal — not distilled.** No sibling in its round succeeded and it has no "
                    "feedback to show, so the teacher would see the plain question.")
        else:
            shown = []
            if a.demonstration is not None:
                shown.append(f"attempt **{a.demonstration}** (a sibling that passed the public tests) as the "
                             "demonstration")
            if a.teacher_feedback:
                shown.append("**its own feedback**")
            what = "Teacher context: the question with " + " and ".join(shown) + "."
    elif a.teacher_status == T.NO_TEACHER_STRATEGY:
        what = NO_TEACHER.get(a.strategy, "This strategy has no teacher.")
    elif a.teacher_status == T.NO_TEACHER_LOSS:
        what = "The GRPO loss has no teacher: the update uses the rewards only."
    elif a.teacher_status == T.SOLVED_ROUND:
        what = "This round found the solution, so it is not distilled (the run ends here)."
    elif a.finished:
        what = "No teacher view: the job stopped before this round's teacher view was recorded."
    else:
        what = "The teacher's view of this round is not recorded yet (it is written before the round's update)."
    return what + "\n\n" + round_md(a)


def context_text(a: T.AttemptInspection) -> str:
    """The re-prompt the teacher read (the last user message), or what there is instead."""
    if a.teacher_status != T.HAS_VIEW:
        return ""
    return a.context or "(not distilled: the teacher would see the plain question)"


def _colour(delta: float, scale: float) -> str:
    """Background of a token: red where the teacher gives it less probability than the student, green where
    more; the strength grows with |delta| up to ``scale`` nats."""
    strength = min(1.0, abs(delta) / scale) if scale > 0 else 0.0
    alpha = 0.08 + 0.62 * strength if abs(delta) > 1e-9 else 0.0
    rgb = "220,38,38" if delta < 0 else "22,163,74"
    return f"rgba({rgb},{alpha:.2f})"


def _piece(text: str) -> str:
    """A token's text for the HTML view: escaped, newlines shown (↵) and kept, tabs as arrows."""
    if text == "":
        return '<span class="sdpo-tok-empty">·</span>'
    out = html.escape(text).replace("\t", "→   ")
    return out.replace("\n", '<span class="sdpo-nl">↵</span>\n')


def _prob(lp: float) -> str:
    p = math.exp(lp)
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def credit_html(a: T.AttemptInspection) -> str:
    """The per-token view as HTML (or a sentence saying why there is none)."""
    c: dict[str, Any] | None = a.credit
    why = {T.NO_TEACHER_STRATEGY: f"{STRATEGY_NAMES.get(a.strategy, a.strategy)} has no teacher",
           T.NO_TEACHER_LOSS: "the GRPO loss has no teacher",
           T.SOLVED_ROUND: "the round that found the solution is not distilled",
           T.NOT_RECORDED: "the job stopped before this round's teacher view was recorded" if a.finished
           else "the teacher's view of this round is not recorded yet"}.get(a.teacher_status)
    if why is None and not a.distilled:
        why = "this attempt is not distilled (no teacher signal)"
    if why is not None:
        return f'<div class="sdpo-credit-none">No per-token view: {html.escape(why)}.</div>'
    if c is None:
        return ('<div class="sdpo-credit-none">No per-token view: it was switched off for this job '
                '(token_view: false).</div>')
    tokens, ls, lt = c["tokens"], c["student_logprobs"], c["teacher_logprobs"]
    deltas = [t - s for s, t in zip(ls, lt, strict=True)]
    biggest = max((abs(d) for d in deltas), default=0.0)
    scale = min(FULL_COLOUR_NATS, biggest) or 1.0
    marked = {d["position"]: n for n, d in enumerate(c["disagreements"], 1)}
    spans = []
    for i, (piece, s, t, d) in enumerate(zip(tokens, ls, lt, deltas, strict=True)):
        tip = (f"token {i + 1}: student p={_prob(s)}, teacher p={_prob(t)}, "
               f"teacher − student log p = {d:+.3f}")
        mark = f'<sup class="sdpo-tok-mark">{marked[i]}</sup>' if i in marked else ""
        cls = "sdpo-tok sdpo-tok-worst" if i in marked else "sdpo-tok"
        spans.append(f'<span class="{cls}" style="background:{_colour(d, scale)}" '
                     f'title="{html.escape(tip)}">{_piece(piece)}</span>{mark}')
    cut = c["total_tokens"] - len(tokens)
    more = f'<span class="sdpo-credit-cut"> … {cut} more tokens not shown</span>' if cut > 0 else ""
    mean = sum(deltas) / len(deltas) if deltas else 0.0
    legend = (
        '<div class="sdpo-credit-legend">'
        '<span class="sdpo-swatch" style="background:rgba(220,38,38,0.7)"></span> teacher less likely than the '
        'student (pushed down) '
        '<span class="sdpo-swatch" style="background:rgba(22,163,74,0.7)"></span> teacher more likely (pushed up) · '
        f'full colour at |Δ| ≥ {scale:.2g} nats · mean Δ {mean:+.3f} over {len(tokens)} tokens · '
        f'temperature {c.get("temperature", 1.0):g} · hover a token for its numbers</div>')
    rows = []
    for n, d in enumerate(c["disagreements"], 1):
        alts = ", ".join(f'<code>{html.escape(repr_token(x["token"]))}</code> {x["prob"]:.2g}'
                         for x in d["teacher_top"])
        rows.append(
            f'<tr><td>{n}</td><td>{d["position"] + 1}</td><td><code>{html.escape(repr_token(d["token"]))}</code></td>'
            f'<td>{_prob(d["student_logprob"])}</td><td>{_prob(d["teacher_logprob"])}</td>'
            f'<td>{d["teacher_logprob"] - d["student_logprob"]:+.3f}</td><td>{alts}</td></tr>')
    table = (
        '<table class="sdpo-worst"><thead><tr><th></th><th>token #</th><th>sampled</th><th>student p</th>'
        '<th>teacher p</th><th>Δ log p</th><th>teacher prefers (p)</th></tr></thead><tbody>'
        + "".join(rows) + "</tbody></table>") if rows else (
        '<div class="sdpo-credit-none">The teacher gives every token at least the student\'s probability.</div>')
    return (f'<div class="sdpo-credit">{legend}<div class="sdpo-credit-text">{"".join(spans)}{more}</div>'
            f'<div class="sdpo-credit-title">Where the teacher disagrees most</div>{table}</div>')


def repr_token(text: str) -> str:
    """A token as text for a table cell: line breaks, tabs and leading or trailing spaces made visible."""
    text = text.replace("\n", "↵").replace("\t", "→")
    core = text.strip(" ")
    if not core:
        return "␣" * len(text)
    lead = len(text) - len(text.lstrip(" "))
    trail = len(text) - len(text.rstrip(" "))
    return "␣" * lead + core + "␣" * trail


CSS = """
.sdpo-credit { font-size: 0.92em; }
.sdpo-credit-legend { color: var(--body-text-color-subdued); margin-bottom: 6px; }
.sdpo-swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px; vertical-align: -2px; }
.sdpo-credit-text { font-family: var(--font-mono); white-space: pre-wrap; word-break: break-word; line-height: 1.7;
                    border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 8px 10px;
                    max-height: 320px; overflow-y: auto; background: var(--background-fill-primary); }
.sdpo-tok { border-radius: 3px; padding: 1px 0; }
.sdpo-tok-worst { outline: 2px solid #b42318; outline-offset: -1px; }
.sdpo-tok-mark { color: #b42318; font-weight: 700; font-family: var(--font); margin-right: 1px; }
.sdpo-tok-empty { color: var(--body-text-color-subdued); }
.sdpo-nl { color: var(--body-text-color-subdued); }
.sdpo-credit-cut { color: var(--body-text-color-subdued); font-style: italic; }
.sdpo-credit-title { font-weight: 600; margin: 10px 0 4px; }
.sdpo-credit-none { color: var(--body-text-color-subdued); padding: 6px 0; }
table.sdpo-worst { border-collapse: collapse; width: 100%; }
table.sdpo-worst th, table.sdpo-worst td { border-bottom: 1px solid var(--border-color-primary); padding: 3px 8px;
                                           text-align: left; vertical-align: top; }
table.sdpo-worst td:nth-child(1) { color: #b42318; font-weight: 700; }
table.sdpo-worst code { font-family: var(--font-mono); background: var(--background-fill-secondary);
                        border-radius: 3px; padding: 0 3px; }
"""
