"""bench/family.py: the method settings, the verdict on the final accuracies and (slow) the whole --quick run on
the tiny model (random: only the plumbing is checked, no accuracy asserts)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("family_bench", ROOT / "bench" / "family.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fb = _load_bench()


def test_method_settings_are_valid_train_configs_at_equal_generations():
    from sdpo.update import UpdateConfig

    for m in fb.METHODS:
        s = fb.method_settings(m, steps=8)
        assert s["loss"] == m
        UpdateConfig(**s)  # validates
    assert fb.method_settings("sdpg", 400)["sdpg_warmup_steps"] == 50  # the paper's windows at its 400 steps
    assert fb.method_settings("sdpg", 400)["sdpg_decay_steps"] == 350
    assert fb.method_settings("sdpg", 4)["sdpg_warmup_steps"] == 1


def test_verdict_names_separated_pairs_or_says_no_difference():
    res = {"methods": ["a", "b", "c"], "seeds": [0, 1, 2], "metric": "val/avg@4",
           "mean": {"a": [0.0, 0.50], "b": [0.0, 0.40], "c": [0.0, 0.20]},
           "se": {"a": [0.0, 0.02], "b": [0.0, 0.05], "c": [0.0, 0.02]}}
    line = fb.verdict(res)
    assert "a 0.500 vs c 0.200" in line and "b 0.400 vs c 0.200" in line and "a 0.500 vs b" not in line
    res["mean"] = {"a": [0.0, 0.1], "b": [0.0, 0.1], "c": [0.0, 0.1]}
    assert fb.verdict(res).startswith("No difference at this scale")


def test_parse_args_rejects_unknown_methods():
    with pytest.raises(SystemExit):
        fb.parse_args(["--methods", "sdpo,ppo"])


@pytest.mark.slow
def test_quick_run_on_the_tiny_model(tmp_path):
    from sdpo.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "model", seed=0)
    out = tmp_path / "family.png"
    res = fb.main(["--quick", "--seeds", "0", "--model", str(model), "--out", str(out), "--json",
                   str(tmp_path / "r.json"), "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "runs")])
    assert out.stat().st_size > 0 and json.loads((tmp_path / "r.json").read_text())["methods"] == list(fb.METHODS)
    assert all(len(res["mean"][m]) == len(res["generations"]) for m in fb.METHODS)
    assert res["generations"] == [0, 4, 8]  # equal generations: steps x questions x rollouts
