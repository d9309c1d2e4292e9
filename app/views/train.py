"""Train page: dataset (built-in HumanEval, an uploaded JSONL with a size limit, a server path, or a
registered dataset), algorithm (SDPO, GRPO, hybrid, SRPO, SC-SDPO, SDPG), adapter, hyperparameters with presets;
then the live run view: line plots of reward, validation avg@k, loss, response length, the SDPO fractions and the
SRPO / SC-SDPO / SDPG weights, a log tail, checkpoints with download links, and Cancel.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import yaml

from app.context import AppContext
from app.views.common import (
    TRAIN_SUMMARY,
    error_md,
    job_id_of,
    line_chart,
    ok_md,
    plot_frame,
    progress_text,
    status_line,
)
from app.views.jobview import JobSnapshot, JobView, Refresh, job_fields, job_view
from backend.errors import EnqueueError, InvalidInput, NotFound
from backend.schemas import RawConfig
from backend.services import datasets as D
from backend.services import jobs as J
from backend.services import progress as P
from backend.services import ui as U

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
# label -> config file in configs/
PRESETS = {
    "tiny CPU (plumbing check, < 2 min)": "tiny_cpu.yaml",
    "rich feedback (LiveCodeBench setting)": "sdpo_rich_feedback.yaml",
    "no feedback (demonstrations only)": "sdpo_no_feedback.yaml",
    "GRPO baseline": "grpo.yaml",
    "SRPO (GRPO on successes, entropy-weighted SDPO on failures)": "srpo.yaml",
    "SC-SDPO (SDPO weighted by pass rate)": "sc_sdpo.yaml",
    "SDPG (GRPO + full-vocabulary distillation + KL to the start)": "sdpg.yaml",
}
# The losses of the trainer (sdpo.update.LOSSES; docs/family.md describes each), as (label, value).
LOSS_CHOICES = [("SDPO", "sdpo"), ("GRPO", "grpo"), ("hybrid", "hybrid"), ("SRPO", "srpo"), ("SC-SDPO", "sc_sdpo"),
                ("SDPG", "sdpg")]
LOSS_INFO = ("SRPO: successes get GRPO, failures with a teacher context get SDPO weighted down where the teacher "
             "is unsure. SC-SDPO: SDPO with each question weighted by sqrt(p(1 - p)) of its pass rate. SDPG: GRPO "
             "+ full-vocabulary distillation on successes + a KL to the initial model. A KL penalty for any of "
             "them: kl_coef in Other settings; a frozen initial teacher: self_distillation.teacher_regularization: "
             "base.")
# Keys the page sets itself (dataset selector, worker-owned folders); a preset's values for them are dropped.
NOT_FROM_PRESET = ("dataset", "train_file", "test_file", "out_dir", "run_dir", "resume_from", "model_path")
FIELDS = (
    ("max_steps", "steps"),
    ("train_batch_size", "questions per step"),
    ("n", "rollouts per question (n)"),
    ("lr", "learning rate"),
    ("max_new_tokens", "max new tokens"),
    ("val_every", "validate every (steps, 0 = never)"),
    ("save_every", "checkpoint every (steps, 0 = at the end only)"),
)
DATASET_SOURCES = [("Built-in HumanEval", "humaneval"), ("Upload JSONL", "upload"), ("Server path", "path"),
                   ("Registered dataset", "registered")]
PLOTS = (
    ("reward", "Reward (reward/mean)", lambda n: n in ("reward/mean", "reward/acc")),
    ("val", "Validation avg@k / pass@k", lambda n: n.startswith(("val/avg@", "val/pass@"))),
    ("loss", "Loss", lambda n: n == "loss" or n.startswith("loss/")),
    ("length", "Response length", lambda n: n.startswith("response/length")),
    ("sdpo", "SDPO fractions", lambda n: n.startswith("sdpo/") and n.endswith("fraction")),
    ("family", "SRPO / SC-SDPO / SDPG weights and KL",
     lambda n: n.startswith(("srpo/", "sc_sdpo/", "sdpg/", "ref_kl/"))),
)
PLOT_COLUMNS = ["step", "value", "metric"]
CHECKPOINT_COLUMNS = ["step", "kind", "size", "path"]


def load_preset(label: str) -> dict[str, Any]:
    """The preset's config (from ``configs/``) without the keys the page owns; {} when the file is absent."""
    path = CONFIGS_DIR / PRESETS.get(label, "")
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {k: v for k, v in data.items() if k not in NOT_FROM_PRESET}


