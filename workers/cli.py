"""Full ``sdpo`` console entry point: the algorithm commands of ``sdpo.cli`` plus service commands.

Lives in ``workers`` because it is the one package allowed to import both ``sdpo`` and ``backend``.

Service commands (same services as the UI, for scripts):

    sdpo db upgrade
    sdpo worker
    sdpo submit solve --problem P.json --strategy sdpo --budget 16 [--set lr=1e-5 --set self_distillation.alpha=1]
    sdpo submit train --config C.yaml [--set max_steps=10] [--gpus 2]
    sdpo jobs list [--json] [--status running] [--kind solve] [--search text]
    sdpo jobs show ID [--json]
    sdpo jobs attempts ID            (JSON lines)
    sdpo jobs cancel ID

Invalid input exits with code 2 and a message naming the field; nothing is queued then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from sdpo.cli import app, fail

db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic).")
submit_app = typer.Typer(no_args_is_help=True, help="Submit solve/train jobs to the queue; prints the job id.")
jobs_app = typer.Typer(no_args_is_help=True, help="List, inspect and cancel jobs.")
app.add_typer(db_app, name="db")
app.add_typer(submit_app, name="submit")
app.add_typer(jobs_app, name="jobs")


def _default_model_env():
    """Unless SDPO_MODEL is set, set it to the engine's default model (``sdpo.models.default_model_path``: a toy
    model built under the data dir, else the committed demo model), so that the app, ``sdpo serve`` and a
    standalone ``sdpo worker`` agree on it. Returns the path it set, or None when SDPO_MODEL was given."""
    import os

    if os.environ.get("SDPO_MODEL"):
        return None
    from sdpo.models import default_model_path

    path = default_model_path()
    os.environ["SDPO_MODEL"] = str(path)
    return path


def _settings():
    from pydantic import ValidationError

    from backend.settings import get_settings

    try:
        return get_settings()
    except ValidationError as e:
        fail("; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors()))


def _sessions(settings):
    """Session factory; an SQLite database is created/migrated on first use (PostgreSQL: `sdpo db upgrade`)."""
    from backend.db import session_factory_from_settings
    from backend.migrate import upgrade

    if settings.database_url.startswith("sqlite"):
        upgrade(settings.database_url)
    return session_factory_from_settings(settings)


# ------------------------------------------------------------------------------------------------- db
@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Option("head", help="Target revision.")) -> None:
    """Create or migrate the database schema at SDPO_DATABASE_URL."""
    from backend.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    typer.echo(f"database at revision {revision}")


# --------------------------------------------------------------------------------------------- worker
@app.command("worker")
def worker_cmd(
    loglevel: str = typer.Option("INFO", "--loglevel"),
    hostname: str = typer.Option("", "--hostname", help="Celery node name (default sdpo-<pid>@<host>)."),
) -> None:
    """Start a job worker: one job at a time from the queue of its GPU count (SDPO_QUEUE for one GPU,
    SDPO_QUEUE + N for N, or SDPO_WORKER_QUEUES); run one per GPU (CUDA_VISIBLE_DEVICES=i)."""
    import os

    from workers.runner import visible_gpus

    _default_model_env()
    settings = _settings()
    if settings.database_url.startswith("sqlite"):
        from backend.migrate import upgrade

        upgrade(settings.database_url)
    from workers.celery_app import app as celery_app

    queues = settings.consumed_queues(settings.worker_gpus or visible_gpus())
    # no --pool: the app's worker_pool (workers.pool, the solo pool that can stop its job) is used
    celery_app.worker_main([
        "worker", "--concurrency", "1", "--queues", ",".join(queues),
        "--loglevel", loglevel, "--hostname", hostname or f"sdpo-{os.getpid()}@%h", "--without-mingle",
        "--without-gossip",
    ])


# --------------------------------------------------------------------------------------------- submit
def _submit(kind: str, config: dict[str, Any], *, problem_data: Any = None, model: str = "", gpus: int = 1,
            dataset: str | None = None) -> None:
    from backend.db import session_scope
    from backend.errors import EnqueueError, InvalidInput, NotFound
    from backend.queue import JobQueue
    from backend.services.datasets import dataset_config, get_dataset_by_name
    from backend.services.jobs import submit_job
    from backend.services.problems import create_problem
    from workers.engine import parse_problem, validate_config

    settings = _settings()
    sessions = _sessions(settings)
    queue = JobQueue(settings)
    try:
        with session_scope(sessions) as s:
            dataset_id = None
            if dataset:
                try:
                    ds = get_dataset_by_name(s, name=dataset)
                except NotFound:
                    raise InvalidInput("dataset", f"unknown dataset {dataset!r}; register or upload it first, "
                                       "or use the built-in 'humaneval' (--set dataset=humaneval)") from None
                dataset_id = ds.id
                config = {**config, **dataset_config(ds)}
            problem_id = None
            if kind == "solve":
                # flushed, not committed: submit_job validates the config first, so a bad config rolls the
                # problem back too and leaves nothing behind
                problem_id = create_problem(s, data=problem_data, validate=parse_problem, settings=settings).id
            job = submit_job(s, kind=kind, config=config, validate=validate_config, enqueue=queue.enqueue,
                             problem_id=problem_id, dataset_id=dataset_id, model=model, gpus=gpus,
                             label=dataset or "")
            typer.echo(str(job.id))
    except InvalidInput as e:
        fail(str(e))
    except EnqueueError as e:
        fail(str(e), code=1)


@submit_app.command("solve")
def submit_solve(
    problem: Path = typer.Option(..., "--problem", help="Problem JSON (title, statement, tests, hidden_tests)."),
    strategy: str = typer.Option(None, "--strategy", help="sdpo | best_of_k | multiturn."),
    budget: int = typer.Option(None, "--budget", help="Attempt budget."),
    model: str = typer.Option("", "--model", help="Model folder (default SDPO_MODEL)."),
    config: Path = typer.Option(None, "--config", help="Optional YAML/JSON with solve settings."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: KEY=VALUE (dotted keys nest)."),
) -> None:
    """Queue a test-time solve of one problem; prints the job id."""
    try:
        problem_text = problem.read_text(encoding="utf-8")
    except OSError as e:
        fail(f"problem: cannot read {problem}: {e.strerror}")
    cfg: dict[str, Any] = _read_config(config) if config else {}
    if strategy is not None:
        cfg["strategy"] = strategy
    if budget is not None:
        cfg["budget"] = budget
    _submit("solve", _with_overrides(cfg, set_), problem_data=problem_text, model=model)


def _read_config(path: Path) -> dict[str, Any]:
    """A config file read with the one settings parser (``sdpo.config``: ``lr: 1e-5`` is a number)."""
    from sdpo.config import ConfigError, read_config_file

    try:
        return read_config_file(path)
    except ConfigError as e:
        fail(str(e))


def _with_overrides(cfg: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` applied to ``cfg`` (``sdpo.config.apply_overrides``; dotted keys nest)."""
    from sdpo.config import ConfigError, apply_overrides

    try:
        return apply_overrides(cfg, pairs)
    except ConfigError as e:
        fail(str(e))


