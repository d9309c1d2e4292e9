"""bench/toyworld.py: its statistics, the gap measurement and (slow) the whole --quick run on the tiny model.

The tiny model is random, so only the plumbing is checked: no accuracy or timing asserts.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("toyworld_bench", ROOT / "bench" / "toyworld.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tw = _load_bench()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from sdpo.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("toyworld-tiny") / "model", seed=0)


def test_mean_se_matches_float64_reference():
    vals = [0.25, 0.5, 1.0]
    m = sum(vals) / 3
    se = math.sqrt(sum((v - m) ** 2 for v in vals) / 2) / math.sqrt(3)
    got = tw.mean_se(vals)
    assert got[0] == pytest.approx(m, abs=1e-15) and got[1] == pytest.approx(se, abs=1e-15)
    assert tw.mean_se([0.4]) == (0.4, 0.0)
    assert tw.mean_se([0.2, float("nan"), 0.4])[0] == pytest.approx(0.3)  # nan (metric absent) ignored
    assert all(math.isnan(x) for x in tw.mean_se([]))


def test_first_reach_and_ratio_line():
    xs = [0, 32, 64, 96, 128]
    curves = {"grpo": [0.1, 0.2, 0.3, 0.4, 0.4], "sdpo": [0.1, 0.4, 0.5, 0.5, 0.6]}
    assert tw.first_reach(xs, curves["grpo"], 0.4) == 96
    assert tw.first_reach(xs, curves["sdpo"], 0.4) == 32
    assert tw.first_reach(xs, curves["sdpo"], 0.7) is None
    line = tw.ratio_line("sdpo", "grpo", xs, curves, "generations")
    assert "after 32 generations (grpo: 96); ratio 3.00x" in line
    assert "never reaches" in tw.ratio_line("grpo", "sdpo", xs, {"sdpo": curves["sdpo"], "grpo": curves["grpo"]},
                                             "generations")
    assert "undefined" in tw.ratio_line("sdpo", "grpo", xs, {"grpo": [0.0] * 5, "sdpo": curves["sdpo"]}, "g")


def test_parse_args_rejects_unknown_parts_and_sizes():
    with pytest.raises(SystemExit):
        tw.parse_args(["--parts", "discovery,bogus"])
    with pytest.raises(SystemExit):
        tw.parse_args(["--budget", "0"])
    quick = tw.parse_args(["--quick"])
    assert quick.seeds == "0,1" and quick.budget == 4


def test_gaps_are_teacher_minus_student_logprobs(tiny_model):
    """The gap of each context equals log p(y | teacher chat) - log p(y | problem) computed independently."""
    import torch

    from sdpo.models import load_model_and_tokenizer
    from sdpo.toy.corpus import CorpusExample, teacher_messages
    from sdpo.toy.generator import splits
    from sdpo.toy.measure import response_logprobs

    torch.set_num_threads(1)
    model, tok = load_model_and_tokenizer(tiny_model, dtype="float32", device="cpu")
    problems = splits(0, 2, 0, seed=0)["test"]
    res = tw.gaps_for(model, tok, problems, seed=0, max_new_tokens=8)
    assert res["n"] == 2
    sol = [CorpusExample("x", p.messages(), p.solution(), p.id) for p in problems]
    demo = [CorpusExample("x", teacher_messages(p, solution=p.solution()), p.solution(), p.id) for p in problems]
    a, b = response_logprobs(model, tok, demo), response_logprobs(model, tok, sol)
    assert res["gap"]["solution"]["demo"][0] == pytest.approx(sum(x - y for x, y in zip(a, b, strict=True)) / 2, abs=1e-4)
    assert res["logp"]["solution"]["student"][0] == pytest.approx(sum(b) / 2, abs=1e-4)
    for ctx in tw.CONTEXTS:
        assert 0.0 <= res["solve"][ctx][0] <= 1.0


@pytest.mark.slow
def test_quick_run_prints_tables_and_writes_plots(tiny_model, tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/toyworld.py"), "--quick", "--model", str(tiny_model),
         "--out-dir", str(tmp_path / "plots"), "--data-dir", str(tmp_path / "data"),
         "--run-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "SDPO_DATA_DIR": str(tmp_path / "var")})
    assert out.returncode == 0, out.stderr[-3000:]
    for title in ("Discovery:", "Training:", "Teacher-vs-student log-prob gaps"):
        assert title in out.stdout
    for part in tw.PARTS:
        assert (tmp_path / "plots" / f"toyworld-{part}.png").stat().st_size > 1000
    r = json.loads((tmp_path / "r.json").read_text())
    d, t = r["discovery"], r["training"]
    assert d["seeds"] == [0, 1] and all(len(d["mean"][s]) == 4 for s in tw.STRATEGIES)
    assert all(len(d["per_seed"][s]) == 2 for s in tw.STRATEGIES)
    assert t["generations"] == [0, 4, 8]  # steps 0..2 x 2 questions x 2 rollouts
    assert all(len(run["val"]) == 3 for loss in tw.LOSSES for run in t["runs"][loss])
    # step 0 is the same base-model validation for both losses
    assert [r0["val"][0] for r0 in t["runs"]["sdpo"]] == [r0["val"][0] for r0 in t["runs"]["grpo"]]