def preset_form(preset: dict[str, Any]) -> tuple[str, str, list[str], str]:
    """(loss, adapter, field texts, the rest as YAML) of a preset."""
    rest = dict(preset)
    loss = rest.pop("loss", "sdpo")
    adapter = rest.pop("adapter", "lora")
    values = ["" if rest.get(k) is None else str(rest.pop(k)) for k, _ in FIELDS]
    return loss, adapter, values, yaml.safe_dump(rest, sort_keys=False) if rest else ""


# Errors about these fields are shown under the dataset choice, about the model next to the Model box; the rest
# (hyperparameters, other settings) under the Start button beside them.
DATASET_FIELDS = ("file", "path", "dataset", "dataset_id", "name", "train_file", "test_file")
MODEL_FIELDS = ("model", "model_path")


def error_place(field: str) -> str:
    """"dataset", "model" or "form": where the Train page shows an error about ``field``."""
    top = field.split(".")[0].split(" ")[0]
    return "dataset" if top in DATASET_FIELDS else "model" if top in MODEL_FIELDS else "form"


def default_hint(defaults: dict[str, Any], key: str) -> str:
    """Placeholder of an empty hyperparameter box: the value the job gets when it stays empty."""
    return f"default: {defaults[key]}" if defaults.get(key) is not None else ""


# -------------------------------------------------------------------------------------------- handlers
def build_train_config(*, loss: str, adapter: str, fields: dict[str, Any], extra_yaml: str) -> RawConfig:
    """The train config of the form as typed: loss and adapter (choices), the hyperparameter boxes (text; empty =
    the default) and the free-form YAML, read by the engine when it validates the job."""
    return RawConfig(values={"loss": loss, "adapter": adapter},
                     fields=tuple((key, "" if raw is None else str(raw)) for key, raw in fields.items()),
                     text=extra_yaml or "", text_field="extra settings")


def submit(ctx: AppContext, *, source: str, config: dict[str, Any] | RawConfig, upload_path: str | None = None,
           dataset_name: str = "", server_path: str = "", registered: str | None = None, model: str = "") -> int:
    """Resolve the dataset (uploading or registering it in the same transaction) and queue the run.

    On ``InvalidInput`` nothing is stored or queued and an uploaded file is removed again.
    """
    created_folder: Path | None = None
    if not isinstance(config, RawConfig):
        config = RawConfig(values=dict(config))
    try:
        with ctx.session() as s:
            dataset_id, label = None, "humaneval"
            if source == "humaneval":
                config = replace(config, fixed={"dataset": "humaneval", "train_file": None, "test_file": None})
            elif source in ("upload", "path", "registered"):
                if source == "upload":
                    if not upload_path:
                        raise InvalidInput("file", "no file uploaded; choose a .jsonl file")
                    size = os.path.getsize(upload_path)
                    if size > ctx.settings.max_upload_bytes:
                        raise InvalidInput("file", f"{size} bytes; uploads are limited to "
                                           f"{ctx.settings.max_upload_bytes} bytes (SDPO_MAX_UPLOAD_BYTES); register "
                                           "a server path for larger datasets")
                    name = (dataset_name or "").strip() or Path(upload_path).stem
                    ds = D.upload_dataset(s, name=name, content=Path(upload_path).read_bytes(), settings=ctx.settings)
                    created_folder = Path(ds.path)
                elif source == "path":
                    if not (server_path or "").strip():
                        raise InvalidInput("path", "is empty; give a JSONL file or folder on the server")
                    name = (dataset_name or "").strip() or Path(server_path.strip()).stem
                    ds = D.register_dataset(s, name=name, path=server_path.strip())
                else:
                    if not registered:
                        raise InvalidInput("dataset", "choose a registered dataset")
                    ds = D.get_dataset_by_name(s, name=registered)
                dataset_id, label = ds.id, ds.name
                config = replace(config, fixed=D.dataset_config(ds))
            else:
                raise InvalidInput("dataset", f"got {source!r}; choose one of humaneval, upload, path, registered")
            job = J.submit_job(s, kind="train", config=config, validate=ctx.hooks.validate_config,
                               enqueue=ctx.queue.enqueue, dataset_id=dataset_id, model=(model or "").strip(),
                               label=label)
            return job.id
    except NotFound as e:
        raise InvalidInput("dataset", str(e)) from None
    except BaseException:
        if created_folder is not None:
            shutil.rmtree(created_folder, ignore_errors=True)
        raise


