"""Solve page: write a problem (statement + tests), pick a strategy and budget, submit; then the live job
view: status and elapsed time, attempts table, the selected attempt's code and feedback, the discovery curve,
Cancel, and the solution with copy/download once it is found.

Handlers are plain functions of the page's values (testable without a browser); ``build`` lays out the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from app.context import AppContext
from app.views.common import (
    error_md,
    get_path,
    has_path,
    is_terminal,
    job_id_of,
    legend_updates,
    ok_md,
    plot_frame,
    progress_text,
    series_of,
    status_line,
)
from backend.errors import EnqueueError, IllegalTransition, InvalidInput, NotFound
from backend.schemas import RawConfig
from backend.services import jobs as J
from backend.services import picker as P
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
ATTEMPT_COLUMNS = ["round", "#", "public", "hidden", "reward", "tokens", "solved"]
CURVE_COLUMNS = ["attempt", "tests passed", "tests"]
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
    terminal: bool
    cancellable: bool
    attempts: pd.DataFrame
    attempt_ids: list[int]
    curve: pd.DataFrame
    curve_max: int
    solution: str | None
    error: str | None
    signature: tuple


def snapshot(ctx: AppContext, job_id: int) -> SolveSnapshot:
    """Read the job, its attempts and its discovery curve (raises ``NotFound``)."""
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
    df = pd.DataFrame([[r.round, r.number, r.public, r.hidden, r.reward, r.tokens, "✓" if r.solved else ""]
                       for r in rows], columns=ATTEMPT_COLUMNS)
    points = []
    for n, pub, hid in curve:
        points.append([n, pub, f"public (of {n_public})"])
        if hid is not None:
            points.append([n, hid, f"hidden (of {n_hidden})"])
    return SolveSnapshot(
        status_md=line, terminal=is_terminal(d.status), cancellable=d.status in ("queued", "running")
        and not d.cancel_requested, attempts=df, attempt_ids=[r.id for r in rows],
        curve=plot_frame(points, CURVE_COLUMNS), curve_max=max(1, n_public or 0, n_hidden or 0),
        solution=solution, error=d.error,
        signature=(d.id, d.status, d.cancel_requested, len(rows), solution is not None, d.error),
    )


def attempt_view(ctx: AppContext, attempt_id: int) -> tuple[str, str, str]:
    """(header, code, feedback) of one attempt."""
    with ctx.session() as s:
        a = U.get_attempt(s, attempt_id=attempt_id)
        if a is None:
            return "Attempt not found", "", ""
        hidden = "" if a.total_hidden is None else f", hidden {a.passed_hidden}/{a.total_hidden}"
        header = (f"**Round {a.round}, attempt {a.index}** · public {a.passed_public}/{a.total_public}{hidden} · "
                  f"reward {a.reward:g} · {a.tokens} tokens · {a.seconds:.1f} s")
        raw = J.raw_response_path(jobs_dir=ctx.settings.jobs_dir, job_id=a.job_id, round=a.round, index=a.index)
        if raw.exists():  # the stored texts had to be escaped or cut; the response as the model wrote it
            header += f" · raw response: `{raw}`"
        code = a.code if a.code is not None else "# no code block found in the response\n"
        feedback = a.feedback or ("All public tests passed." if a.passed_public == a.total_public
                                  else "(no feedback)")
        return header, code, feedback


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

    job_id: gr.Number
    open_fn: Any
    open_outputs: list
    refresh: Any  # chains the second phase of the plot refresh after an event that ran ``open_fn``


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
            with gr.Group(visible=False) as json_group:
                json_text = gr.Code(language="json", label="Problem JSON or LiveCodeBench row", lines=10,
                                    elem_id="solve-json")
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
            model = gr.Textbox(label="Model", placeholder=f"default: {ctx.settings.model}", elem_id="solve-model",
                               info="The budget and the Advanced values below are the defaults for this model: "
                               "CPU-sized for the demo models or without a GPU, the paper's on a GPU.")
            defaults_msg = gr.HTML(error_md(defaults_error) if defaults_error else "", visible=bool(defaults_error),
                                   elem_id="solve-defaults-message")
            adapter = gr.Radio([("LoRA adapter", "lora"), ("Full fine-tune", "full")],
                               value=defaults.get("adapter", "lora") if defaults.get("adapter") in ("lora", "full")
                               else "lora", label="Weights updated", elem_id="solve-adapter")
            with gr.Accordion("Advanced (SDPO settings)", open=False, elem_id="solve-advanced"):
                adv_boxes = [gr.Textbox(label=label, value=_fmt_default(v), elem_id=f"solve-adv-{p.replace('.', '-')}")
                             for p, label, v in adv]
                extra = gr.Code(language="yaml", label="Other settings (YAML, e.g. ppo_epochs: 2)", lines=3,
                                elem_id="solve-extra")
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
        job_id = gr.Number(label="Job id", precision=0, value=None, placeholder="job number", elem_id="solve-job-id",
                           scale=1)
        open_btn = gr.Button("Open", elem_id="solve-open", scale=0)
        cancel_btn = gr.Button("Cancel job", variant="stop", visible=False, elem_id="solve-cancel", scale=0)
    status = gr.Markdown("No job yet: submit a problem, or open one from History.", elem_id="solve-status")
    error_box = gr.Textbox(label="Error", visible=False, lines=4, elem_id="solve-error")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            attempts = gr.Dataframe(value=pd.DataFrame(columns=ATTEMPT_COLUMNS), interactive=False,
                                    label="Attempts (click a row for its code and feedback)", max_height=340,
                                    elem_id="solve-attempts")
        with gr.Column(scale=2):
            curve = gr.LinePlot(value=plot_frame([], CURVE_COLUMNS), x="attempt", y="tests passed",
                                color="tests", title="Discovery curve: best tests passed so far", height=300,
                                elem_id="solve-curve")
    attempt_header = gr.Markdown("", elem_id="solve-attempt-header")
    with gr.Row(equal_height=False):
        attempt_code = gr.Code(language="python", label="Selected attempt: code", lines=12, interactive=False,
                               elem_id="solve-attempt-code")
        attempt_feedback = gr.Textbox(label="Selected attempt: feedback", lines=12, interactive=False,
                                      elem_id="solve-attempt-feedback")
    with gr.Group(visible=False) as solution_group:
        gr.Markdown("### ✅ Solution")
        solution_code = gr.Code(language="python", label="Solution (copy button at the top right)",
                                interactive=False, elem_id="solve-solution")
        solution_dl = gr.DownloadButton("Download solution.py", elem_id="solve-download")
    timer = gr.Timer(1.0, active=False)
    attempt_ids = gr.State([])
    signature = gr.State(None)
    legends = gr.State(None)

    view_outputs = [status, cancel_btn, error_box, attempts, curve, solution_group, solution_code, solution_dl,
                    timer, attempt_ids, signature, attempt_header, attempt_code, attempt_feedback, legends]

    def render(jid: Any, last_sig: Any = None) -> tuple:
        jid = job_id_of(jid)
        if jid is None:
            return (gr.skip(),) * len(view_outputs)
        try:
            snap = snapshot(ctx, int(jid))
        except NotFound:
            return (error_md(f"job {int(jid)} not found"), gr.Button(visible=False), gr.Textbox(visible=False),
                    pd.DataFrame(columns=ATTEMPT_COLUMNS), plot_frame([], CURVE_COLUMNS),
                    gr.Group(visible=False), None, None, gr.Timer(active=False), [], None, "", None, "", [[]])
        same = last_sig is not None and tuple(last_sig) == snap.signature
        other_job = last_sig is None or last_sig[0] != jid  # a (re)opened job: clear the selected attempt
        clear = ("", None, "") if other_job else (gr.skip(),) * 3
        sol_path = solution_file(ctx, int(jid), snap.solution) if (snap.solution and not same) else None
        return (
            snap.status_md,
            gr.Button(visible=snap.cancellable),
            gr.Textbox(value=snap.error or "", visible=bool(snap.error) and snap.error != "cancelled by the user"),
            gr.skip() if same else snap.attempts,
            gr.skip() if same else gr.LinePlot(value=snap.curve, y_lim=[0, snap.curve_max]),
            gr.Group(visible=snap.solution is not None),
            gr.skip() if same else snap.solution,
            gr.skip() if same or not sol_path else gr.DownloadButton(value=sol_path),
            gr.Timer(active=not snap.terminal),
            snap.attempt_ids,
            list(snap.signature),
            *clear,
            None if same else [series_of(snap.curve)],
        )

    def refresh(dep):
        """Chain phase two of the plot refresh (``legend_updates``) after a ``render``."""
        return dep.then(lambda lg: legend_updates(lg, 1), legends, curve, api_visibility="private",
                        show_progress="hidden")

    def on_submit(title_v, statement_v, source_v, testtype_v, fn_v, rows_v, json_v, starter_v, strategy_v,
                  budget_v, model_v, adapter_v, extra_v, *adv_v):
        try:
            problem = build_problem(ctx, source=source_v, title=title_v, statement=statement_v, testtype=testtype_v,
                                    fn_name=fn_v, rows=rows_v, json_text=json_v, starter_code=starter_v)
            cfg = build_solve_config(strategy=strategy_v, budget=budget_v, adapter=adapter_v, extra_yaml=extra_v,
                                     advanced={p: v for (p, _, _), v in zip(adv, adv_v, strict=True)})
            jid = submit(ctx, problem=problem, config=cfg, model=model_v)
        except InvalidInput as e:
            return error_md(str(e)), gr.skip()
        except EnqueueError as e:
            return error_md(str(e)), gr.skip()
        return ok_md(f"Job {jid} queued."), jid

    submitted = submit_btn.click(
        on_submit,
        [title, statement, source, testtype, fn_name, tests, json_text, starter, strategy, budget, model, adapter,
         extra, *adv_boxes],
        [message, job_id], api_name="submit_solve",
    ).success(render, [job_id], view_outputs, api_visibility="private", show_progress="hidden")
    refresh(submitted)
    refresh(open_btn.click(render, [job_id], view_outputs, api_visibility="private"))
    refresh(job_id.submit(render, [job_id], view_outputs, api_visibility="private"))
    refresh(timer.tick(render, [job_id, signature], view_outputs, api_visibility="private",
                       show_progress="hidden"))

    def on_cancel(jid):
        jid = job_id_of(jid)
        if jid is None:
            return error_md("no job to cancel")
        try:
            with ctx.session() as s:
                job = J.cancel_job(s, job_id=int(jid), revoke=ctx.queue.revoke)
                return ok_md(f"Job {job.id} {'cancelled' if job.status == 'cancelled' else 'cancelling…'}")
        except (NotFound, IllegalTransition) as e:
            return error_md(str(e))

    refresh(cancel_btn.click(on_cancel, [job_id], [message], api_visibility="private").then(
        render, [job_id], view_outputs, api_visibility="private", show_progress="hidden"))

    def on_select(ids, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        if row is None or row >= len(ids):
            return gr.skip(), gr.skip(), gr.skip()
        return attempt_view(ctx, ids[row])

    attempts.select(on_select, [attempt_ids], [attempt_header, attempt_code, attempt_feedback],
                    api_visibility="private")

    return SolveHandles(job_id=job_id, open_fn=render, open_outputs=view_outputs, refresh=refresh)