@submit_app.command("train")
def submit_train(
    config: Path = typer.Option(..., "--config", help="Training config YAML (sdpo.trainer.TrainConfig fields)."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: KEY=VALUE (dotted keys nest)."),
    gpus: int = typer.Option(1, "--gpus", help="GPUs for this job (>1 runs torchrun on one host)."),
    dataset: str = typer.Option(None, "--dataset", help="Name of a registered/uploaded dataset."),
    model: str = typer.Option("", "--model", help="Model folder (overrides model_path)."),
) -> None:
    """Queue a training run; prints the job id. The job writes into its own folder (SDPO_DATA_DIR/jobs/ID):
    an out_dir in the config file (there for `sdpo train`) is left out, with a note."""
    cfg = _read_config(config)
    for key in ("out_dir", "run_dir"):
        if key in cfg and key not in {p.partition("=")[0].strip() for p in set_}:
            typer.echo(f"note: {key}: {cfg.pop(key)!r} from {config} is not used; the job writes into its own "
                       "folder (SDPO_DATA_DIR/jobs/<id>)", err=True)
    _submit("train", _with_overrides(cfg, set_), model=model, gpus=gpus, dataset=dataset)


# ----------------------------------------------------------------------------------------------- jobs
def _dt(v) -> str | None:
    return v.isoformat(timespec="seconds") if v else None


@jobs_app.command("list")
def jobs_list(
    as_json: bool = typer.Option(False, "--json", help="One JSON array."),
    status: str = typer.Option(None, "--status"),
    kind: str = typer.Option(None, "--kind"),
    search: str = typer.Option(None, "--search"),
    limit: int = typer.Option(50, "--limit"),
) -> None:
    """Jobs, newest first (jobs whose worker stopped heart-beating are first re-enqueued to resume, or failed
    after SDPO_MAX_RESUMES resumes)."""
    from backend.db import session_scope
    from backend.errors import InvalidInput
    from backend.queue import JobQueue
    from backend.schemas import JobSummary
    from backend.services.jobs import list_jobs, reap_stale

    settings = _settings()
    sessions = _sessions(settings)
    with session_scope(sessions) as s:
        reap_stale(s, timeout_s=settings.heartbeat_timeout_s, enqueue=JobQueue(settings).enqueue,
                   max_resumes=settings.max_resumes)
    with session_scope(sessions) as s:
        try:
            rows = [JobSummary.model_validate(j) for j in list_jobs(s, kind=kind, status=status, search=search,
                                                                   limit=limit)]
        except InvalidInput as e:
            fail(str(e))
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=1))
        return
    typer.echo(f"{'id':>6}  {'kind':6} {'status':10} {'created':20} label")
    for r in rows:
        typer.echo(f"{r.id:>6}  {r.kind:6} {r.status:10} {_dt(r.created_at):20} {r.label}")


