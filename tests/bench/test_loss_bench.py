"""Smoke test of bench/loss.py: the quick run prints a table with finite ratios (no timing asserts)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_loss_bench_quick_prints_a_table():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "loss.py"), "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert lines[1].startswith("|---")
    rows = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]
    assert {r["case"] for r in rows} == {"sdpo_loss vs reference-style", "from_hidden vs logits+sdpo_loss"}
    for r in rows:
        for col in ("time ratio", "mem ratio"):
            value = float(r[col])
            assert math.isfinite(value) and value > 0, r
        # same loss and gradients as the baseline (fp32)
        assert float(r["loss rel diff"]) < 1e-5 and float(r["grad rel diff"]) < 1e-4, r
