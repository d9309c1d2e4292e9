"""bench/gpu.py, the prepared GPU check: its --smoke run takes every code path of the GPU run on CPU with tiny
shapes, so the script cannot rot between the rare runs on a GPU. No timing asserts: figures only have to exist
and be finite; the correctness checks the script makes (sandbox verdicts, resume) are held to exact values
here, where CPU kernels are deterministic."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=280)
    return proc, json.loads(out.read_text()) if out.exists() else {}


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_smoke_runs_every_part_and_reports_one_table_and_json(tmp_path):
    # run from another directory, as `python3 bench/gpu.py` on a machine where the project is not installed:
    # the script puts the repo root on sys.path itself
    proc, res = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = res["rows"]
    # every row ok; strong sandbox isolation may be unavailable without root (weak is then measured)
    bad = [r for r in rows if r["status"] != "ok"
           and not (r["case"].startswith("sandbox (strong)") and r["status"].startswith("unavailable"))]
    assert not bad, bad
    assert set(res["parts"]) == {"update", "loss", "ttt", "resume"}
    assert all(p["status"] == "ok" for p in res["parts"].values())
    assert res["meta"]["service_modules"] == []  # no gradio / celery / sqlalchemy / typer / backend ...

    # one markdown table on stdout with every row, in part order
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| part | case | result | status |" and len(lines) == 1 + len(rows)
    assert [r["part"][0] for r in rows] == sorted(r["part"][0] for r in rows)
    assert res["table"].splitlines()[2:] == [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")][1:]

    by_case = {r["case"]: r for r in rows}
    # 1. both adapters, three variants each, with times, throughput and a ratio to GRPO
    for adapter, optimizer in (("full", "MasterWeightAdamW"), ("lora", "AdamW")):
        for v in ("grpo", "sdpo", "sdpo_fused"):
            r = by_case[f"0.6b {adapter} {v}"]
            assert _finite_positive(r["median_s"]) and _finite_positive(r["tokens_per_s"]), r
            assert r["optimizer"] == optimizer and r["response_tokens"] == 8 * 16
            assert math.isfinite(r["metrics"]["loss"]) and math.isfinite(r["metrics"]["grad_norm"])
        if adapter == "full":
            assert r["trainable"] == r["params"]
        else:
            assert 0 < r["trainable"] < r["params"]
        assert by_case[f"0.6b {adapter} sdpo"]["metrics"]["sdpo/reprompt_sample_fraction"] == 1.0
        ratio = by_case[f"0.6b {adapter} ratio"]["ratios"]
        assert set(ratio) == {"sdpo", "sdpo_fused"} and all(_finite_positive(x) for x in ratio.values())
        assert _finite_positive(by_case[f"0.6b {adapter} teacher forwards"]["share_of_sdpo_step"])
    # 2. ours vs reference-style and the fused path: the same loss and (bf16) gradients
    loss_rows = [r for r in rows if r["part"] == "2 SDPO loss"]
    assert len(loss_rows) == 6
    for r in loss_rows:
        assert _finite_positive(r["time_ratio"]) and r["loss_rel"] < 1e-5 and r["grad_rel"] < 0.05, r
    # 3. generation, sandbox verdicts, one updated test-time round, the ratio with generation
    gen = next(r for r in rows if r["case"].startswith("HF generation"))
    assert gen["tokens"] == 8 * 16 and _finite_positive(gen["tokens_per_s"])
    sandbox = [r for r in rows if r["case"].startswith("sandbox")]
    assert sandbox and sandbox[-1]["rewards"] == [1.0] * 3 + [0.0] * 5
    ttt = next(r for r in rows if r["case"].startswith("TTT round"))
    assert ttt["metrics"]["ttt/updated"] == 1.0 and ttt["metrics"]["perf/score_s"] > 0
    assert {r["adapter"] for r in rows if r["case"].startswith("SDPO/GRPO incl. generation")} == {"full", "lora"}
    # 4. the resumed step reproduces the uninterrupted one exactly (deterministic CPU kernels)
    for adapter in ("full", "lora"):
        r = next(r for r in rows if r["part"] == "4 resume" and r["adapter"] == adapter)
        assert r["loss_rel"] == 0.0 and r["same_rollouts"], r
        assert r["weights_max_diff"] == 0.0 and r["teacher_max_diff"] == 0.0, r
    full = next(r for r in rows if r["part"] == "4 resume" and r["adapter"] == "full")
    assert full["saved_dtypes"] == ["float32"]  # the float32 masters, not the bf16 compute copy


def test_no_budget_skips_every_part_and_exits_zero(tmp_path):
    proc, res = _run(tmp_path, "--budget-s", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(res["parts"]) == {"update", "loss", "ttt", "resume"}
    assert [r["status"] for r in res["rows"]] == ["skipped: budget"] * 4
    assert "| 1 update step | (all) |  | skipped: budget |" in proc.stdout


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    gpu = _load()
    ran = []

    def boom(run, budget):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fine(run, budget):
        ran.append(budget.left() > 0)
        run.add("resume", "fake", "done")

    monkeypatch.setitem(gpu.PART_FNS, "loss", boom)
    monkeypatch.setitem(gpu.PART_FNS, "resume", fine)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--smoke", "--parts", "loss,resume", "--out", str(out)]) == 1
    res = json.loads(out.read_text())
    assert ran == [True]
    err = next(r for r in res["rows"] if r["part"] == "2 SDPO loss")
    assert err["status"] == "error: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "Traceback" in err["traceback"]
    assert res["parts"]["loss"]["status"] == "failed" and res["parts"]["resume"]["status"] == "ok"


def test_measure_runs_only_the_repetitions_that_fit_the_budget():
    gpu = _load()
    run = gpu.Run(gpu.parse_args(["--smoke", "--out", ""]))
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}

    timings, status = gpu.measure(run, gpu.Budget(time.monotonic() + 3600), fns, reps=3, warmup=1, label="x")
    assert status == "ok" and calls == ["a", "b"] * 4  # alternating, warm-up first
    assert all(len(t.times) == 3 and t.warmup_s is not None for t in timings.values())

    calls.clear()
    timings, status = gpu.measure(run, gpu.Budget(time.monotonic() - 1), fns, reps=3, warmup=1, label="x")
    assert status == "partial: budget (warm-up only)" and calls == ["a", "b"]
    assert timings["a"].median is None and gpu.figure(timings["a"]) == timings["a"].warmup_s

    calls.clear()
    timings, status = gpu.measure(run, gpu.Budget(time.monotonic() - 1), fns, reps=3, warmup=0, label="x")
    assert status == "skipped: budget" and calls == [] and gpu.figure(timings["a"]) is None