# Metrics the text summary shows per round when logged (--json has them all).
ROUND_METRICS = ("reward/mean", "loss", "grad_norm", "sdpo/reprompt_sample_fraction", "sdpo/kl_mean", "ttt/updated",
                 "response/length_mean", "response/truncated_fraction")


def round_line(kind: str, r) -> str:
    """One line of ``jobs show``: a solve round (its attempts numbered as in attempts.jsonl and the UI table)
    or a training step."""
    if kind == "solve":
        head = f"round {r.round}"
        if r.attempts:
            last = r.first_attempt + r.attempts - 1
            head += f": attempts {r.first_attempt}-{last}" if r.attempts > 1 else f": attempt {r.first_attempt}"
    else:
        head = f"step {r.round}" + (f": {r.attempts} rollouts" if r.attempts else "")
    parts = [head]
    if r.attempts and r.tests is not None:
        parts.append(f"best {r.best_passed}/{r.tests} tests, mean reward {r.reward_mean:.3g}"
                     + (f", {r.solved} solved" if r.solved else ""))
    shown = [f"{name}={r.metrics[name]:.4g}" for name in ROUND_METRICS if name in r.metrics]
    seconds = r.metrics.get("perf/step_s", sum(v for k, v in r.metrics.items()
                                               if k.startswith("perf/") and k.endswith("_s")))
    if seconds:
        shown.append(f"{seconds:.1f} s")
    return "  " + " · ".join(parts + ([" ".join(shown)] if shown else []))


