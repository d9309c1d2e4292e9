"""The app's handlers against a real migrated SQLite database, the real filesystem broker and the engines'
own validators (no browser): forms -> problems and configs, submit queues exactly one message or nothing,
the job-view read models, history/delete, and the import rule."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.views import compare, history, solve, system, train
from backend.errors import InvalidInput
from backend.models import Dataset, Job, Problem
from backend.schemas import AttemptIn
from backend.services import jobs as J
from backend.services import lifecycle as L
from backend.services import progress as P
from backend.services import ui as U

ROWS = [["1 2", "3", False], ["10 -4", "6", False], ["100 200", "300", True], ["", "", False]]


def counts(ctx) -> tuple[int, int, int]:
    with ctx.session() as s:
        return tuple(int(s.scalar(select(func.count(m.id)))) for m in (Problem, Job, Dataset))


def form_problem(ctx, **over):
    kw = dict(source="editor", title="", statement="# Add\nPrint a+b.", testtype="stdin", fn_name="", rows=ROWS,
              json_text="", starter_code="")
    kw.update(over)
    return solve.build_problem(ctx, **kw)


def small_config(**over):
    kw = dict(strategy="best_of_k", budget="4", adapter="lora", extra_yaml="",
              advanced={"n": "2", "max_new_tokens": "16", "self_distillation.alpha": ""})
    kw.update(over)
    return solve.build_solve_config(**kw)


# ------------------------------------------------------------------------------------------------- forms
def test_form_rows_split_into_public_and_hidden_tests(ctx):
    p = form_problem(ctx)
    assert p["title"] == "Add"
    assert p["tests"] == {"inputs": ["1 2", "10 -4"], "outputs": ["3", "6"], "testtype": "stdin", "fn_name": None}
    assert p["hidden_tests"]["inputs"] == ["100 200"] and p["hidden_tests"]["outputs"] == ["300"]
    parsed = ctx.hooks.parse_problem(p)  # the engine accepts what the form builds
    assert (parsed.n_public_tests, parsed.n_hidden_tests) == (2, 1)


def test_form_without_hidden_rows_has_no_hidden_tests(ctx):
    p = form_problem(ctx, rows=[["1 2", "3", False]])
    assert p["hidden_tests"] is None


@pytest.mark.parametrize("over, field", [
    ({"statement": "   "}, "statement"),
    ({"testtype": "functional", "fn_name": ""}, "fn_name"),
    ({"rows": [["1 2", "", False]]}, "tests.row 1"),
    ({"rows": [["1 2", "3", True]]}, "tests"),
    ({"testtype": "functional", "fn_name": "add", "rows": [["[1, 2", "3", False]]}, "tests.row 1"),
    ({"source": "json", "json_text": "{not json"}, "json"),
    ({"source": "json", "json_text": "[1, 2]"}, "json"),
])
def test_bad_forms_name_the_field(ctx, over, field):
    with pytest.raises(InvalidInput) as e:
        form_problem(ctx, **over)
    assert e.value.field == field


def test_functional_rows_keep_json_arguments(ctx):
    p = form_problem(ctx, testtype="functional", fn_name="add", rows=[["1\n2", "3", False]])
    assert p["tests"]["fn_name"] == "add" and p["tests"]["inputs"] == ["1\n2"]
    assert ctx.hooks.parse_problem(p).n_public_tests == 1


def test_livecodebench_row_public_cases_give_feedback_all_cases_are_hidden(ctx):
    row = {
        "question_title": "Echo", "question_content": "Print the input.", "question_id": "q1",
        "contest_date": "2025-03-01T00:00:00", "starter_code": "", "metadata": "{}",
        "public_test_cases": json.dumps([{"input": "a\n", "output": "a\n", "testtype": "stdin"}]),
        "private_test_cases": json.dumps([{"input": "b\n", "output": "b\n", "testtype": "stdin"},
                                          {"input": "c\n", "output": "c\n", "testtype": "stdin"}]),
    }
    p = form_problem(ctx, source="json", json_text=json.dumps(row))
    assert p["title"] == "Echo" and p["statement"] == "Print the input."
    assert p["tests"]["inputs"] == ["a\n"]
    assert p["hidden_tests"]["inputs"] == ["a\n", "b\n", "c\n"]
    bad = dict(row, metadata="{not json")
    with pytest.raises(InvalidInput, match="metadata"):
        form_problem(ctx, source="json", json_text=json.dumps(bad))


@pytest.mark.parametrize("raw, text", [
    ("ten", "budget: got 'ten'; expected an integer"),
    ("2.5", "budget: got 2.5; expected an integer"),
    ("1e400", "budget: got inf; expected an integer"),
    ("0", "budget: got 0; must be >= 1"),
    ("1e12", "budget: got 1000000000000; must be <= 100000"),
])
def test_budget_is_read_by_the_engine_and_named_when_wrong(ctx, raw, text):
    with pytest.raises(InvalidInput) as e:
        solve.submit(ctx, problem=form_problem(ctx), config=small_config(budget=raw))
    assert e.value.field == "budget" and str(e.value).startswith(text), str(e.value)
    assert counts(ctx) == (0, 0, 0)


def test_numbers_in_boxes_and_yaml_mean_what_the_user_typed(ctx):
    """The engine reads the form's text (one parser for forms, --set and config files): 1e-5, .5, 1_000."""
    jid = solve.submit(ctx, problem=form_problem(ctx), config=small_config(
        budget="1_000", advanced={"lr": "1E-5", "temperature": ".5", "n": "2", "max_new_tokens": ""},
        extra_yaml="weight_decay: 1e-3\nself_distillation:\n  teacher_update_rate: 5e-2\n"))
    with ctx.session() as s:
        c = J.get_job(s, job_id=jid).config
    assert (c["budget"], c["lr"], c["temperature"], c["weight_decay"]) == (1000, 1e-5, 0.5, 1e-3)
    assert c["self_distillation"]["teacher_update_rate"] == 0.05 and c["max_new_tokens"] == 384  # empty: default


