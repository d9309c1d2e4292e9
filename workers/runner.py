"""Running one job inside a worker: claim it, heart-beat, run the engine with callbacks that commit
progress as it happens, honour cancellation, and record how it ended.

Crash safety:
* a job whose worker stopped heart-beating for ``heartbeat_timeout_s`` is re-enqueued by the reaper
  (``backend.services.jobs.reap_stale``, run by every worker each heartbeat interval and by ``sdpo jobs list``)
  with a fresh message, up to ``max_resumes`` times, then failed with the reason; a cancel requested before the
  worker died ends it ``cancelled``;
* the worker that takes the message resumes it (``Claim.RESUME``): a train job from its last registered
  checkpoint (what the lost run recorded after that step is discarded first, so the re-run steps replace it),
  a solve job after the attempts already in the database (``start_attempt``). A redelivered message of a job
  whose worker went silent is taken over the same way;
* a message for a job that a live worker runs (Redis redelivers long jobs' messages after the visibility
  timeout) is dropped at once: should that worker die, the reaper re-enqueues the job;
* attempts are inserted idempotently on (job, round, index), and every progress write is conditional on the
  worker still owning the job, so a worker that lost its job cannot write after a takeover;
* an N-GPU job's ranks die with their worker (parent-death signal through ``torchrun``) and stop by themselves
  when the job stops being their worker's.

Stopping: a cancel is seen within about a second, while the engine generates, scores or updates
(``DbCallbacks.should_stop``, polled through ``sdpo.callbacks.StopPoll``), and the job ends ``cancelled`` with
what it had committed. A worker that is shut down (SIGTERM, Ctrl-C, Celery's cold shutdown) stops its running
job the same way (``WorkerContext.request_stop``): it ends ``cancelled`` if a cancel was requested, else it goes
back to the queue to be resumed by the next worker (``backend.services.jobs.release_job``; ``failed`` with a
one-line reason after ``max_resumes`` resumes). An N-GPU job's ranks stop at step boundaries; the worker
stops their process group if they have not stopped a few seconds after the request.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from backend.db import session_factory_from_settings, session_scope
from backend.errors import JobLost, NotFound, NotRecorded
from backend.queue import JobQueue
from backend.services import jobs as J
from backend.services import teacher as T
from backend.services.workers import touch_worker
from backend.settings import Settings
from backend.text import database_error_reason
from workers.engine import attempt_in, build_solve_config, build_train_config, teacher_view_in

log = logging.getLogger("sdpo.worker")
# Seconds the ranks of an N-GPU job get to stop by themselves (at a step boundary) after a cancel or shutdown.
RANKS_STOP_GRACE_S = 3.0


def visible_gpus() -> int | None:
    """CUDA devices this process sees, or None without CUDA (a CPU host)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no usable torch/CUDA: a CPU worker
        return None


@dataclass
class WorkerContext:
    """What a worker process needs to run jobs: its settings, a session factory, its id and how many GPUs it
    offers (``gpus``: ``SDPO_WORKER_GPUS``, else the CUDA devices it sees; None on a CPU host, where an N-GPU
    job runs N gloo processes)."""

    settings: Settings
    sessions: sessionmaker[Session]
    worker_id: str
    gpus: int | None = None
    # Set when the worker process is shutting down: the running job stops at its next stop check.
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    stop_reason: str = ""

    def request_stop(self, reason: str) -> None:
        """Ask the running job (and any job this worker would start) to stop: the worker is shutting down.
        Safe inside a signal handler (sets a flag)."""
        if not self.stopping.is_set():
            self.stop_reason = reason
        self.stopping.set()

    @classmethod
    def from_settings(cls, settings: Settings, *, detect_gpus: bool = True) -> WorkerContext:
        gpus = settings.worker_gpus or (visible_gpus() if detect_gpus else None)
        return cls(settings=settings, sessions=session_factory_from_settings(settings),
                   worker_id=f"{socket.gethostname()}:{os.getpid()}", gpus=gpus)

    _job_queue: JobQueue | None = field(default=None, repr=False)

    @property
    def queues(self) -> list[str]:
        """The queues this worker consumes (``Settings.consumed_queues``)."""
        return self.settings.consumed_queues(self.gpus)

    def job_queue(self) -> JobQueue:
        """The broker client this worker enqueues with (the reaper's re-enqueues), made on first use."""
        if self._job_queue is None:
            self._job_queue = JobQueue(self.settings)
        return self._job_queue