@dataclass
class TrainSnapshot(JobSnapshot):
    """Everything the run view shows at one moment."""

    plots: dict[str, pd.DataFrame]
    log: str
    checkpoints: pd.DataFrame
    checkpoint_choices: list[tuple[str, int]]


def snapshot(ctx: AppContext, job_id: int) -> TrainSnapshot:
    with ctx.session() as s:
        d = J.job_detail(s, job_id=job_id)
        series = P.metric_series(s, job_id=job_id)
        progress = U.job_progress(s, job_id=job_id, kind="train", config=d.config)
    line = status_line(d)
    steps = d.config.get("max_steps")
    if d.last_step is not None:
        line += f" · step {d.last_step}" + (f" / {steps}" if steps else "")
    if progress is not None:
        line += progress_text(progress, running=d.status == "running")
    plots = {}
    for key, _, match in PLOTS:
        rows = [[step, value, name] for name, pts in sorted(series.items()) if match(name) for step, value in pts]
        plots[key] = plot_frame(rows, PLOT_COLUMNS)
    log_lines = []
    by_step: dict[int, list[str]] = {}
    for name, pts in sorted(series.items()):
        for step, value in pts:
            by_step.setdefault(step, []).append(f"{name}={value:.4g}")
    for step in sorted(by_step)[-30:]:
        log_lines.append(f"step {step}: " + "  ".join(by_step[step]))
    for c in d.checkpoints:
        log_lines.append(f"checkpoint step {c.step} ({c.kind}, {c.bytes / 1e6:.1f} MB) -> {c.path}")
    if d.error:
        log_lines.append(f"[{d.status}] {d.error}")
    ck = pd.DataFrame([[c.step, c.kind, f"{c.bytes / 1e6:.1f} MB", c.path] for c in d.checkpoints],
                      columns=CHECKPOINT_COLUMNS)
    return TrainSnapshot(
        **job_fields(ctx, d, TRAIN_SUMMARY), status_md=line, plots=plots,
        log="\n".join(log_lines) or "(no output yet)", checkpoints=ck,
        checkpoint_choices=[(f"step {c.step} ({c.kind})", c.id) for c in d.checkpoints],
        signature=(d.id, d.status, d.cancel_requested, d.last_step, len(d.checkpoints), d.error),
    )


def checkpoint_zip(ctx: AppContext, job_id: int, checkpoint_id: int) -> str:
    """Zip a checkpoint folder into ``<jobs_dir>/<id>/downloads/`` (once) and return the zip's path."""
    with ctx.session() as s:
        ck = next((c for c in P.list_checkpoints(s, job_id=job_id) if c.id == checkpoint_id), None)
        if ck is None:
            raise InvalidInput("checkpoint", f"checkpoint {checkpoint_id} of job {job_id} not found")
        src, step, kind = Path(ck.path), ck.step, ck.kind
    if not src.exists():
        raise InvalidInput("checkpoint", f"{src} no longer exists on the server")
    out_dir = ctx.settings.job_dir(job_id) / "downloads"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"job{job_id}-step{step}-{kind}.zip"
    if not out.exists():
        tmp = out.with_suffix(".part")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
            for f in files:
                z.write(f, f.relative_to(src.parent))
        tmp.replace(out)
    return str(out)


# ------------------------------------------------------------------------------------------------ page
def _dataset_choices(ctx: AppContext) -> list[str]:
    with ctx.session() as s:
        return [d.name for d in D.list_datasets(s)]