def test_advanced_fields_are_the_engine_defaults(ctx):
    defaults, err = ctx.defaults("solve")
    assert err is None
    fields = {p: v for p, _, v in solve.advanced_fields(defaults)}
    # the form shows the engine's own values (sdpo.ttt.SolveConfig), not copies of them
    from sdpo.sizing import CPU_SOLVE
    from sdpo.ttt import SolveConfig

    engine = SolveConfig(**CPU_SOLVE)  # the server's default model is the (small) demo model: CPU-sized
    assert set(fields) == {p for p, _ in solve.ADVANCED}
    assert fields == {
        "self_distillation.alpha": engine.self_distillation.alpha,
        "self_distillation.distillation_topk": engine.self_distillation.distillation_topk,
        "lr": engine.lr,
        "self_distillation.teacher_regularization": engine.self_distillation.teacher_regularization,
        "self_distillation.teacher_update_rate": engine.self_distillation.teacher_update_rate,
        "n": engine.n,
        "temperature": engine.temperature,
        "max_new_tokens": engine.max_new_tokens,
    }
    assert defaults["budget"] == engine.budget


# ------------------------------------------------------------------------------------------------ submit
def test_submit_solve_stores_and_queues_one_job(ctx):
    before = ctx.queue.length()
    jid = solve.submit(ctx, problem=form_problem(ctx), config=small_config())
    assert ctx.queue.length() == before + 1
    with ctx.session() as s:
        job = J.get_job(s, job_id=jid)
        assert (job.kind, job.status) == ("solve", "queued")
        assert job.config["budget"] == 4 and job.config["n"] == 2 and job.config["strategy"] == "best_of_k"
        assert job.config["self_distillation"]["alpha"] == 1.0  # empty box = engine default
        assert job.problem.n_hidden_tests == 1


