"""Sandbox throughput: the executor pool vs a naive per-test ``multiprocessing.Process`` runner.

Both runners judge the same solutions on the same stdin tests with the same rules (tests of one solution in
order, stopping at the first failure as sparse training with ``code_feedback="first_failure"`` does) and must
produce identical verdicts. The naive runner forks the calling process once per test case (as reference
harnesses do); the caller here optionally holds a trainer-sized heap (``--caller-mb``), which is what forking
costs in a real trainer.

    python bench/sandbox.py [--solutions 48] [--tests 8] [--slots 2] [--caller-mb 2048]

Prints executions/s of both, their ratio, and a line for bench/README.md; then the pool's time for the same
solutions with the feedback gathered as the reference does (``code_feedback="all_tests"``: a failing solution
goes on past wrong answers and time-outs) against ``"first_failure"``.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdpo.envs.code import TestSpec, evaluate_many, stdout_matches  # noqa: E402
from sdpo_sandbox import SandboxConfig, SandboxPool  # noqa: E402

CORRECT = "n, k = map(int, input().split())\nprint(sum(i * k for i in range(n)))"
WRONG_LATE = "n, k = map(int, input().split())\nprint(sum(i * k for i in range(n)) + (n > 60))"
CRASH = "n, k = map(int, input().split())\nprint(sum(i * k for i in range(n)) // (n - 70))"
WRONG_EARLY = "n, k = map(int, input().split())\nprint(n * k)"
PROGRAMS = [CORRECT, CORRECT, WRONG_LATE, CRASH, WRONG_EARLY, CORRECT]


def make_workload(n_solutions: int, n_tests: int) -> tuple[list[str], list[TestSpec]]:
    inputs = [f"{10 * (i + 1)} {i + 2}\n" for i in range(n_tests)]
    outputs = [str(sum(j * (i + 2) for j in range(10 * (i + 1)))) for i in range(n_tests)]
    spec = TestSpec(inputs=inputs, outputs=outputs, time_limit=6.0)
    codes = [PROGRAMS[i % len(PROGRAMS)] for i in range(n_solutions)]
    return codes, [spec] * n_solutions


# ------------------------------------------------------------------------------------------- naive runner


def _naive_child(code: str, inp: str, conn) -> None:
    sys.stdin = io.StringIO(inp)
    out = io.StringIO()
    sys.stdout = out
    try:
        exec(compile(code, "<solution>", "exec"), {"__name__": "__main__"})
        conn.send(("ok", out.getvalue()))
    except SystemExit as e:
        conn.send(("ok" if e.code in (None, 0) else "error", out.getvalue()))
    except BaseException as e:  # noqa: BLE001 - the naive runner reports every failure
        conn.send(("error", repr(e)))


def run_naive(codes: list[str], specs: list[TestSpec], width: int) -> list[list[str]]:
    """Per test, fork the caller with ``multiprocessing.Process``; up to ``width`` in flight, driven from
    one thread (forking from several threads can deadlock a child on a lock another thread held). The
    outputs of this workload are small, so the child's result always fits in the pipe."""
    ctx = mp.get_context("fork")
    results: list[list[str]] = [[] for _ in codes]
    pending = list(range(len(codes)))[::-1]
    running: dict[int, tuple] = {}

    def launch(sol: int, t: int) -> None:
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_naive_child, args=(codes[sol], specs[sol].inputs[t], w))
        p.start()
        w.close()
        running[p.sentinel] = (sol, t, p, r, time.monotonic())

    while pending or running:
        while pending and len(running) < width:
            launch(pending.pop(), 0)
        ready = set(wait(list(running), timeout=0.05))
        now = time.monotonic()
        for key, (sol, t, p, r, started) in list(running.items()):
            spec = specs[sol]
            if key not in ready and now - started < spec.time_limit:
                continue
            del running[key]
            if key not in ready:
                p.kill()
                p.join()
                verdict = "time_limit"
            else:
                p.join()
                status, out = r.recv() if r.poll() else ("error", "")
                if status != "ok":
                    verdict = "runtime_error"
                else:
                    verdict = "passed" if stdout_matches(out, spec.outputs[t]) else "wrong_answer"
            r.close()
            results[sol].append(verdict)
            if verdict == "passed" and t + 1 < len(spec.inputs):
                launch(sol, t + 1)
    return results


