"""Kill-and-wait: a verdict comes back only once every process its run started is gone and reaped.

Hostile programs (a fork bomb, a storm of CPU-burning session leaders, zombie factories, double-forked
daemons) run while CPU hogs load the machine; the process table is read the moment each verdict returns,
with no grace period. Runs as root (here and in CI), so the strong mode is what is tested."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from sdpo.envs.code import TestSpec, evaluate, evaluate_many, make_job
from sdpo_sandbox import SandboxConfig, SandboxPool

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="strong sandbox mode needs root (as in CI)"),
              pytest.mark.slow]  # about 30 s: hostile programs with time limits, beside CPU hogs

FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
CPU_STORM = """
import os, sys
print(input())
sys.stdout.flush()
for _ in range(24):
    try:
        if os.fork() == 0:
            os.setsid()
            while True:
                pass
    except OSError:
        break
"""
ZOMBIES = """
import os
for _ in range(20):
    if os.fork() == 0:
        os._exit(0)
print(input())
"""
DAEMONS = """
import os, time
for _ in range(5):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                time.sleep(0.01)
        os._exit(0)
print(input())
"""
# Run on three tests: each test counts the processes of its uid it can see (all of them: /proc hides only
# other uids) before starting daemons of its own, so a test sees those of the test before it if they survived.
COUNT_THEN_SPAWN = """
import os, time
mine = [p for p in os.listdir("/proc") if p.isdigit() and os.stat("/proc/" + p).st_uid == os.getuid()]
for _ in range(3):
    if os.fork() == 0:
        os.setsid()
        time.sleep(100)
print(len(mine))
"""


def _stdin(code: str, n: int = 1, time_limit: float = 2.0, outputs=None) -> tuple[str, dict]:
    spec = {"inputs": ["x\n"] * n, "outputs": outputs or ["x\n"] * n, "time_limit": time_limit}
    return f"```python\n{textwrap.dedent(code).strip()}\n```", spec


def _processes(uids: set[int], parents: set[int]) -> list[str]:
    """Every process owned by one of ``uids`` (zombies included), and every zombie child of ``parents``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{name}").st_uid
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rfind(b")") + 2:].split()
        state, ppid = fields[0].decode(), int(fields[1])
        if uid in uids or (ppid in parents and state == "Z"):
            found.append(f"pid {name} uid {uid} state {state} ppid {ppid}")
    return found


@pytest.fixture(scope="module")
def hogs():
    """Two CPU-burning processes beside the sandbox for the whole module (a loaded 2-core machine)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass"]) for _ in range(2)]
    yield
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()


@pytest.fixture(scope="module")
def pool(hogs):
    with SandboxPool(SandboxConfig(slots=2, max_processes=64)) as p:
        yield p


def _watched(pool):
    uids = {s.info["uid"] for s in pool._all} | {s.info["checker_uid"] for s in pool._all}
    return uids, {s.proc.pid for s in pool._all}


@pytest.mark.parametrize("name, program, verdict, time_limit", [
    ("fork_bomb", FORK_BOMB, "time_limit", 1.0),
    ("cpu_storm", CPU_STORM, "passed", 5.0),
    ("zombies", ZOMBIES, "passed", 3.0),
    ("daemons", DAEMONS, "passed", 3.0),
], ids=["fork_bomb", "cpu_storm", "zombies", "daemons"])
def test_nothing_survives_the_verdict(pool, name, program, verdict, time_limit):
    response, spec = _stdin(program, n=3, time_limit=time_limit)
    for _ in range(2):  # through a lease (the tests streamed in one batch) and one by one, dense
        r = evaluate(response, spec, sandbox=pool, sparse=False)
        left = _processes(*_watched(pool))  # at once: no grace period
        assert left == [], (name, left)
        assert [t.verdict for t in r.tests] == [verdict] * 3, (name, [t.message for t in r.tests])
    job = make_job(TestSpec.parse(spec), program, 0)
    reply = pool.run(job)  # no lease: a zygote of its own for one test
    assert _processes(*_watched(pool)) == [], name
    assert reply["ok"], reply


def test_hostile_batch_in_parallel_leaves_nothing(pool):
    programs = [FORK_BOMB, CPU_STORM, ZOMBIES, DAEMONS] * 2
    pairs = [_stdin(p, n=2, time_limit=1.0) for p in programs]
    evaluate_many([r for r, _ in pairs], [s for _, s in pairs], sandbox=pool, sparse=False)
    assert _processes(*_watched(pool)) == []


def test_each_test_starts_without_the_processes_of_the_one_before(pool):
    # Each test sees one process of its uid: itself (the solution's zygote is not dumpable, so /proc shows
    # it as root's), not the three daemons of the test before.
    response, spec = _stdin(COUNT_THEN_SPAWN, n=3, outputs=["1\n"] * 3)
    r = evaluate(response, spec, sandbox=pool, sparse=False)
    assert [t.stdout.strip() for t in r.tests] == ["1", "1", "1"], [t.message for t in r.tests]
    assert _processes(*_watched(pool)) == []
