"""Solve page: write or pick a problem (statement + tests), pick a strategy and budget, submit (an invalid
value is named next to the box it came from); then the live job view: status, the settings it runs with, the
attempts table (with each attempt's teacher context), the discovery curve, the rounds table (each SDPO update:
loss, teacher-student KL, fraction distilled, whether the weights changed), Cancel, and the solution with
copy/download once it is found. A selected attempt shows its raw response, extracted code, verdict and
feedback, what the self-teacher saw, and the per-token view of what it says (``app.views.inspect``).

Handlers are plain functions of the page's values (testable without a browser); ``build`` lays out the page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from app.context import AppContext
from app.views import inspect as I
from app.views.common import (
    SOLVE_SUMMARY,
    error_md,
    get_path,
    has_path,
    is_terminal,
    job_id_of,
    line_chart,
    ok_md,
    plot_frame,
    progress_text,
    settings_summary,
    status_line,
)
from backend.errors import EnqueueError, IllegalTransition, InvalidInput, NotFound
from backend.schemas import RawConfig
from backend.services import jobs as J
from backend.services import picker as P
from backend.services import teacher as T
from backend.services import ui as U

STRATEGIES = [("SDPO test-time training", "sdpo"), ("Best-of-k sampling", "best_of_k"),
              ("Multi-turn retries", "multiturn")]
# The "Advanced" accordion: (config path, label). Only the paths the engine's config has are shown.
ADVANCED = (
    ("self_distillation.alpha", "alpha (0 = forward KL, 1 = reverse KL)"),
    ("self_distillation.distillation_topk", "top-k of the distilled distribution"),
    ("lr", "learning rate"),
    ("self_distillation.teacher_regularization", "teacher (ema | trust-region | live)"),
    ("self_distillation.teacher_update_rate", "EMA rate of the teacher"),
    ("n", "attempts per round (n)"),
    ("temperature", "sampling temperature"),
    ("max_new_tokens", "max tokens per attempt"),
)
# "attempt" is the 1-based number of attempts.jsonl, `sdpo jobs show` and the attempt header; rounds count from 0
ATTEMPT_COLUMNS = ["attempt", "round", "public", "hidden", "reward", "tokens", "teacher context", "solved"]
ROUND_COLUMNS = ["round", "attempts", "best public", "distilled", "loss", "teacher–student KL", "weights updated"]
CURVE_COLUMNS = ["attempt", "tests passed", "tests"]
# Where a form error is shown: next to the box it names (``error_slot``).
SLOTS = ("statement", "tests", "json", "budget", "model", "advanced", "extra", "main")
SLOT_NAMES = {"statement": "the statement", "tests": "the tests", "json": "the problem JSON", "budget": "Attempt "
              "budget", "model": "Model", "advanced": "Advanced", "extra": "Other settings"}
PROBLEM_FIELDS = ("title", "statement", "tests", "hidden_tests", "starter_code", "fn_name", "testtype", "json",
                  "problem", "time_limit")
EXAMPLE_STATEMENT = """# Sum of two numbers

Read two integers `a` and `b` from one line of standard input and print `a + b`.
"""
EXAMPLE_ROWS = [["1 2", "3", False], ["10 -4", "6", False], ["100 200", "300", True]]


def advanced_fields(defaults: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(path, label, default) of the Advanced settings the engine's solve config has."""
    return [(p, label, get_path(defaults, p)) for p, label in ADVANCED if has_path(defaults, p)]


def _fmt_default(v: Any) -> str:
    return "" if v is None else str(v)


# -------------------------------------------------------------------------------------------- handlers
def build_problem(ctx: AppContext, *, source: str, title: str, statement: str, testtype: str, fn_name: str,
                  rows: Any, json_text: str, starter_code: str) -> dict[str, Any]:
    """The problem dict of the form: from the tests editor or from pasted JSON."""
    if source == "json":
        return U.problem_from_json(json_text, parse_lcb=ctx.hooks.parse_lcb)
    if isinstance(rows, pd.DataFrame):
        rows = rows.values.tolist()
    return U.problem_from_form(title=title, statement=statement, testtype=testtype, fn_name=fn_name,
                               rows=rows or [], starter_code=starter_code)


