"""Full ``sdpo`` console entry point: the algorithm commands of ``sdpo.cli`` plus service commands.

Lives in ``workers`` because it is the one package allowed to import both ``sdpo`` and ``backend``.

Service commands (same services as the UI, for scripts):

    sdpo db upgrade
    sdpo worker
    sdpo submit solve --problem P.json --strategy sdpo --budget 16 [--set lr=1e-5 --set self_distillation.alpha=1]
    sdpo submit train --config C.yaml [--set max_steps=10] [--gpus 2]
    sdpo jobs list [--json] [--status running] [--kind solve] [--search text]
    sdpo jobs show ID [--json]
    sdpo jobs cancel ID

Invalid input exits with code 2 and a message naming the field; nothing is queued then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml

from sdpo.cli import app, fail

db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic).")
submit_app = typer.Typer(no_args_is_help=True, help="Submit solve/train jobs to the queue; prints the job id.")
jobs_app = typer.Typer(no_args_is_help=True, help="List, inspect and cancel jobs.")
app.add_typer(db_app, name="db")
app.add_typer(submit_app, name="submit")
app.add_typer(jobs_app, name="jobs")


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


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=1e-5", "self_distillation.alpha=1"]`` -> ``{"lr": 1e-5, "self_distillation": {"alpha": 1}}``.

    Values are parsed as YAML scalars/lists (numbers, true/false, null, [1, 2]); dotted keys nest.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE")
        value = _scalar(raw)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {pair!r}: {p} is not a mapping")
        node[parts[-1]] = value
    return out


def _scalar(raw: str) -> Any:
    """int, then float (YAML 1.1 reads ``1e-5`` as a string), then YAML (bools, null, lists), else text."""
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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

    settings = _settings()
    if settings.database_url.startswith("sqlite"):
        from backend.migrate import upgrade

        upgrade(settings.database_url)
    from workers.celery_app import app as celery_app

    queues = settings.consumed_queues(settings.worker_gpus or visible_gpus())
    celery_app.worker_main([
        "worker", "--pool", "solo", "--concurrency", "1", "--queues", ",".join(queues),
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
    try:
        cfg = deep_merge(cfg, parse_overrides(set_))
    except ValueError as e:
        fail(str(e))
    _submit("solve", cfg, problem_data=problem_text, model=model)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        fail(f"config: cannot read {path}: {e.strerror}")
    except yaml.YAMLError as e:
        fail(f"config: {path} is not valid YAML/JSON: {e}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        fail(f"config: {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


@submit_app.command("train")
def submit_train(
    config: Path = typer.Option(..., "--config", help="Training config YAML (sdpo.trainer.TrainConfig fields)."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: KEY=VALUE (dotted keys nest)."),
    gpus: int = typer.Option(1, "--gpus", help="GPUs for this job (>1 runs torchrun on one host)."),
    dataset: str = typer.Option(None, "--dataset", help="Name of a registered/uploaded dataset."),
    model: str = typer.Option("", "--model", help="Model folder (overrides model_path)."),
) -> None:
    """Queue a training run; prints the job id."""
    cfg = _read_config(config)
    try:
        cfg = deep_merge(cfg, parse_overrides(set_))
    except ValueError as e:
        fail(str(e))
    _submit("train", cfg, model=model, gpus=gpus, dataset=dataset)


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


@jobs_app.command("show")
def jobs_show(job_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Status, error, attempts count, last metrics and checkpoints of one job."""
    from backend.db import session_scope
    from backend.errors import NotFound
    from backend.services.jobs import job_detail

    settings = _settings()
    with session_scope(_sessions(settings)) as s:
        try:
            d = job_detail(s, job_id=job_id)
        except NotFound as e:
            fail(str(e))
    if as_json:
        typer.echo(json.dumps(d.model_dump(mode="json"), indent=1))
        return
    typer.echo(f"job {d.id} ({d.kind}) {d.status}; attempts {d.n_attempts}; worker {d.worker_id or '-'}")
    if d.error:
        typer.echo(f"error: {d.error}")
    for name, value in sorted(d.last_metrics.items()):
        typer.echo(f"  step {d.last_step} {name} = {value:g}")
    for c in d.checkpoints:
        typer.echo(f"  checkpoint step {c.step} {c.kind} {c.path} ({c.bytes} bytes)")
    if d.result:
        typer.echo(f"result: {json.dumps(d.result)}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: int = typer.Argument(...)) -> None:
    """Cancel a job (queued: at once; running: after the current step)."""
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

    # 1. A model: SDPO_MODEL, else the default (the tiny model is built on first use, no download).
    if not os.environ.get("SDPO_MODEL"):
        from sdpo.models import default_model_path

        model_path = default_model_path()
        os.environ["SDPO_MODEL"] = str(model_path)
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