class JobHeartbeat:
    """Background thread refreshing the job's heartbeat; ``lost`` is set when the job stops being ours
    (reaped, taken over, deleted)."""

    def __init__(self, ctx: WorkerContext, job_id: int):
        self.ctx, self.job_id = ctx, job_id
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> JobHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.ctx.settings.heartbeat_interval_s):
            try:
                with session_scope(self.ctx.sessions) as s:
                    ours = J.heartbeat(s, job_id=self.job_id, worker_id=self.ctx.worker_id)
                    touch_worker(s, worker_id=self.ctx.worker_id, current_job_id=self.job_id if ours else None)
                if not ours:
                    log.warning("job %s is no longer ours (reaped, taken over or deleted); stopping", self.job_id)
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - a DB hiccup must not kill the job; the next beat retries
                log.exception("heartbeat of job %s failed", self.job_id)


class DbCallbacks:
    """``sdpo.callbacks.Callbacks`` hooks that commit each event in its own transaction, as the job's owner
    ``owner`` (the worker id; the ranks of an N-GPU job write for their worker). A write refused because the
    job is no longer the owner's sets ``lost``; ``should_stop`` then says stop, as it does on a cancel."""

    def __init__(self, ctx: WorkerContext, job_id: int, heartbeat: JobHeartbeat | None, owner: str | None = None):
        self.ctx, self.job_id, self.heartbeat = ctx, job_id, heartbeat
        self.owner = owner or ctx.worker_id
        self.cancelled = False
        self.lost = threading.Event()

    def _write(self, fn, what: str, **kwargs) -> None:
        """Commit one write; a database error becomes ``NotRecorded`` naming ``what`` with a one-line reason."""
        if self.lost.is_set():
            return
        try:
            with session_scope(self.ctx.sessions) as s:
                fn(s, job_id=self.job_id, worker_id=self.owner, **kwargs)
        except JobLost:
            log.warning("job %s is no longer %s's; its progress is not recorded", self.job_id, self.owner)
            self.lost.set()
        except SQLAlchemyError as e:
            log.exception("job %s: the database refused %s", self.job_id, what)
            raise NotRecorded(what, database_error_reason(e)) from None

    def on_attempts(self, attempts: list[Any]) -> None:
        """Record a round's attempts. If the database refuses the batch, each attempt is recorded alone, and
        one it still refuses is recorded as a stand-in carrying the reason (``record_unstored_attempt``) so
        the job goes on with complete attempts; only when even that fails does the job fail."""
        rows = [attempt_in(a) for a in attempts]
        jobs_dir = self.ctx.settings.jobs_dir
        try:
            self._write(J.record_attempts, f"the attempts of round {rows[0].round}" if rows else "attempts",
                        attempts=rows, jobs_dir=jobs_dir)
            return
        except NotRecorded:
            pass
        for row in rows:
            what = f"attempt {row.index} of round {row.round}"
            try:
                self._write(J.record_attempts, what, attempts=[row], jobs_dir=jobs_dir)
            except NotRecorded as e:
                log.error("job %s: %s is recorded without its texts: %s", self.job_id, what, e.reason)
                self._write(J.record_unstored_attempt, what, attempt=row, reason=e.reason, jobs_dir=jobs_dir)

    def on_teacher(self, views: list[Any]) -> None:
        """Record what the teacher saw and said about a round's attempts. It is for showing only: a write the
        database refuses is logged and the job goes on."""
        what = f"the teacher views of round {views[0].round}" if views else "teacher views"
        try:
            self._write(T.record_teacher_views, what, views=[teacher_view_in(v) for v in views])
        except NotRecorded as e:
            log.error("job %s: %s are not recorded: %s", self.job_id, what, e.reason)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._write(J.append_metrics, f"the metrics of step {step}", step=step, metrics=metrics)

    def on_checkpoint(self, step: int, path: str, kind: str) -> None:
        self._write(J.register_checkpoint, f"the checkpoint of step {step}", step=step, kind=kind, path=path)

    def should_stop(self) -> bool:
        """Stop when the worker is shutting down, the job was cancelled or deleted, or it is no longer running
        under its owner (reaped, re-enqueued, taken over). Checked before every round/step (on every rank of an
        N-GPU job) and, at most twice a second, inside them (``sdpo.callbacks.StopPoll``)."""
        if self.ctx.stopping.is_set():
            return True
        if self.lost.is_set() or (self.heartbeat is not None and self.heartbeat.lost.is_set()):
            return True
        with session_scope(self.ctx.sessions) as s:
            self.cancelled = J.cancel_requested(s, job_id=self.job_id)
            if not J.owns_job(s, job_id=self.job_id, worker_id=self.owner):
                self.lost.set()
        return self.cancelled or self.lost.is_set()

    def as_callbacks(self):
        from sdpo.callbacks import Callbacks

        return Callbacks(on_attempts=self.on_attempts, on_metrics=self.on_metrics,
                         on_checkpoint=self.on_checkpoint, should_stop=self.should_stop, on_teacher=self.on_teacher)