@jobs_app.command("show")
def jobs_show(job_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Status, error, every round (attempts, rewards, metrics, time), checkpoints and result of one job."""
    from backend.db import session_scope
    from backend.errors import NotFound
    from backend.services.jobs import job_detail, round_summaries

    settings = _settings()
    with session_scope(_sessions(settings)) as s:
        try:
            d = job_detail(s, job_id=job_id)
            rounds = round_summaries(s, job_id=job_id)
        except NotFound as e:
            fail(str(e))
    if as_json:
        typer.echo(json.dumps({**d.model_dump(mode="json"), "rounds": [r.model_dump() for r in rounds]}, indent=1))
        return
    typer.echo(f"job {d.id} ({d.kind}) {d.status}; attempts {d.n_attempts}; worker {d.worker_id or '-'}")
    if d.error:
        typer.echo(f"error: {d.error}")
    for r in rounds:
        typer.echo(round_line(d.kind, r))
    for c in d.checkpoints:
        typer.echo(f"  checkpoint step {c.step} {c.kind} {c.path} ({c.bytes} bytes)")
    if d.result:
        typer.echo(f"result: {json.dumps(d.result)}")


@jobs_app.command("attempts")
def jobs_attempts(job_id: int = typer.Argument(...)) -> None:
    """A job's attempts as JSON lines, in (round, index) order: the texts as stored (what the UI shows and the
    job's attempts.jsonl holds), with the raw response file where one was kept."""
    from backend.db import session_scope
    from backend.errors import NotFound
    from backend.services.jobs import get_job, iter_attempt_lines

    settings = _settings()
    with session_scope(_sessions(settings)) as s:
        try:
            get_job(s, job_id=job_id)
        except NotFound as e:
            fail(str(e))
        for line in iter_attempt_lines(s, job_id=job_id, jobs_dir=settings.jobs_dir):
            typer.echo(line, nl=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int = typer.Argument(...)) -> None:
    """Cancel a job (queued: at once; running: within seconds, keeping what it had committed)."""
    from backend.db import session_scope
    from backend.errors import IllegalTransition, NotFound
    from backend.queue import JobQueue
    from backend.services.jobs import cancel_job

    settings = _settings()
    with session_scope(_sessions(settings)) as s:
        try:
            job = cancel_job(s, job_id=job_id, revoke=JobQueue(settings).revoke)
        except (NotFound, IllegalTransition) as e:
            fail(str(e))
        typer.echo(f"job {job.id} {'cancelled' if job.status == 'cancelled' else 'cancelling'}")


# ---------------------------------------------------------------------------------------------- serve
def lcb_problem(row: dict[str, Any]) -> dict[str, Any]:
    """A pasted LiveCodeBench row -> problem dict: public test cases as ``tests``, all cases as hidden tests."""
    from sdpo.data.lcb import decode_test_cases, row_to_task
    from sdpo.data.problem import Problem

    task = row_to_task(row, where="pasted row")
    n_public = len(decode_test_cases(row.get("public_test_cases") or "[]"))
    if n_public == 0:
        raise ValueError("public_test_cases: the row has no public test case to give feedback with")
    spec = task.tests.to_dict()
    public = {**spec, "inputs": spec["inputs"][:n_public], "outputs": spec["outputs"][:n_public]}
    problem = Problem.from_task(task)
    return {**problem.to_dict(), "tests": public, "hidden_tests": spec}


def install_examples(settings) -> str:
    """Write the built-in example problems to ``<data dir>/examples`` and register that folder as the
    ``examples`` dataset (the Solve page's picker lists its problems); a one-line report."""
    from backend.db import session_scope
    from backend.services.datasets import sync_builtin_dataset
    from sdpo.data.examples import NAME, example_problems, write_examples

    folder = write_examples(settings.data_dir / NAME)
    with session_scope(_sessions(settings)) as s:
        ds = sync_builtin_dataset(s, name=NAME, path=folder)
    if ds is None:
        return (f"Example problems: not registered, a dataset named {NAME!r} already exists elsewhere; register "
                f"{folder} under another name to pick them.")
    return f"Example problems: {len(example_problems())} in the Solve page's picker (dataset {NAME!r})."


def engine_hooks():
    """The engine callables the web app validates with (``app`` imports only ``backend``)."""
    from app.context import EngineHooks
    from workers.engine import parse_problem, validate_config

    return EngineHooks(validate_config=validate_config, parse_problem=parse_problem, parse_lcb=lcb_problem)


@app.command("serve")
def serve_cmd(
    worker: bool = typer.Option(True, "--worker/--no-worker", help="Also start one job worker."),
) -> None:
    """Run SDPO Studio: default model, migrations, one worker, then the web app on SDPO_HOST:SDPO_PORT."""
    import os
    import signal
    import subprocess
    import sys

    from backend.migrate import upgrade

    def _interrupt(signum, frame):  # SIGTERM stops the app like Ctrl-C, so the worker is stopped too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)

    # 1. A model: SDPO_MODEL, else the default (the committed demo model; no download, no build).
    model_path = _default_model_env()
    if model_path is not None:
        from sdpo.models import demo_model_path

        if model_path == demo_model_path():
            typer.echo(f"Demo model: the toy-world model committed at {model_path} (3 M parameters; it writes short "
                       "programs for the toy world's problems, e.g. the Solve page's example problems).")
        elif model_path.name == "tiny":
            typer.echo(f"Demo model: the tiny random model at {model_path} (it exercises everything but solves "
                       f"nothing). For one that writes small programs, build the toy model once: "
                       f"`sdpo make-toy-model --out {model_path.parent / 'toy'}` (~20 min on CPU); "
                       "`make run` uses it when present.")
    settings = _settings()
    # 2. The database schema.
    upgrade(settings.database_url)
    # 3. The built-in example problems (rewritten at every start; the app works without them).
    try:
        typer.echo(install_examples(settings))
    except (OSError, ValueError) as e:
        typer.echo(f"Example problems: not installed ({e})", err=True)
    # 4. One worker process (stopped when the app exits).
    proc = None
    if worker:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker"], env=os.environ.copy())
    try:
        # 5. The web app (blocks until Ctrl-C).
        from app.main import launch

        typer.echo(f"SDPO Studio on http://{settings.host}:{settings.port} (model {settings.model})")
        launch(settings, engine_hooks())
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
