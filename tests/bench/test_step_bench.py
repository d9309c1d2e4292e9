"""bench/step.py runs and prints finite SDPO/GRPO step-time ratios (no timing asserts)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("variants,names", [(None, {"sdpo/grpo", "sdpo_fused/grpo"}),
                                            ("grpo,sdpo_fused", {"sdpo_fused/grpo"})])
def test_step_bench_quick_prints_ratios(variants, names):
    cmd = [sys.executable, str(ROOT / "bench/step.py"), "--quick"] + (["--variants", variants] if variants else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if "/grpo" in line]
    assert len(rows) == 2 * len(names)   # update only, incl. sampling
    assert {row[2] for row in rows} == names, rows
    for row in rows:
        ratio, base = float(row[-2]), float(row[-1])
        assert math.isfinite(ratio) and ratio > 0 and base > 0