def build(ctx: AppContext) -> JobView:
    first = next(iter(PRESETS))
    loss0, adapter0, values0, extra0 = preset_form(load_preset(first))
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gr.Markdown("### Dataset")
            source = gr.Radio(DATASET_SOURCES, value="humaneval", label="Dataset", elem_id="train-source")
            with gr.Group(visible=False) as upload_group:
                upload = gr.File(label=f"JSONL file (lasgroup format, at most {ctx.settings.max_upload_bytes:,} "
                                 "bytes)", file_types=[".jsonl", ".json"], type="filepath", elem_id="train-upload")
            with gr.Group(visible=False) as path_group:
                server_path = gr.Textbox(label="Path on the server (a .jsonl file, or a folder with train.jsonl "
                                         "and test.jsonl)", elem_id="train-path")
            with gr.Group(visible=False) as name_group:
                dataset_name = gr.Textbox(label="Dataset name (to find it again)", elem_id="train-dataset-name")
            with gr.Group(visible=False) as registered_group:
                registered = gr.Dropdown(_dataset_choices(ctx), label="Registered dataset",
                                         elem_id="train-registered")

            def on_source(v):
                return (gr.Group(visible=v == "upload"), gr.Group(visible=v == "path"),
                        gr.Group(visible=v in ("upload", "path")), gr.Group(visible=v == "registered"))

            dataset_msg = gr.HTML("", visible=False, elem_id="train-dataset-message", padding=False)
            source.change(on_source, source, [upload_group, path_group, name_group, registered_group],
                          api_visibility="private", queue=False)
            gr.Markdown("### Algorithm")
            with gr.Row():
                loss = gr.Radio(LOSS_CHOICES, value=loss0, label="Algorithm", info=LOSS_INFO, elem_id="train-loss")
                adapter = gr.Radio([("LoRA", "lora"), ("Full", "full")], value=adapter0, label="Adapter",
                                   elem_id="train-adapter")
            model = gr.Textbox(label="Model", placeholder=f"default: {ctx.settings.model}", elem_id="train-model",
                               info="An empty hyperparameter box uses the default shown in it, which fits this "
                               "model: CPU-sized for the demo models or without a GPU, the paper's on a GPU.")
            defaults_msg = gr.HTML("", visible=False, elem_id="train-defaults-message")
        with gr.Column(scale=3):
            gr.Markdown("### Hyperparameters")
            preset = gr.Dropdown(list(PRESETS), value=first, label="Preset", elem_id="train-preset")
            with gr.Row():
                defaults0 = ctx.defaults("train")[0]
                boxes = [gr.Textbox(label=label, value=v, elem_id=f"train-{key.replace('_', '-')}", min_width=140,
                                    placeholder=default_hint(defaults0, key))
                         for (key, label), v in zip(FIELDS, values0, strict=True)]
            extra = gr.Code(language="yaml", label="Other settings (YAML; self_distillation.* etc.)", value=extra0,
                            lines=8, elem_id="train-extra")
            submit_btn = gr.Button("Start training", variant="primary", elem_id="train-submit")
            message = gr.HTML(elem_id="train-message")

    def on_preset(label):
        l_, a_, vals, rest = preset_form(load_preset(label))
        return (l_, a_, *vals, rest)

    preset.change(on_preset, preset, [loss, adapter, *boxes, extra], api_visibility="private", queue=False)

    def on_model(model_v):
        """The defaults an empty box gets, for the model typed in."""
        d, err = ctx.defaults("train", model_v)
        if err:
            return (gr.HTML(error_md(err), visible=True), *(gr.skip() for _ in boxes))
        return (gr.HTML("", visible=False), *(gr.Textbox(placeholder=default_hint(d, key)) for key, _ in FIELDS))

    for event in (model.submit, model.blur):
        event(on_model, model, [defaults_msg, *boxes], api_visibility="private")

    view = job_view(prefix="train", title="Run", noun="run", empty="No run yet: start one, or open one from History.",
                    interval=2.0)
    plots = {}
    with gr.Row():
        for key, _, _ in PLOTS[:3]:
            plots[key] = gr.Plot(value=None, show_label=False, elem_id=f"train-plot-{key}")
    with gr.Row():
        for key, _, _ in PLOTS[3:]:
            plots[key] = gr.Plot(value=None, show_label=False, elem_id=f"train-plot-{key}")
    titles = {key: title for key, title, _ in PLOTS}
    with gr.Row(equal_height=False):
        log = gr.Textbox(label="Log (last steps)", lines=10, max_lines=10, interactive=False, autoscroll=True,
                         elem_id="train-log")
        with gr.Column():
            checkpoints = gr.Dataframe(value=pd.DataFrame(columns=CHECKPOINT_COLUMNS), interactive=False,
                                       label="Checkpoints", elem_id="train-checkpoints")
            with gr.Row():
                ck_pick = gr.Dropdown([], label="Checkpoint", elem_id="train-ck-pick")
                ck_btn = gr.Button("Prepare download", elem_id="train-ck-zip")
            ck_file = gr.File(label="Download", interactive=False, elem_id="train-ck-file")

    def panels(snap: TrainSnapshot | None, r: Refresh) -> dict:
        """The plots, log and checkpoints of ``snap`` (None: the job is gone)."""
        if snap is None:
            return {**dict.fromkeys(plots.values()), log: "", checkpoints: pd.DataFrame(columns=CHECKPOINT_COLUMNS),
                    ck_pick: gr.Dropdown(choices=[])}
        if r.same:
            return {}
        return {**{plots[k]: line_chart(snap.plots[k], title=titles[k]) for k in plots}, log: snap.log,
                checkpoints: snap.checkpoints, ck_pick: gr.Dropdown(choices=snap.checkpoint_choices)}

    view.bind(ctx, snapshot=lambda jid: snapshot(ctx, jid), panels=panels, form_message=message, noun="run",
              panel_outputs=[*plots.values(), log, checkpoints, ck_pick])

    # The public endpoint /submit_train answers (message, job id, dataset list); the page then moves an error
    # about the dataset or the model next to it (``show_submitted``) and opens the new run.
    api_job_id = gr.Number(value=None, precision=0, visible=False)
    submit_error = gr.State(None)  # (place, message) of the last submission's error, None when it was queued

    def on_submit(source_v, upload_v, name_v, path_v, registered_v, loss_v, adapter_v, model_v, extra_v, *field_v):
        try:
            cfg = build_train_config(loss=loss_v, adapter=adapter_v, extra_yaml=extra_v,
                                     fields={k: v for (k, _), v in zip(FIELDS, field_v, strict=True)})
            jid = submit(ctx, source=source_v, config=cfg, upload_path=upload_v, dataset_name=name_v,
                         server_path=path_v, registered=registered_v, model=model_v)
        except InvalidInput as e:
            return error_md(str(e)), gr.skip(), gr.skip(), (error_place(e.field), str(e)), gr.skip()
        except EnqueueError as e:
            return error_md(str(e)), gr.skip(), gr.skip(), ("form", str(e)), gr.skip()
        return ok_md(f"Job {jid} queued."), jid, gr.Dropdown(choices=_dataset_choices(ctx)), None, [jid, "queued"]

    def show_submitted(jid, error):
        hidden = gr.HTML("", visible=False)
        if error is None:
            return gr.skip(), str(int(jid)), hidden, hidden
        where, text = error
        if where == "form":
            return gr.skip(), gr.skip(), hidden, gr.skip()
        shown = gr.HTML(error_md(text), visible=True)
        pointer = error_md(f"Not started: see the message at {'Dataset' if where == 'dataset' else 'Model'}.")
        return (pointer, gr.skip(), shown if where == "dataset" else hidden, shown if where == "model" else gr.skip())

    submitted = submit_btn.click(
        on_submit, [source, upload, dataset_name, server_path, registered, loss, adapter, model, extra, *boxes],
        [message, api_job_id, registered, submit_error, view.about], api_name="submit_train",
    ).then(show_submitted, [api_job_id, submit_error], [message, view.job_id, dataset_msg, defaults_msg],
           api_visibility="private", show_progress="hidden")
    view.refresh_after(submitted)

    def on_zip(jid, ck_id):
        jid = job_id_of(jid)
        if jid is None or ck_id is None:
            return None, error_md("choose a checkpoint first")
        try:
            return checkpoint_zip(ctx, int(jid), int(ck_id)), ""
        except InvalidInput as e:
            return None, error_md(str(e))

    ck_btn.click(on_zip, [view.job_id, ck_pick], [ck_file, view.message], api_visibility="private")
    return view