def ensure_model(path: str, settings: Settings) -> Path:
    """Return a model folder, building the default tiny model on first use (atomically, under a lock)."""
    p = Path(path)
    if (p / "config.json").exists() or p.resolve() != settings.default_model_path.resolve():
        return p
    import fcntl

    from sdpo.tiny import make_tiny_model

    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.parent / ".tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (p / "config.json").exists():
            tmp = p.parent / f".tiny-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            make_tiny_model(tmp, seed=0)
            os.replace(tmp, p)
    return p


def _result_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if isinstance(result, dict):
        return result
    if dataclasses.is_dataclass(result):
        out = {}
        for f in dataclasses.fields(result):
            v = getattr(result, f.name)
            if isinstance(v, int | float | str | bool | type(None)):
                out[f.name] = v
            elif isinstance(v, Path):
                out[f.name] = str(v)
            elif isinstance(v, dict) and all(isinstance(x, int | float | str | bool) for x in v.values()):
                out[f.name] = dict(v)
        return out
    return {"value": str(result)}


def claim(ctx: WorkerContext, job_id: int) -> J.Claim:
    """Claim the job once: no waiting for a live worker's job (the message is a duplicate; dropped)."""
    with session_scope(ctx.sessions) as s:
        c = J.claim_job(s, job_id=job_id, worker_id=ctx.worker_id, takeover_after_s=ctx.settings.takeover_after_s,
                        max_resumes=ctx.settings.max_resumes)
    if c is J.Claim.SKIP:
        log.info("job %s: message dropped (the job is finished, cancelled, deleted or run by a live worker)", job_id)
    return c


def reap(ctx: WorkerContext) -> list[tuple[int, str]]:
    """Run the reaper as this worker: re-enqueue (or fail, or end cancelled) jobs whose worker went silent."""
    with session_scope(ctx.sessions) as s:
        reaped = J.reap_stale(s, timeout_s=ctx.settings.heartbeat_timeout_s, enqueue=ctx.job_queue().enqueue,
                              max_resumes=ctx.settings.max_resumes)
    for job_id, outcome in reaped:
        log.warning("job %s %s: its worker stopped heart-beating", job_id, outcome)
    return reaped


def defer_message(ctx: WorkerContext, job_id: int, kind: str, task_id: str) -> str:
    """A job message reached this worker while it shuts down: send it back to the job's queue unchanged (same
    task id) for the next worker and return ``"deferred"``. (Celery's ``Reject(requeue=True)`` would do the
    same but logs a traceback.) A message of a deleted job is dropped."""
    try:
        with session_scope(ctx.sessions) as s:
            gpus = J.get_job(s, job_id=job_id).gpus
    except NotFound:
        return "skipped"
    ctx.job_queue().enqueue(kind, job_id, task_id, gpus)
    log.info("job %s: message sent back to the queue (this worker is shutting down)", job_id)
    return "deferred"