@pytest.mark.parametrize("config", [
    {"advanced": {"self_distillation.alpha": "5"}},
    {"strategy": "magic"},
    {"extra_yaml": "ppo_epochs: 0"},
])
def test_invalid_solve_config_stores_and_queues_nothing(ctx, config):
    before = ctx.queue.length()
    with pytest.raises(InvalidInput):
        solve.submit(ctx, problem=form_problem(ctx), config=small_config(**config))
    assert counts(ctx) == (0, 0, 0)
    assert ctx.queue.length() == before


def test_invalid_problem_stores_and_queues_nothing(ctx):
    with pytest.raises(InvalidInput) as e:
        solve.submit(ctx, problem={"title": "x", "statement": "y", "tests": {"inputs": ["1"], "outputs": []}},
                     config=small_config())
    assert e.value.field.startswith("tests")
    assert counts(ctx) == (0, 0, 0) and ctx.queue.length() == 0


def test_train_presets_come_from_configs_and_submit(ctx):
    preset = train.load_preset("tiny CPU (plumbing check, < 2 min)")
    assert preset["max_steps"] == 3 and "out_dir" not in preset and "dataset" not in preset
    loss, adapter, values, rest = train.preset_form(preset)
    cfg = train.build_train_config(loss=loss, adapter=adapter, extra_yaml=rest,
                                   fields={k: v for (k, _), v in zip(train.FIELDS, values, strict=True)})
    jid = train.submit(ctx, source="humaneval", config=cfg)
    with ctx.session() as s:
        job = J.get_job(s, job_id=jid)
        assert job.config["dataset"] == "humaneval" and job.config["max_steps"] == 3
        assert job.config["self_distillation"]["teacher_update_rate"] == 0.05
    assert ctx.queue.length() == 1


def test_family_presets_carry_their_loss_and_settings(ctx):
    """The Train page offers every loss of the trainer, and the SRPO, SC-SDPO and SDPG presets come from configs/
    with their own settings."""
    assert [v for _, v in train.LOSS_CHOICES] == ["sdpo", "grpo", "hybrid", "srpo", "sc_sdpo", "sdpg"]
    expected = {"srpo.yaml": ("srpo", "srpo_entropy_beta"), "sc_sdpo.yaml": ("sc_sdpo", None),
                "sdpg.yaml": ("sdpg", "sdpg_beta")}
    for label, name in train.PRESETS.items():
        if name not in expected:
            continue
        loss, adapter, values, rest = train.preset_form(train.load_preset(label))
        want, key = expected[name]
        assert loss == want, label
        cfg = train.build_train_config(loss=loss, adapter=adapter, extra_yaml=rest,
                                       fields={k: v for (k, _), v in zip(train.FIELDS, values, strict=True)})
        jid = train.submit(ctx, source="humaneval", config=cfg)
        with ctx.session() as s:
            job = J.get_job(s, job_id=jid)
            assert job.config["loss"] == want and (key is None or key in job.config), label


def test_train_upload_over_the_limit_stores_nothing(ctx, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(json.dumps({"prompt": "x" * 100, "kind": "mcq", "answer": "A"}) for _ in range(60)))
    assert big.stat().st_size > ctx.settings.max_upload_bytes
    with pytest.raises(InvalidInput, match="SDPO_MAX_UPLOAD_BYTES") as e:
        train.submit(ctx, source="upload", config={"loss": "sdpo"}, upload_path=str(big), dataset_name="big")
    assert e.value.field == "file"
    assert counts(ctx) == (0, 0, 0) and not (ctx.settings.datasets_dir / "big").exists()