def problem_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, key) of the problems in registered datasets with a ``problems.jsonl`` (the picker's list)."""
    with ctx.session() as s:
        return [(c.label, c.key) for c in P.list_dataset_problems(s)]


def pick_problem(ctx: AppContext, key: Any) -> dict[str, Any]:
    """The problem dict of a picker entry (``InvalidInput`` / ``NotFound`` name what is wrong)."""
    dataset_id, index = P.parse_choice_key(key)
    with ctx.session() as s:
        return P.load_dataset_problem(s, dataset_id=dataset_id, index=index)


def build_solve_config(*, strategy: str, budget: Any, adapter: str, extra_yaml: str,
                       advanced: dict[str, Any]) -> RawConfig:
    """The solve config of the form as typed: strategy and adapter (choices), the budget and Advanced boxes
    (text; empty = the default) and the free-form YAML. The engine reads the text when it validates the job
    (one parser for forms, command lines and config files: ``1e-5`` is a number everywhere)."""
    values: dict[str, Any] = {"strategy": strategy}
    if adapter:
        values["adapter"] = adapter
    fields = (("budget", "" if budget is None else str(budget)),
              *((path, "" if raw is None else str(raw)) for path, raw in advanced.items()))
    return RawConfig(values=values, fields=fields, text=extra_yaml or "", text_field="extra settings")


def error_slot(field: str, *, source: str, advanced: Sequence[str]) -> str:
    """The message box (one of ``SLOTS``) next to the control an error about ``field`` concerns: the problem's
    fields go to the statement, the tests editor or the pasted JSON (whichever is in use), ``budget`` and
    ``model`` to their boxes, the Advanced settings to the Advanced box, any other setting to Other settings
    (where it would be typed), the strategy and weights choices to the message under Solve."""
    head = field.split(" ")[0]
    top = head.split(".")[0]
    if field in ("budget", "model"):
        return field
    if head in advanced:
        return "advanced"
    if top in PROBLEM_FIELDS:
        if source == "json":
            return "json"
        return "statement" if top in ("title", "statement", "problem", "starter_code") else "tests"
    if field in ("strategy", "adapter"):
        return "main"
    return "extra"


def submit(ctx: AppContext, *, problem: dict[str, Any], config: dict[str, Any] | RawConfig, model: str = "") -> int:
    """Create the problem and queue the job; ``InvalidInput`` leaves nothing stored or queued."""
    with ctx.session() as s:
        job = U.submit_solve(s, problem=problem, config=config, settings=ctx.settings,
                             parse_problem=ctx.hooks.parse_problem, validate=ctx.hooks.validate_config,
                             enqueue=ctx.queue.enqueue, model=(model or "").strip())
        return job.id


@dataclass
class SolveSnapshot:
    """Everything the job view shows at one moment."""

    status_md: str
    status: str
    terminal: bool
    cancellable: bool
    settings_md: str
    config: dict[str, Any]
    attempts: pd.DataFrame
    attempt_ids: list[int]
    curve: pd.DataFrame
    curve_max: int
    budget: int
    rounds: pd.DataFrame
    teacher_note: str
    solution: str | None
    error: str | None
    signature: tuple


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "" if x is None else format(x, fmt)


def snapshot(ctx: AppContext, job_id: int) -> SolveSnapshot:
    """Read the job, its attempts (with their teacher contexts in brief), its rounds and its discovery curve
    (raises ``NotFound``)."""
    with ctx.session() as s:
        d = J.job_detail(s, job_id=job_id)
        attempts = J.list_attempts(s, job_id=job_id)
        rows = U.attempt_rows(attempts)
        curve = U.discovery_curve(attempts)
        sol = U.solution_attempt(s, job_id=job_id)
        solution = sol.code if sol else None
        problem = J.get_job(s, job_id=job_id).problem
        n_public = problem.n_public_tests if problem else (attempts[0].total_public if attempts else 0)
        n_hidden = problem.n_hidden_tests if problem else 0
        progress = U.job_progress(s, job_id=job_id, kind="solve", config=d.config)
        briefs = T.teacher_briefs(s, job_id=job_id)
        rounds = T.round_rows(s, job_id=job_id)
    strategy = d.config.get("strategy", "")
    line = status_line(d)
    if rows:
        best = max(r.reward for r in rows)
        line += f" · {len(rows)} attempts · best reward {best:g}"
    budget = d.config.get("budget")
    if budget:
        line += f" / budget {budget}"
    if progress is not None:
        line += progress_text(progress, running=d.status == "running" and solution is None)
    if solution is not None:
        line += " · **solved** 🎉"

    def teacher_cell(r) -> str:
        if strategy in I.NO_TEACHER or d.config.get("loss") == "grpo":
            return "–"
        b = briefs.get((r.round, r.index))
        return b.label if b is not None else ("–" if is_terminal(d.status) else "…")

    df = pd.DataFrame([[r.number, r.round, r.public, r.hidden, r.reward, r.tokens, teacher_cell(r),
                        "✓" if r.solved else ""] for r in rows], columns=ATTEMPT_COLUMNS)
    points = []
    for n, pub, hid in curve:
        points.append([n, pub, f"public tests (of {n_public})"])
        if hid is not None:
            points.append([n, hid, f"hidden tests (of {n_hidden})"])
    rounds_df = pd.DataFrame([[r.round, r.attempts, r.best, "" if r.distilled is None else f"{r.distilled:.0%}",
                               _num(r.loss), _num(r.kl), r.updated] for r in rounds], columns=ROUND_COLUMNS)
    note = I.NO_TEACHER.get(strategy, "")
    if not note and d.config.get("loss") == "grpo":
        note = "The GRPO loss has no teacher: each update uses the rewards only."
    return SolveSnapshot(
        status_md=line, status=d.status, terminal=is_terminal(d.status),
        cancellable=d.status in ("queued", "running") and not d.cancel_requested,
        settings_md=settings_summary(d.config, d.model, ctx.settings.model, SOLVE_SUMMARY), config=d.config,
        attempts=df, attempt_ids=[r.id for r in rows],
        curve=plot_frame(points, CURVE_COLUMNS), curve_max=max(1, n_public or 0, n_hidden or 0),
        budget=int(budget) if isinstance(budget, int) else max(1, len(rows)), rounds=rounds_df, teacher_note=note,
        solution=solution, error=d.error,
        signature=(d.id, d.status, d.cancel_requested, len(rows), len(briefs),
                   tuple(r.updated for r in rounds), solution is not None, d.error),
    )


def curve_chart(snap: SolveSnapshot):
    """The discovery curve: best tests passed so far against the attempt number, over the whole budget."""
    return line_chart(snap.curve, title="Discovery curve: best tests passed so far", x_domain=(1, snap.budget),
                      y_domain=(0, snap.curve_max), y_integer=True, height=220, step=True)


@dataclass
class AttemptView:
    """The selected attempt's panels."""

    header: str
    response: str
    code: str
    feedback: str
    teacher: str
    context: str
    tokens: str


def attempt_view(ctx: AppContext, attempt_id: int) -> AttemptView:
    """Header, raw response, extracted code, feedback, teacher context (with the round's numbers) and the
    per-token view of one attempt."""
    with ctx.session() as s:
        a = T.attempt_inspection(s, attempt_id=attempt_id)
    if a is None:
        return AttemptView("Attempt not found", "", "", "", "", "", "")
    code = a.code if a.code is not None else "# no code block found in the response (see the raw response)\n"
    header = I.header_md(a)
    raw = J.raw_response_path(jobs_dir=ctx.settings.jobs_dir, job_id=a.job_id, round=a.round, index=a.index)
    if raw.exists():  # the stored texts had to be escaped or cut; the response as the model wrote it
        header += f" · raw response: `{raw}`"
    return AttemptView(header=header, response=a.response, code=code, feedback=I.feedback_text(a),
                       teacher=I.teacher_md(a), context=I.context_text(a), tokens=I.credit_html(a))


def solution_file(ctx: AppContext, job_id: int, code: str) -> str:
    """Write the solution to ``<jobs_dir>/<id>/solution.py`` and return the path (for download)."""
    folder = ctx.settings.job_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "solution.py"
    path.write_text(code, encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------------ page
@dataclass
class SolveHandles:
    """Components other pages drive (History opens a job here)."""

    job_id: gr.Textbox
    open_fn: Any
    open_outputs: list


def _slot(elem: str) -> gr.HTML:
    return gr.HTML("", visible=False, elem_id=f"solve-{elem}-message", padding=False)


def build(ctx: AppContext) -> SolveHandles:
    defaults, defaults_error = ctx.defaults("solve")
    adv = advanced_fields(defaults)

    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gr.Markdown("### Problem")
            try:
                choices, picker_note = problem_choices(ctx), ""
            except InvalidInput as e:
                choices, picker_note = [], error_md(str(e))
            with gr.Row(equal_height=True):
                picker = gr.Dropdown(choices, value=None, label="Pick an example problem (dataset 'examples') or an "
                                     "imported one (datasets with problems.jsonl, e.g. from 'sdpo data import-lcb')",
                                     elem_id="solve-picker", scale=4)
                picker_refresh = gr.Button("Refresh list", elem_id="solve-picker-refresh", scale=0)
            picker_msg = gr.HTML(picker_note, elem_id="solve-picker-message")
            title = gr.Textbox(label="Title", placeholder="(first line of the statement)", elem_id="solve-title")
            with gr.Tabs():
                with gr.Tab("Write"):
                    statement = gr.Textbox(label="Statement (markdown)", value=EXAMPLE_STATEMENT, lines=9,
                                           max_lines=30, elem_id="solve-statement")
                with gr.Tab("Preview"):
                    preview = gr.Markdown(EXAMPLE_STATEMENT, elem_id="solve-preview")
            statement_msg = _slot("statement")
            statement.change(lambda t: t, statement, preview, api_visibility="private", queue=False)
            source = gr.Radio([("Tests editor", "editor"), ("Paste JSON (problem or LiveCodeBench row)", "json")],
                              value="editor", label="Tests", elem_id="solve-source")
            with gr.Group(visible=True) as editor_group:
                with gr.Row():
                    testtype = gr.Radio(["stdin", "functional"], value="stdin", label="Test type",
                                        elem_id="solve-testtype")
                    fn_name = gr.Textbox(label="Function name (functional tests)", elem_id="solve-fn-name")
                tests = gr.Dataframe(
                    value=EXAMPLE_ROWS, headers=["input", "expected output", "hidden"],
                    datatype=["str", "str", "bool"], type="array", interactive=True, row_count=(3, "dynamic"),
                    column_count=(3, "fixed"), label="Tests: input → expected (hidden rows decide discovery only)",
                    elem_id="solve-tests",
                )
            tests_msg = _slot("tests")
            with gr.Group(visible=False) as json_group:
                json_text = gr.Code(language="json", label="Problem JSON or LiveCodeBench row", lines=10,
                                    elem_id="solve-json")
            json_msg = _slot("json")
            with gr.Accordion("Starter code (optional)", open=False):
                starter = gr.Code(language="python", label="Starter code", lines=5, elem_id="solve-starter")
            source.change(lambda v: (gr.Group(visible=v == "editor"), gr.Group(visible=v == "json")), source,
                          [editor_group, json_group], api_visibility="private", queue=False)

            def on_pick(key):
                """Put the chosen problem (hidden tests included) into the JSON source and show it."""
                if not key:
                    return (gr.skip(),) * 8
                try:
                    problem = pick_problem(ctx, key)
                except (InvalidInput, NotFound) as e:
                    return (error_md(str(e)),) + (gr.skip(),) * 7
                return (ok_md("Loaded: the problem JSON below (with its hidden tests) is what Solve submits."),
                        str(problem.get("title") or ""), str(problem.get("statement") or ""), "json",
                        gr.Group(visible=False), gr.Group(visible=True),
                        json.dumps(problem, indent=2, ensure_ascii=False), problem.get("starter_code") or "")

            picker.input(on_pick, picker, [picker_msg, title, statement, source, editor_group, json_group, json_text,
                                           starter], api_visibility="private")

            def on_picker_refresh():
                try:
                    return gr.Dropdown(choices=problem_choices(ctx), value=None), ""
                except InvalidInput as e:
                    return gr.Dropdown(choices=[], value=None), error_md(str(e))

            picker_refresh.click(on_picker_refresh, None, [picker, picker_msg], api_visibility="private")

        with gr.Column(scale=2):
            gr.Markdown("### Run")
            strategy = gr.Radio(STRATEGIES, value="sdpo", label="Strategy", elem_id="solve-strategy")
            budget = gr.Textbox(label="Attempt budget", value=str(defaults.get("budget", 16)),
                                elem_id="solve-budget")
            budget_msg = _slot("budget")
            model = gr.Textbox(label="Model", placeholder=f"default: {ctx.settings.model}", elem_id="solve-model",
                               info="The budget and the Advanced values below are the defaults for this model: "
                               "CPU-sized for the demo models or without a GPU, the paper's on a GPU.")
            defaults_msg = gr.HTML(error_md(defaults_error) if defaults_error else "", visible=bool(defaults_error),
                                   elem_id="solve-defaults-message")
            adapter = gr.Radio([("LoRA adapter", "lora"), ("Full fine-tune", "full")],
                               value=defaults.get("adapter", "lora") if defaults.get("adapter") in ("lora", "full")
                               else "lora", label="Weights updated", elem_id="solve-adapter")
            with gr.Accordion("Advanced (SDPO settings)", open=False, elem_id="solve-advanced") as advanced:
                adv_boxes = [gr.Textbox(label=label, value=_fmt_default(v), elem_id=f"solve-adv-{p.replace('.', '-')}")
                             for p, label, v in adv]
                advanced_msg = _slot("advanced")
                extra = gr.Code(language="yaml", label="Other settings (YAML, e.g. ppo_epochs: 2)", lines=3,
                                elem_id="solve-extra")
                extra_msg = _slot("extra")
            submit_btn = gr.Button("Solve", variant="primary", elem_id="solve-submit")
            message = gr.HTML(elem_id="solve-message")

            def on_model(model_v):
                """Show the defaults of the model typed in (they are what a submission leaves unset gets)."""
                d, err = ctx.defaults("solve", model_v)
                if err:
                    return (gr.HTML(error_md(err), visible=True), gr.skip(), *(gr.skip() for _ in adv))
                return (gr.HTML("", visible=False), str(d.get("budget", "")),
                        *(_fmt_default(get_path(d, p)) for p, _, _ in adv))

            for event in (model.submit, model.blur):
                event(on_model, model, [defaults_msg, budget, *adv_boxes], api_visibility="private")

    gr.Markdown("---\n### Job")
    with gr.Row():
        job_id = gr.Textbox(label="Job id", value="", placeholder="job number", elem_id="solve-job-id", scale=1,
                            max_lines=1)
        open_btn = gr.Button("Open", elem_id="solve-open", scale=0)
        cancel_btn = gr.Button("Cancel job", variant="stop", visible=False, elem_id="solve-cancel", scale=0)
    job_msg = gr.HTML("", elem_id="solve-job-message", padding=False)
    status = gr.Markdown("No job yet: submit a problem, or open one from History.", elem_id="solve-status")
    settings_md = gr.Markdown("", elem_id="solve-settings")
    with gr.Accordion("Every setting of this job", open=False, elem_id="solve-settings-all"):
        settings_json = gr.JSON(value=None, label="Settings (as stored with the job)", elem_id="solve-settings-json")
    error_box = gr.Textbox(label="Error", visible=False, lines=4, elem_id="solve-error")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            attempts = gr.Dataframe(value=pd.DataFrame(columns=ATTEMPT_COLUMNS), interactive=False,
                                    label="Attempts (click a row for its response, feedback and what the teacher "
                                    "says)", max_height=300, elem_id="solve-attempts")
        with gr.Column(scale=2):
            curve = gr.Plot(value=None, show_label=False, elem_id="solve-curve")
    teacher_note = gr.Markdown("", elem_id="solve-teacher-note")
    rounds = gr.Dataframe(value=pd.DataFrame(columns=ROUND_COLUMNS), interactive=False, max_height=220,
                          label="Rounds: what each SDPO update did (KL: on the distilled tokens)",
                          elem_id="solve-rounds")
    gr.Markdown("### Selected attempt")
    attempt_header = gr.Markdown("Click an attempt in the table.", elem_id="solve-attempt-header")
    with gr.Row(equal_height=False):
        attempt_response = gr.Textbox(label="Raw response (as the model wrote it)", lines=10, max_lines=18,
                                      interactive=False, elem_id="solve-attempt-response")
        attempt_code = gr.Code(language="python", label="Extracted code", lines=10, interactive=False,
                               elem_id="solve-attempt-code")
    with gr.Row(equal_height=False):
        attempt_feedback = gr.Textbox(label="Verdict feedback (from the tests)", lines=8, max_lines=14,
                                      interactive=False, elem_id="solve-attempt-feedback")
        with gr.Column():
            attempt_teacher = gr.Markdown("", elem_id="solve-attempt-teacher")
            attempt_context = gr.Textbox(label="The teacher's prompt (question + demonstration / feedback)",
                                         lines=6, max_lines=12, interactive=False, elem_id="solve-attempt-context")
    gr.Markdown("#### Per-token view: teacher − student log-probability of each token")
    attempt_tokens = gr.HTML("", elem_id="solve-attempt-tokens")
    with gr.Group(visible=False) as solution_group:
        gr.Markdown("### ✅ Solution")
        solution_code = gr.Code(language="python", label="Solution (copy button at the top right)",
                                interactive=False, elem_id="solve-solution")
        solution_dl = gr.DownloadButton("Download solution.py", elem_id="solve-download")
    timer = gr.Timer(1.0, active=False)
    attempt_ids = gr.State([])
    signature = gr.State(None)
    selected = gr.State(None)  # the attempt id shown in the detail panels
    msg_about = gr.State(None)  # [job id, status] the message under Solve describes; cleared once it changes

    detail = [attempt_header, attempt_response, attempt_code, attempt_feedback, attempt_teacher, attempt_context,
              attempt_tokens]
    view_outputs = [status, cancel_btn, job_msg, settings_md, settings_json, error_box, attempts, curve,
                    teacher_note, rounds, solution_group, solution_code, solution_dl, timer, attempt_ids, signature,
                    message, msg_about, selected, *detail]
    cleared_detail = ("Click an attempt in the table.", "", "", "", "", "", "")

    def detail_values(attempt_id: int) -> tuple:
        v = attempt_view(ctx, attempt_id)
        return v.header, v.response, v.code, v.feedback, v.teacher, v.context, v.tokens

    def render(jid: Any, last_sig: Any = None, sel: Any = None, about: Any = None) -> tuple:
        jid = job_id_of(jid)
        if jid is None:
            return (gr.skip(),) * len(view_outputs)
        skip = gr.skip()
        try:
            snap = snapshot(ctx, jid)
        except NotFound:
            return (error_md(f"job {jid} not found"), gr.Button(visible=False), "", "", None,
                    gr.Textbox(visible=False), pd.DataFrame(columns=ATTEMPT_COLUMNS), None, "",
                    pd.DataFrame(columns=ROUND_COLUMNS), gr.Group(visible=False), None, None, gr.Timer(active=False),
                    [], None, skip, skip, None, *cleared_detail)
        same = last_sig is not None and tuple(last_sig) == snap.signature
        other_job = last_sig is None or last_sig[0] != jid  # a (re)opened job: clear the selected attempt
        if other_job or sel not in snap.attempt_ids:
            sel_out, detail_out = None, cleared_detail
        elif not same:  # its teacher view or its round's numbers may have arrived
            sel_out, detail_out = sel, detail_values(sel)
        else:
            sel_out, detail_out = sel, (skip,) * len(detail)
        # the message under Solve ("Job 5 queued.") and its job: cleared once that job moved on
        stale = about is not None and about[0] == jid and about[1] != snap.status
        sol_path = solution_file(ctx, jid, snap.solution) if (snap.solution and not same) else None
        return (
            snap.status_md,
            gr.Button(visible=snap.cancellable),
            "" if other_job else skip,
            skip if same else snap.settings_md,
            skip if same else snap.config,
            gr.Textbox(value=snap.error or "", visible=bool(snap.error) and snap.error != "cancelled by the user"),
            skip if same else snap.attempts,
            skip if same else curve_chart(snap),
            skip if same else snap.teacher_note,
            skip if same else snap.rounds,
            gr.Group(visible=snap.solution is not None),
            skip if same else snap.solution,
            skip if same or not sol_path else gr.DownloadButton(value=sol_path),
            gr.Timer(active=not snap.terminal),
            snap.attempt_ids,
            list(snap.signature),
            "" if stale else skip,
            None if stale else skip,
            sel_out,
            *detail_out,
        )

    render_inputs = [job_id, signature, selected, msg_about]
    slots = {"statement": statement_msg, "tests": tests_msg, "json": json_msg, "budget": budget_msg,
             "model": defaults_msg, "advanced": advanced_msg, "extra": extra_msg}

    # The public endpoint /submit_solve answers (message, job id); the page then moves an error next to the box
    # it names (``show_submitted``) and opens the new job.
    api_job_id = gr.Number(value=None, precision=0, visible=False)
    submit_error = gr.State(None)  # (slot, message) of the last submission's error, None when it was queued

    def on_submit(title_v, statement_v, source_v, testtype_v, fn_v, rows_v, json_v, starter_v, strategy_v,
                  budget_v, model_v, adapter_v, extra_v, *adv_v):
        try:
            problem = build_problem(ctx, source=source_v, title=title_v, statement=statement_v, testtype=testtype_v,
                                    fn_name=fn_v, rows=rows_v, json_text=json_v, starter_code=starter_v)
            cfg = build_solve_config(strategy=strategy_v, budget=budget_v, adapter=adapter_v, extra_yaml=extra_v,
                                     advanced={p: v for (p, _, _), v in zip(adv, adv_v, strict=True)})
            jid = submit(ctx, problem=problem, config=cfg, model=model_v)
        except InvalidInput as e:
            where = error_slot(e.field, source=source_v, advanced=[p for p, _, _ in adv])
            return error_md(str(e)), gr.skip(), (where, str(e)), gr.skip()
        except EnqueueError as e:
            return error_md(str(e)), gr.skip(), ("main", str(e)), gr.skip()
        return ok_md(f"Job {jid} queued."), jid, None, [jid, "queued"]

    def show_submitted(jid, error):
        """An error next to the box it names (the message under Solve points there), or the queued job opened."""
        cleared = {k: gr.HTML("", visible=False) for k in slots}
        if error is None:
            return (gr.skip(), str(int(jid)), *cleared.values(), gr.skip())
        where, text = error
        if where == "main":
            return (gr.skip(), gr.skip(), *cleared.values(), gr.skip())
        cleared[where] = gr.HTML(error_md(text), visible=True)
        return (error_md(f"Not submitted: see the message at {SLOT_NAMES[where]}."), gr.skip(), *cleared.values(),
                gr.Accordion(open=True) if where in ("advanced", "extra") else gr.skip())

    submitted = submit_btn.click(
        on_submit,
        [title, statement, source, testtype, fn_name, tests, json_text, starter, strategy, budget, model, adapter,
         extra, *adv_boxes],
        [message, api_job_id, submit_error, msg_about], api_name="submit_solve",
    ).then(show_submitted, [api_job_id, submit_error], [message, job_id, *slots.values(), advanced],
           api_visibility="private", show_progress="hidden")
    submitted.then(render, render_inputs, view_outputs, api_visibility="private", show_progress="hidden")
    open_btn.click(lambda j: render(j, None, None, None), [job_id], view_outputs, api_visibility="private")
    job_id.submit(lambda j: render(j, None, None, None), [job_id], view_outputs, api_visibility="private")
    timer.tick(render, render_inputs, view_outputs, api_visibility="private", show_progress="hidden")

    def on_cancel(jid):
        """Ask the job to stop; the status line says "cancelling…" until it has, then "cancelled"."""
        jid = job_id_of(jid)
        if jid is None:
            return error_md("no job to cancel: open one first")
        try:
            with ctx.session() as s:
                J.cancel_job(s, job_id=jid, revoke=ctx.queue.revoke)
            return ""
        except (NotFound, IllegalTransition) as e:
            return error_md(str(e))

    cancel_btn.click(on_cancel, [job_id], [job_msg], api_visibility="private").then(
        render, render_inputs, view_outputs, api_visibility="private", show_progress="hidden")

    def on_select(ids, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        if row is None or row >= len(ids):
            return (gr.skip(),) * (len(detail) + 1)
        return (ids[row], *detail_values(ids[row]))

    attempts.select(on_select, [attempt_ids], [selected, *detail], api_visibility="private")

    return SolveHandles(job_id=job_id, open_fn=lambda j: render(j, None, None, None), open_outputs=view_outputs)