def gpu_shortfall(ctx: WorkerContext, gpus: int) -> str | None:
    """Why this worker cannot run a job on ``gpus`` GPUs (None when it can). A CPU worker (no CUDA, no
    ``SDPO_WORKER_GPUS``) runs any count as gloo processes."""
    if ctx.gpus is None or gpus <= ctx.gpus:
        return None
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"the job needs {gpus} GPUs but worker {ctx.worker_id} offers {ctx.gpus}"
            f"{f' (CUDA_VISIBLE_DEVICES={seen})' if seen is not None else ''}. {gpus}-GPU jobs are routed to the "
            f"queue {ctx.settings.queue_for(gpus)!r}; only workers offering {gpus} GPUs should consume it "
            "(SDPO_WORKER_QUEUES, docs/deploy.md). Re-run the job once such a worker runs.")


def run_job(ctx: WorkerContext, job_id: int, kind: str) -> str:
    """Run job ``job_id`` to its end; returns how it ended ("succeeded", "cancelled", "failed", "skipped",
    "lost"). Never raises for engine errors: they end the job ``failed`` with the error text."""
    # 1. Claim the job (or learn it is finished, cancelled, deleted or held by a live worker).
    c = claim(ctx, job_id)
    if c is J.Claim.SKIP:
        return "skipped"
    # 2. Refuse a job needing more GPUs than this worker has.
    with session_scope(ctx.sessions) as s:
        short = gpu_shortfall(ctx, J.get_job(s, job_id=job_id).gpus)
        if short:
            log.error("job %s refused: %s", job_id, short)
            J.finish_job(s, job_id=job_id, worker_id=ctx.worker_id, status="failed", error=short)
            return "failed"
    # 3. Heart-beat while we work.
    heartbeat = JobHeartbeat(ctx, job_id).start()
    callbacks = DbCallbacks(ctx, job_id, heartbeat)
    status, error, result = "succeeded", None, None
    job_dir = ctx.settings.job_dir(job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    log_handler = logging.FileHandler(job_dir / "job.log")  # the UI's log tail (backend.services.jobs.job_log_tail)
    log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(log_handler)
    log.info("job %s (%s) %s on worker %s", job_id, kind, "resumed" if c is J.Claim.RESUME else "started",
             ctx.worker_id)
    try:
        # 4. Run the engine with callbacks that commit as they go. A train job resumes from its last
        # checkpoint; what its lost run recorded after that step is discarded (the steps are re-run).
        with session_scope(ctx.sessions) as s:
            job = J.get_job(s, job_id=job_id)
            if job.kind != kind:
                raise ValueError(f"job {job_id} is a {job.kind} job, not {kind}")
            problem_data = job.problem.data if job.problem is not None else None
            config, model, gpus = dict(job.config), job.model, job.gpus
            ck = J.latest_checkpoint(s, job_id=job_id)
            resume_from = ck.path if ck is not None else None
            if kind == "train":
                J.discard_progress_after(s, job_id=job_id, step=ck.step if ck is not None else 0,
                                         worker_id=ctx.worker_id)
            start_attempt = J.count_attempts(s, job_id=job_id)
        if c is J.Claim.RESUME:
            log.info("resuming after %d committed attempts, from checkpoint %s", start_attempt, resume_from)
        if kind == "solve":
            result = run_solve(ctx, config=config, model=model, problem_data=problem_data, job_dir=job_dir,
                               callbacks=callbacks, start_attempt=start_attempt)
        else:
            result = run_train(ctx, config=config, model=model, job_dir=job_dir, callbacks=callbacks,
                               resume_from=resume_from, gpus=gpus, job_id=job_id)
        # 5. Decide how it ended: an engine that stopped early (cancel, worker shutdown) is settled in step 6;
        # one that ran to its end succeeded even if a cancel arrived after its last check.
        stopped = result.get("stopped") if isinstance(result, dict) else getattr(result, "stopped", None)
        if stopped if stopped is not None else (callbacks.cancelled or ctx.stopping.is_set()):
            status = "stopped"
    except Exception as e:  # noqa: BLE001 - the job records the failure; the worker lives on
        if ctx.stopping.is_set():  # interrupted by the shutdown: handed back (step 6), not a failure of the job
            log.warning("job %s stopped by the worker's shutdown with %s: %s", job_id, type(e).__name__, e)
            status = "stopped"
        else:
            log.exception("job %s failed", job_id)
            status, error = "failed", failure_text(e)
    finally:
        heartbeat.stop()
        lost = heartbeat.lost.is_set() or callbacks.lost.is_set()
        log.info("job %s ended: %s", job_id, "lost (taken over or reaped)" if lost else status)
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()
    if heartbeat.lost.is_set() or callbacks.lost.is_set():
        return "lost"
    # 6. A stopped job ends cancelled when a cancel was requested (also when the worker is shutting down);
    # stopped by a shutdown alone, it goes back to the queue (or fails after max_resumes resumes).
    if status == "stopped":
        with session_scope(ctx.sessions) as s:
            if J.cancel_requested(s, job_id=job_id) or not ctx.stopping.is_set():
                status, error = "cancelled", "cancelled by the user"
            else:
                outcome = J.release_job(s, job_id=job_id, worker_id=ctx.worker_id,
                                        reason=ctx.stop_reason or "the worker was shut down",
                                        enqueue=ctx.job_queue().enqueue, max_resumes=ctx.settings.max_resumes)
                touch_worker(s, worker_id=ctx.worker_id, current_job_id=None)
                log.info("job %s %s: %s", job_id, outcome, ctx.stop_reason)
                return outcome
    with session_scope(ctx.sessions) as s:
        done = J.finish_job(s, job_id=job_id, worker_id=ctx.worker_id, status=status, error=error,
                            result=_result_dict(result))
        touch_worker(s, worker_id=ctx.worker_id, current_job_id=None)
    if done:
        write_attempts_file(ctx, job_id)
    return status if done else "lost"


def failure_text(e: BaseException) -> str:
    """A failed job's error text: the one-line reason when the database refused a write or failed (never
    SQL, parameters or a framework traceback), else the engine's exception with the end of its traceback."""
    if isinstance(e, NotRecorded):
        return str(e)
    if isinstance(e, SQLAlchemyError):
        return f"the database failed ({database_error_reason(e)}); what was recorded before is kept"
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}\n\n{''.join(tb[-6:])}"