def test_train_upload_with_bad_config_leaves_no_dataset_behind(ctx, tmp_path):
    f = tmp_path / "small.jsonl"
    f.write_text(json.dumps({"prompt": "2+2?", "kind": "mcq", "answer": "4"}) + "\n")
    with pytest.raises(InvalidInput) as e:
        train.submit(ctx, source="upload", config={"loss": "nope"}, upload_path=str(f), dataset_name="small")
    assert e.value.field == "loss"
    assert counts(ctx) == (0, 0, 0) and not (ctx.settings.datasets_dir / "small").exists()
    jid = train.submit(ctx, source="upload", config={"loss": "grpo", "max_steps": 1}, upload_path=str(f),
                       dataset_name="small")
    with ctx.session() as s:
        job = J.get_job(s, job_id=jid)
        assert job.label == "small" and job.dataset.train_rows == 1
        assert job.config["train_file"].endswith("small/train.jsonl")


# ---------------------------------------------------------------------------------------------- job views
def _attempt(r, i, passed, total, hp=None, ht=None, code="print(1)"):
    return AttemptIn(round=r, index=i, response=f"```python\n{code}\n```", code=code, reward=passed / total,
                     passed_public=passed, total_public=total, passed_hidden=hp, total_hidden=ht,
                     feedback=f"feedback {r}.{i}", tokens=10 + i, seconds=0.5)


def test_solve_snapshot_table_curve_and_solution(ctx):
    jid = solve.submit(ctx, problem=form_problem(ctx), config=small_config())
    with ctx.session() as s:
        P.record_attempts(s, job_id=jid, attempts=[_attempt(0, 0, 0, 2), _attempt(0, 1, 1, 2)])
    snap = solve.snapshot(ctx, jid)
    # attempt numbers are 1-based as in attempts.jsonl and `sdpo jobs show`; best-of-k has no teacher
    assert snap.attempts.values.tolist() == [[1, 0, "0/2", "-", 0.0, 10, "–", ""], [2, 0, "1/2", "-", 0.5, 11, "–", ""]]
    assert snap.curve.values.tolist() == [[1, 0, "public tests (of 2)"], [2, 1, "public tests (of 2)"]]
    assert "no teacher" in snap.teacher_note and "strategy **best_of_k**" in snap.settings_md
    assert snap.solution is None and not snap.terminal and snap.cancellable
    with ctx.session() as s:  # passes public but not hidden: not a solution; then one that passes both
        P.record_attempts(s, job_id=jid, attempts=[_attempt(1, 0, 2, 2, 0, 1, code="bad"),
                                                   _attempt(1, 1, 2, 2, 1, 1, code="print(sum(map(int, input().split())))")])
    snap = solve.snapshot(ctx, jid)
    assert snap.solution == "print(sum(map(int, input().split())))"
    assert snap.attempts["solved"].tolist() == ["", "", "", "✓"]
    assert snap.curve[snap.curve["tests"] == "hidden tests (of 1)"].values.tolist() == [
        [3, 0, "hidden tests (of 1)"], [4, 1, "hidden tests (of 1)"]]
    v = solve.attempt_view(ctx, snap.attempt_ids[1])
    assert v.header.startswith("**Attempt 2** (round 0)") and "public 1/2" in v.header
    assert v.code == "print(1)" and v.feedback == "feedback 0.1" and v.response == "```python\nprint(1)\n```"
    assert "Best-of-k sampling has no teacher" in v.teacher and "Best-of-k sampling has no teacher" in v.tokens
    path = solve.solution_file(ctx, jid, snap.solution)
    assert open(path).read() == snap.solution


