"""Chaos on real services (see conftest: (a) SQLite + the filesystem broker, (b) PostgreSQL + Redis; heartbeat
timeout 6 s): two real ``sdpo worker`` processes, 12 solve jobs (the three strategies) and 2 train jobs
submitted at once from threads, the tiny model sampling its whole vocabulary (temperature 1, no top-p/top-k:
any byte, NUL and invalid UTF-8 included, which PostgreSQL refuses in text as is), and workers SIGKILLed and
restarted while jobs run. Every job must end ``succeeded`` within ``SDPO_MAX_RESUMES`` resumes; every solve
job's attempts are complete and contiguous (every round, every index, the whole budget); every train job
resumes from the checkpoint it had when its worker was killed, with its metrics one per step; the stored
texts are escaped the same everywhere and the raw responses kept."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import defaultdict
from typing import NamedTuple

import pytest
from sqlalchemy import select

from backend.db import session_scope
from backend.models import Job
from backend.services import jobs as J
from backend.services import progress as P
from backend.services.problems import create_problem
from backend.text import RESPONSE_CHARS, storable
from tests.workers.problems import DOUBLE as PROBLEM
from workers.engine import parse_problem, validate_config

pytestmark = pytest.mark.slow

# Long enough generations that a job runs for a while (tens of seconds on a loaded CPU) and NUL bytes occur:
# temperature 1.0, top_p 1.0, top_k None, the whole vocabulary, where the tiny model samples the NUL byte about
# once every 2,500-3,500 tokens. Wide rounds are cheap on a CPU (a batch of 8 costs little more than one of 2),
# so 13,800 tokens in all: sdpo 4 x 12 x 96, best_of_k 4 x 16 x 96, multiturn 4 x 4 x 96, train 2 x 5 x 4 x 48.
SAMPLING = {"max_new_tokens": 96, "temperature": 1.0, "top_p": 1.0, "device": "cpu"}
SOLVE = {"sdpo": {**SAMPLING, "n": 4, "budget": 12}, "best_of_k": {**SAMPLING, "n": 8, "budget": 16},
         "multiturn": {**SAMPLING, "budget": 4}}
STRATEGIES = ("sdpo", "best_of_k", "multiturn")
SOLVE_PER_STRATEGY = 4
TRAIN = {"dataset": "humaneval", "train_batch_size": 1, "n": 4, "max_new_tokens": 48, "micro_batch_size": 4,
         "save_every": 1, "val_max_questions": 1, "val_k": 1, "progress": False, "device": "cpu", "max_steps": 5,
         "temperature": 1.0, "top_p": 1.0}
TRAIN_JOBS = 2
KILLS = 4  # kill events; the last kills every worker running a job
TERMINAL = ("succeeded", "failed", "cancelled")


def submit_all(stack, problem_id: int) -> dict[int, dict]:
    """Submit every job from its own thread, all released at once; returns {job id: what was submitted}."""
    specs = [{"kind": "solve", "strategy": s, "seed": i} for s in STRATEGIES for i in range(SOLVE_PER_STRATEGY)]
    specs += [{"kind": "train", "seed": i} for i in range(TRAIN_JOBS)]
    barrier = threading.Barrier(len(specs))
    jobs: dict[int, dict] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submit(spec: dict) -> None:
        try:
            if spec["kind"] == "solve":
                config = {**SOLVE[spec["strategy"]], "strategy": spec["strategy"], "seed": spec["seed"]}
            else:
                config = {**TRAIN, "seed": spec["seed"]}
            barrier.wait()
            with session_scope(stack.sessions) as s:
                job = J.submit_job(s, kind=spec["kind"], config=config, validate=validate_config,
                                   enqueue=stack.queue.enqueue,
                                   problem_id=problem_id if spec["kind"] == "solve" else None)
            with lock:
                jobs[job.id] = spec
        except BaseException as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(spec,)) for spec in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return jobs


class Running(NamedTuple):
    worker: subprocess.Popen
    job_id: int
    kind: str
    resumes: int
    progress: int  # solve: attempts committed; train: checkpoints registered


def running_jobs(stack, workers: list[subprocess.Popen]) -> list[Running]:
    """The jobs that live workers of ``workers`` are running, with their progress."""
    out = []
    with session_scope(stack.sessions) as s:
        for job in s.scalars(select(Job).where(Job.status == "running")):
            p = next((w for w in workers if w.poll() is None and job.worker_id
                      and job.worker_id.endswith(f":{w.pid}")), None)
            if p is not None:
                progress = (P.count_attempts(s, job_id=job.id) if job.kind == "solve"
                            else len(P.list_checkpoints(s, job_id=job.id)))
                out.append(Running(p, job.id, job.kind, job.resumes, progress))
    return out


def test_chaos_every_job_succeeds_complete_through_kills_and_hostile_text(stack):
    t0 = time.monotonic()
    max_resumes = stack.settings.max_resumes
    for p in stack.workers:
        if p.poll() is None:
            stack.stop_worker(p)
    workers = [stack.start_worker(wait=False) for _ in range(2)]
    for p in workers:
        stack.wait_started(p)
    with session_scope(stack.sessions) as s:
        problem_id = create_problem(s, data=PROBLEM, validate=parse_problem, settings=stack.settings).id
    jobs = submit_all(stack, problem_id)
    assert len(jobs) == len(STRATEGIES) * SOLVE_PER_STRATEGY + TRAIN_JOBS

    # 1. Kill workers mid-job and start new ones: KILLS events, the last one killing both workers at once (no
    # live reaper until the new ones start). A victim is a worker running a job that has made progress and was
    # not killed before (the last event: any job), with resumes to spare (a job losing its worker more than
    # SDPO_MAX_RESUMES times is failed, by design); a kind or strategy not hit yet goes first, and the kills go
    # on until a train job with a checkpoint was hit.
    kills: list[tuple[int, str, int | None]] = []  # (job id, kind, train: its last checkpoint step at the kill)
    hit: set[str] = set()
    events = 0
    both_by = 0.0
    deadline = time.monotonic() + 600

    def label(job_id: int) -> str:
        return "train" if jobs[job_id]["kind"] == "train" else jobs[job_id]["strategy"]

    while (events < KILLS or "train" not in hit) and time.monotonic() < deadline:
        with session_scope(stack.sessions) as s:
            if all(J.get_job(s, job_id=j).status in TERMINAL for j in jobs):
                break
        killed = {k[0] for k in kills}
        both = events == KILLS - 1
        victims = [v for v in running_jobs(stack, workers) if v.resumes < max_resumes - 1
                   and (both or (v.progress >= 1 and v.job_id not in killed))]
        if events >= KILLS:
            victims = [v for v in victims if v.kind == "train" and v.progress >= 1]
        if not victims or (both and len(victims) < 2 and time.monotonic() < both_by):
            time.sleep(0.3)
            continue
        victims.sort(key=lambda v: label(v.job_id) in hit)
        events += 1
        for v in victims if both else victims[:1]:
            v.worker.send_signal(signal.SIGKILL)
            v.worker.wait(timeout=10)
            with session_scope(stack.sessions) as s:  # the killed run can write nothing more: its last checkpoint
                if J.get_job(s, job_id=v.job_id).status in TERMINAL:
                    continue  # it ended between the look and the kill
                ck = P.latest_checkpoint(s, job_id=v.job_id) if v.kind == "train" else None
            kills.append((v.job_id, v.kind, ck.step if ck is not None else None))
            hit.add(label(v.job_id))
            print(f"[{stack.name}] {time.monotonic() - t0:.0f} s: killed the worker of job {v.job_id} "
                  f"({label(v.job_id)}, {v.progress} {'attempts' if v.kind == 'solve' else 'checkpoints'})")
        workers = [w for w in workers if w.poll() is None]
        while len(workers) < 2:
            workers.append(stack.start_worker(wait=False))
        # let the jobs move on before the next kill, but not past a train job's window: on an idle machine a
        # train job can checkpoint and end within the pause, and one of them must be hit
        pause_until = time.monotonic() + 4.0
        while time.monotonic() < pause_until and not (
                "train" not in hit and any(v.kind == "train" and v.progress >= 1 for v in running_jobs(stack, workers))):
            time.sleep(0.3)
        both_by = time.monotonic() + 30  # the last event waits up to 30 s for both workers to be busy
    for p in workers:
        stack.wait_started(p)
    stack.wait(lambda: all(stack.detail(j).status in TERMINAL for j in jobs), 900, "every job to end", every=1.0)
    elapsed = time.monotonic() - t0

    # 2. Every job succeeded within its resumes.
    details = {j: stack.detail(j) for j in jobs}
    bad = {j: (d.status, d.resumes, d.error) for j, d in details.items() if d.status != "succeeded"}
    assert not bad, f"{bad}\n{stack.log_tail()}"
    assert events >= KILLS and len(kills) > KILLS - 1 and "train" in hit and hit & set(STRATEGIES), (kills, hit)
    assert all(d.resumes <= max_resumes for d in details.values())
    for job_id, _, _ in kills:
        assert details[job_id].resumes >= 1, f"job {job_id} was killed but never resumed"

    texts: list[str] = []
    raw_nul = 0
    n_attempts = 0
    with session_scope(stack.sessions) as s:
        for job_id, spec in jobs.items():
            d = details[job_id]
            rows = P.list_attempts(s, job_id=job_id)
            keys = [(a.round, a.index) for a in rows]
            n_attempts += len(rows)
            assert len(keys) == len(set(keys)), f"job {job_id}: an attempt was duplicated"
            by_round: dict[int, list[int]] = defaultdict(list)
            for r, i in keys:
                by_round[r].append(i)
            if spec["kind"] == "solve":
                # 3. Complete and contiguous: rounds 0..R-1, each round's indices 0..k-1, all rounds but the last
                # full, the whole budget when nothing was discovered.
                assert sorted(by_round) == list(range(len(by_round))), f"job {job_id}: rounds {sorted(by_round)}"
                sizes = [len(by_round[r]) for r in sorted(by_round)]
                for r in by_round:
                    assert by_round[r] == list(range(len(by_round[r]))), f"job {job_id} round {r}: {by_round[r]}"
                assert all(n == sizes[0] for n in sizes[:-1]) and sizes[-1] <= sizes[0], (job_id, sizes)
                assert d.result["attempts_used"] == len(keys)
                if d.result["discovered_at"] is None:
                    assert len(keys) == d.config["budget"] == SOLVE[spec["strategy"]]["budget"], (job_id, len(keys))
            else:
                # 4. Train: steps 1..N, every rollout of every step once, one metric point per step, a checkpoint
                # per step; a killed run resumed from the checkpoint it had registered.
                steps = TRAIN["max_steps"]
                assert d.result["steps"] == steps
                assert keys == [(r, i) for r in range(1, steps + 1) for i in range(TRAIN["n"])], keys
                loss = [p.step for p in P.list_metrics(s, job_id=job_id, names=["loss"])]
                assert loss == list(range(1, steps + 1)), loss
                assert [c.step for c in P.list_checkpoints(s, job_id=job_id)] == list(range(1, steps + 1))
                log = (stack.settings.job_dir(job_id) / "job.log").read_text(errors="replace")
                resumed_from = [int(m) if m else 0 for m in
                                re.findall(r"resuming after \d+ committed attempts, from checkpoint "
                                           r"(?:\S*step_(\d+)|None)", log)]
                for k_job, _, ck_step in kills:
                    if k_job == job_id:
                        assert (ck_step or 0) in resumed_from, (job_id, ck_step, resumed_from)
            # 5. The same text in the database, the job's attempts.jsonl and `sdpo jobs attempts`; an altered
            # response kept raw.
            jsonl = stack.settings.job_dir(job_id) / "attempts.jsonl"
            assert jsonl.read_text(encoding="utf-8").splitlines(keepends=True) == list(
                P.iter_attempt_lines(s, job_id=job_id, jobs_dir=stack.settings.jobs_dir))
            for a in rows:
                texts += [a.response, a.code or "", a.feedback or ""]
                raw = P.raw_response_path(jobs_dir=stack.settings.jobs_dir, job_id=job_id, round=a.round,
                                          index=a.index)
                if raw.exists():
                    data = raw.read_bytes()
                    raw_nul += b"\x00" in data
                    assert storable(data.decode("utf-8", "surrogatepass"), limit=RESPONSE_CHARS) == a.response
                else:
                    assert storable(a.response, limit=RESPONSE_CHARS) == a.response
    # 6. The hostile text really occurred: NUL bytes (kept in raw files, stored escaped), other control
    # characters, and invalid UTF-8 (decoded to U+FFFD by the tokenizer).
    stored = "".join(texts)
    assert raw_nul >= 1 and "\\x00" in stored, "no NUL byte was generated; raise the budgets or max_new_tokens"
    assert "\ufffd" in stored and re.search(r"\\x(0[1-8bcef]|1[0-9a-f]|7f)", stored)
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]", stored)
    resumes = sum(d.resumes for d in details.values())
    print(f"[{stack.name}] chaos: {len(jobs)} jobs ({len(jobs) - TRAIN_JOBS} solve, {TRAIN_JOBS} train), "
          f"{len(kills)} workers killed in {events} events, {resumes} resumes, {n_attempts} attempts, "
          f"{raw_nul} responses with NUL bytes, {elapsed:.0f} s (load average {os.getloadavg()[0]:.1f})")
    stack.wait(lambda: stack.queue.length() == 0, 30, "the queue to drain")
