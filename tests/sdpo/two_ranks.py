"""Two ranks on CPU (gloo) launched by torchrun, for the data-parallel tests (test_distributed.py, test_fsdp.py).

Each of those test modules is also its ranks' program: ``torchrun ... -m tests.sdpo.<module> MODE ARGS...`` runs
it from the repository root, and its ``__main__`` block hands MODE to :func:`run_rank_program`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def torchrun(module: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``python -m module *args`` as 2 ranks; a hang fails the test after ``timeout`` seconds instead of
    blocking, and a failure shows the ranks' own errors."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", module, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: torchrun's agent stops the ranks (a SIGKILL would orphan them)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"2-rank run did not finish in {timeout} s (a rank waiting on a collective?):\n{err[-6000:]}")
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    ranks = "\n".join(line for line in err.splitlines() if line.startswith("[rank"))  # the ranks' own errors
    assert res.returncode == 0, res.stdout[-3000:] + ranks[-6000:] + res.stderr[-4000:]
    return res


def rank_train(cfg_json: str) -> None:
    """A rank's ``train()`` of the TrainConfig given as JSON."""
    from sdpo.trainer import TrainConfig, train

    torch.set_num_threads(1)
    res = train(TrainConfig.from_dict(json.loads(cfg_json)))
    print(f"RANK{os.environ.get('RANK')} steps={res.steps} stopped={res.stopped}")


def run_rank_program(programs: dict[str, Callable[..., None]]) -> None:
    """``programs[MODE](*ARGS)`` for the command line ``MODE ARGS...`` of a rank."""
    mode, *args = sys.argv[1:]
    if mode not in programs:
        raise SystemExit(f"unknown mode {mode!r}; known: {', '.join(programs)}")
    programs[mode](*args)