def test_job_views_show_time_per_round_and_an_estimate_for_the_rest(ctx):
    """After the first round: its measured time (sampling + scoring + update) and, while the job runs, the
    time the rest of the budget will take at that rate; a training run per step."""
    jid = solve.submit(ctx, problem=form_problem(ctx), config=small_config(budget="10"))  # n = 2
    assert "per round" not in solve.snapshot(ctx, jid).status_md  # nothing measured yet
    with ctx.session() as s:
        L.claim_job(s, job_id=jid, worker_id="w:1", takeover_after_s=60)
        P.record_attempts(s, job_id=jid, attempts=[_attempt(0, 0, 0, 2), _attempt(0, 1, 1, 2)])
        P.append_metrics(s, job_id=jid, step=0, metrics={"ttt/attempts": 2, "perf/sample_s": 50.0,
                                                         "perf/score_s": 6.0, "perf/update_s": 4.0})
    line = solve.snapshot(ctx, jid).status_md
    assert "1 min 00 s per round" in line and "about 4 min 00 s for the remaining 8 attempts" in line, line
    with ctx.session() as s:
        L.finish_job(s, job_id=jid, worker_id="w:1", status="cancelled")
    line = solve.snapshot(ctx, jid).status_md
    assert "1 min 00 s per round" in line and "remaining" not in line  # finished: no estimate
    tid = train.submit(ctx, source="humaneval", config={"loss": "sdpo", "max_steps": 5})
    with ctx.session() as s:
        L.claim_job(s, job_id=tid, worker_id="w:2", takeover_after_s=60)
        for step in (1, 2):
            P.append_metrics(s, job_id=tid, step=step, metrics={"perf/step_s": 2.0 + step})
    line = train.snapshot(ctx, tid).status_md
    assert "4 s per step" in line and "about 10 s for the remaining 3 steps" in line, line


def test_attempt_view_shows_the_stored_texts_and_names_the_raw_response(ctx):
    """The UI shows what the database holds (control characters escaped, lone surrogates replaced: the text of
    `sdpo jobs attempts` and attempts.jsonl) and where the raw response is kept."""
    jid = solve.submit(ctx, problem=form_problem(ctx), config=small_config())
    with ctx.session() as s:
        L.claim_job(s, job_id=jid, worker_id="w:1", takeover_after_s=60)
        P.record_attempts(s, job_id=jid, worker_id="w:1", jobs_dir=ctx.settings.jobs_dir, attempts=[
            _attempt(0, 0, 0, 2, code="print(1)\x00\ud800").model_copy(
                update={"response": "x\x00", "feedback": "stderr: \x1b[31mboom\x07"}),
            _attempt(0, 1, 0, 2)])
    snap = solve.snapshot(ctx, jid)
    v = solve.attempt_view(ctx, snap.attempt_ids[0])
    raw = P.raw_response_path(jobs_dir=ctx.settings.jobs_dir, job_id=jid, round=0, index=0)
    assert v.code == "print(1)\\x00\ufffd" and v.feedback == "stderr: \\x1b[31mboom\\x07"
    assert v.response == "x\\x00"
    assert f"raw response: `{raw}`" in v.header and raw.read_bytes() == b"x\x00"
    assert "raw response" not in solve.attempt_view(ctx, snap.attempt_ids[1]).header


def test_train_snapshot_plots_and_checkpoint_zip(ctx, tmp_path):
    jid = train.submit(ctx, source="humaneval", config={"loss": "sdpo", "max_steps": 2})
    ck = tmp_path / "ck" / "step_1"
    ck.mkdir(parents=True)
    (ck / "adapter.safetensors").write_bytes(b"x" * 100)
    with ctx.session() as s:
        for step in (0, 1):
            P.append_metrics(s, job_id=jid, step=step, metrics={
                "reward/mean": 0.1 * step, "loss": 1.0 - step, "val/avg@4": 0.5, "response/length_mean": 30,
                "sdpo/reprompt_sample_fraction": 0.25, "perf/step_s": 1.0, "srpo/entropy_weight_mean": 1.0,
                "ref_kl/estimate": 0.01 * step})
        P.register_checkpoint(s, job_id=jid, step=1, kind="lora", path=str(ck))
    snap = train.snapshot(ctx, jid)
    assert snap.plots["reward"].values.tolist() == [[0, 0.0, "reward/mean"], [1, 0.1, "reward/mean"]]
    assert snap.plots["loss"]["value"].tolist() == [1.0, 0.0]
    assert snap.plots["val"]["metric"].unique().tolist() == ["val/avg@4"]
    assert snap.plots["sdpo"]["metric"].unique().tolist() == ["sdpo/reprompt_sample_fraction"]
    assert snap.plots["family"]["metric"].unique().tolist() == ["ref_kl/estimate", "srpo/entropy_weight_mean"]
    assert "step 1:" in snap.log and "reward/mean=0.1" in snap.log and "checkpoint step 1" in snap.log
    (label, ck_id), = snap.checkpoint_choices
    z = train.checkpoint_zip(ctx, jid, ck_id)
    import zipfile

    assert zipfile.ZipFile(z).namelist() == ["step_1/adapter.safetensors"]