def write_attempts_file(ctx: WorkerContext, job_id: int) -> None:
    """``attempts.jsonl`` in the job's folder: its attempts as stored (the text the UI and ``sdpo jobs
    attempts`` show). A file that cannot be written is logged; the job's outcome stands."""
    try:
        with session_scope(ctx.sessions) as s:
            J.write_attempts_file(s, job_id=job_id, jobs_dir=ctx.settings.jobs_dir)
    except Exception:  # noqa: BLE001 - a copy of what is in the database
        log.exception("job %s: could not write attempts.jsonl", job_id)


def small_model_threads(model_path: str | Path, device: str) -> None:
    """One torch thread for a small model on the CPU (``sdpo.sizing.cpu_threads``), else the process's
    default thread count (restored for the next job)."""
    import torch

    from sdpo.sizing import cpu_threads

    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    torch.set_num_threads(cpu_threads(model_path, device) or _DEFAULT_THREADS)


_DEFAULT_THREADS: int | None = None


def run_solve(ctx: WorkerContext, *, config: dict[str, Any], model: str, problem_data: dict[str, Any] | None,
              job_dir: Path, callbacks: DbCallbacks, start_attempt: int) -> Any:
    """Test-time solve of one problem (``sdpo.ttt.solve_from_config``: device, dtype and sampler from the
    config), continuing after the ``start_attempt`` attempts already committed (always a round boundary:
    a round's attempts are committed together)."""
    from sdpo.data.problem import Problem
    from sdpo.ttt import solve_from_config

    if problem_data is None:
        raise ValueError("the job's problem was deleted")
    problem = Problem.parse(problem_data)
    cfg = build_solve_config(config)
    path = ensure_model(model or ctx.settings.model, ctx.settings)
    small_model_threads(path, cfg.device)
    return solve_from_config(problem, cfg, callbacks.as_callbacks(), model_path=path, out_dir=job_dir,
                             start_attempt=start_attempt)