def run_pool(pool: SandboxPool, codes: list[str], specs: list[TestSpec],
             code_feedback: str = "first_failure") -> list[list[str]]:
    responses = [f"```python\n{c}\n```" for c in codes]
    results = evaluate_many(responses, specs, sandbox=pool, code_feedback=code_feedback)
    return [[t.verdict for t in r.tests] for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solutions", type=int, default=48)
    ap.add_argument("--tests", type=int, default=8)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings for each runner")
    ap.add_argument("--caller-mb", type=int, default=2048,
                    help="heap held by the calling process (a trainer's weights/optimizer), touched")
    args = ap.parse_args()
    if args.tests < 8:
        ap.error("--tests must be >= 8 (the workload's failures happen at tests 6-8)")

    codes, specs = make_workload(args.solutions, args.tests)
    pool = SandboxPool(SandboxConfig(slots=args.slots))
    run_pool(pool, codes[:4], specs[:4])  # warm-up
    heap = bytearray(args.caller_mb << 20)
    heap[:: 4096] = b"\1" * len(range(0, len(heap), 4096))  # touch every page, like live weights

    t_ours = t_naive = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = run_pool(pool, codes, specs)
        t_ours = min(t_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive = run_naive(codes, specs, args.slots)
        t_naive = min(t_naive, time.perf_counter() - t0)
    t_modes = {"first_failure": float("inf"), "all_tests": float("inf")}
    runs = {}
    for _ in range(args.repeat):
        for m in t_modes:
            t0 = time.perf_counter()
            runs[m] = run_pool(pool, codes, specs, code_feedback=m)
            t_modes[m] = min(t_modes[m], time.perf_counter() - t0)
    mode = "strong" if pool.info.get("strong") else "weak"
    pool.close()
    del heap

    if ours != naive:
        bad = [i for i, (a, b) in enumerate(zip(ours, naive, strict=True)) if a != b]
        raise SystemExit(f"verdicts differ for solutions {bad[:5]}: {ours[bad[0]]} vs {naive[bad[0]]}")
    executions = sum(len(v) for v in ours)
    eps_ours, eps_naive = executions / t_ours, executions / t_naive
    ratio = eps_ours / eps_naive
    print(f"workload: {args.solutions} solutions x {args.tests} tests, {executions} executions "
          f"(sparse: stop at first failure), width {args.slots}, caller heap {args.caller_mb} MiB, "
          f"{os.cpu_count()} CPUs, best of {args.repeat}")
    print(f"sandbox pool ({mode} isolation):          "
          f"{eps_ours:8.1f} executions/s")
    print(f"naive multiprocessing.Process per test:      {eps_naive:8.1f} executions/s")
    print(f"ratio: {ratio:.2f}x (identical verdicts: yes)")
    print(f"README: | sandbox | {args.solutions}x{args.tests} stdin tests, {args.slots} slots, caller "
          f"{args.caller_mb} MiB | {eps_ours:.0f} exec/s vs naive {eps_naive:.0f} exec/s | {ratio:.1f}x |")
    n_ff, n_all = (sum(len(v) for v in runs[m]) for m in ("first_failure", "all_tests"))
    print(f"feedback as the reference gathers it (code_feedback=all_tests): {t_modes['all_tests']:.2f} s for "
          f"{args.solutions} solutions ({n_all} executions) vs first_failure {t_modes['first_failure']:.2f} s "
          f"({n_ff} executions): {t_modes['all_tests'] / t_modes['first_failure']:.2f}x the time")


if __name__ == "__main__":
    main()