def test_history_filters_rerun_delete(ctx):
    a = solve.submit(ctx, problem=form_problem(ctx, title="Alpha problem"), config=small_config())
    b = train.submit(ctx, source="humaneval", config={"loss": "grpo", "max_steps": 1})
    df = history.rows(ctx)
    assert df["id"].tolist() == [b, a]
    assert history.rows(ctx, kind="solve")["id"].tolist() == [a]
    assert history.rows(ctx, search="alpha")["id"].tolist() == [a]
    assert history.rows(ctx, status="running").empty
    with ctx.session() as s:
        c = J.rerun_job(s, job_id=a, validate=ctx.hooks.validate_config, enqueue=ctx.queue.enqueue).id
        J.cancel_job(s, job_id=a)
    assert history.rows(ctx, kind="solve")["id"].tolist() == [c, a]
    with ctx.session() as s:
        J.delete_job(s, job_id=a, jobs_dir=ctx.settings.jobs_dir)
    assert a not in history.rows(ctx)["id"].tolist()


def test_compare_overlays(ctx):
    jobs = [train.submit(ctx, source="humaneval", config={"loss": "sdpo", "max_steps": 2}) for _ in range(2)]
    with ctx.session() as s:
        for k, jid in enumerate(jobs):
            for step in range(2):
                P.append_metrics(s, job_id=jid, step=step, metrics={"reward/mean": step + k})
        assert U.metric_names(s, job_ids=jobs) == ["reward/mean"]
    df = compare.training_overlay(ctx, jobs, "reward/mean")
    assert len(df) == 4 and df["run"].nunique() == 2
    sj = solve.submit(ctx, problem=form_problem(ctx), config=small_config())
    with ctx.session() as s:
        P.record_attempts(s, job_id=sj, attempts=[_attempt(0, 0, 1, 2), _attempt(0, 1, 0, 2)])
    assert compare.discovery_overlay(ctx, [sj])["best tests passed"].tolist() == [1, 1]


def test_system_health_reports_database_broker_and_no_worker(ctx):
    md = system.health_markdown(ctx)
    assert "database | <span class=\"sdpo-dot-ok\">●</span> ok" in md
    assert "broker | <span class=\"sdpo-dot-ok\">●</span> ok" in md
    assert "No live worker" in md and str(ctx.settings.model) in md


def test_history_requeues_a_job_whose_worker_died(ctx):
    """Opening History reaps like a worker does: a running job whose worker stopped heart-beating goes back to
    the queue with a new message (the next free worker resumes it), instead of showing "running" forever."""
    from datetime import timedelta

    from backend.models import utcnow

    jid = solve.submit(ctx, problem=form_problem(ctx), config=small_config())
    waiting = ctx.queue.length()
    with ctx.session() as s:
        L.claim_job(s, job_id=jid, worker_id="gone:1", takeover_after_s=ctx.settings.heartbeat_timeout_s)
        job = s.get(Job, jid)
        assert job.status == "running"
        job.heartbeat_at = utcnow() - timedelta(seconds=ctx.settings.heartbeat_timeout_s + 5)
    row = history.rows(ctx).set_index("id").loc[jid]
    assert "queued" in row["status"]
    with ctx.session() as s:
        job = s.get(Job, jid)
        assert (job.status, job.worker_id, job.resumes) == ("queued", None, 1)
    assert ctx.queue.length() == waiting + 1  # a fresh message for the job