def run_train(ctx: WorkerContext, *, config: dict[str, Any], model: str, job_dir: Path, callbacks: DbCallbacks,
              resume_from: str | None, gpus: int = 1, job_id: int | None = None) -> Any:
    """A training run (``sdpo.trainer.train``) writing into the job's folder, resumed from its checkpoint.
    ``gpus > 1`` runs the ranks under ``torchrun`` on this host (``run_train_ranks``)."""
    config = dict(config)
    if model:
        config["model_path"] = model
    config["model_path"] = str(ensure_model(config.get("model_path") or ctx.settings.model, ctx.settings))
    cfg = build_train_config(config, out_dir=str(job_dir), resume_from=resume_from)
    small_model_threads(cfg.model_path, cfg.device)
    if gpus > 1:
        return run_train_ranks(ctx, cfg=cfg, gpus=gpus, job_id=job_id, job_dir=job_dir, callbacks=callbacks)
    from sdpo.trainer import train

    return train(cfg, callbacks.as_callbacks())


def run_train_ranks(ctx: WorkerContext, *, cfg: Any, gpus: int, job_id: int | None, job_dir: Path,
                    callbacks: DbCallbacks) -> dict[str, Any]:
    """Run ``gpus`` ranks of the training job with ``torchrun --standalone`` (``workers.rank``), wait for them
    while this process keeps the heartbeat, and stop the whole process group if the job is lost."""
    import json
    import signal
    import subprocess
    import sys

    config_path = job_dir / "rank_config.json"
    config_path.write_text(json.dumps(cfg.to_dict()))
    (job_dir / "result.json").unlink(missing_ok=True)
    (job_dir / "not_recorded.json").unlink(missing_ok=True)
    # torchrun dies with this worker (workers.lifeline: parent-death signal), and its ranks with it; the ranks
    # write as this worker (SDPO_JOB_OWNER) and stop by themselves when the job is no longer its.
    cmd = [sys.executable, "-m", "workers.lifeline", str(os.getpid()),
           sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", "workers.rank", str(job_id), str(config_path)]
    env = dict(os.environ, SDPO_JOB_OWNER=callbacks.owner, SDPO_WORKER_PID=str(os.getpid()))
    stop_asked: float | None = None  # when a cancel or shutdown was first seen
    terminated = False
    with open(job_dir / "torchrun.log", "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            while proc.poll() is None:
                if callbacks.heartbeat is not None and callbacks.heartbeat.lost.is_set():
                    os.killpg(proc.pid, signal.SIGTERM)  # torchrun forwards it to the ranks
                elif stop_asked is None and callbacks.should_stop():
                    stop_asked = time.monotonic()
                if stop_asked is not None and not terminated and time.monotonic() - stop_asked > RANKS_STOP_GRACE_S:
                    # the ranks stop at step boundaries; a long step is cut short here (nothing of it was kept)
                    log.info("job %s: the ranks did not stop within %.0f s; stopping them", job_id,
                             RANKS_STOP_GRACE_S)
                    os.killpg(proc.pid, signal.SIGTERM)
                    terminated = True
                elif terminated and time.monotonic() - stop_asked > RANKS_STOP_GRACE_S + 10:
                    os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(min(1.0, ctx.settings.heartbeat_interval_s))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the ranks follow (parent-death signal)
                proc.wait()
    if terminated:  # stopped by us: rank 0's result if it got to write one, else what we know
        try:
            return {**json.loads((job_dir / "result.json").read_text()), "stopped": True}
        except (OSError, ValueError):
            return {"stopped": True}
    if proc.returncode != 0 and (job_dir / "not_recorded.json").exists():  # a rank's write the database refused
        raise NotRecorded(**json.loads((job_dir / "not_recorded.json").read_text()))
    if proc.returncode != 0:
        tail = (job_dir / "torchrun.log").read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"torchrun with {gpus} ranks exited with {proc.returncode}:\n" + "\n".join(tail))
    return json.loads((job_dir / "result.json").read_text())
