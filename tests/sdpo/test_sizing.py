"""Defaults that fit the model (``sdpo.sizing``): the demo models and CPUs get CPU-sized defaults, a real
checkpoint on a GPU the paper's; the parameter count is estimated from config.json."""

from __future__ import annotations

import json

from sdpo.sizing import CPU_SOLVE, CPU_TRAIN, SMALL_MODEL_PARAMS, fit_config, model_parameters, sizing


def test_parameter_estimate_is_close_to_the_real_count(tiny_model_path):
    from sdpo.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(tiny_model_path)
    real = sum(p.numel() for p in model.parameters())
    assert abs(model_parameters(tiny_model_path) - real) / real < 0.1
    assert real < SMALL_MODEL_PARAMS


def test_profile_follows_model_and_device(tiny_model_path, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text(json.dumps(dict(hidden_size=3584, num_hidden_layers=28, vocab_size=152064,
                                                     intermediate_size=18944, num_attention_heads=28,
                                                     num_key_value_heads=4)))
    assert sizing("solve", model_path=tiny_model_path, cuda=True).defaults == CPU_SOLVE  # the demo model
    assert sizing("solve", model_path=None, cuda=True).profile == "cpu"  # the demo model, not built yet
    assert sizing("train", model_path=big, cuda=True).defaults == {}  # the paper's
    assert sizing("train", model_path=big, cuda=False).defaults == CPU_TRAIN
    assert sizing("solve", model_path=big, device="cpu", cuda=True).profile == "cpu"
    assert sizing("solve", model_path=big, device="cuda", cuda=False).profile == "paper"  # device cuda: a GPU
    assert "small demo model" in sizing("solve", model_path=tiny_model_path).reason
    # what the user sets wins; an unset context_budget grows with the response length
    out = fit_config("solve", {"n": 2, "max_new_tokens": 3000}, model_path=tiny_model_path)
    assert (out["n"], out["budget"], out["max_new_tokens"], out["context_budget"]) == (2, 16, 3000, 5048)
    out = fit_config("solve", {"max_new_tokens": 3000, "context_budget": 3500}, model_path=tiny_model_path)
    assert out["context_budget"] == 3500


def test_a_small_model_on_the_cpu_runs_on_one_thread(tiny_model_path, tmp_path):
    from sdpo.sizing import cpu_threads

    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text(json.dumps(dict(hidden_size=3584, num_hidden_layers=28, vocab_size=152064)))
    assert cpu_threads(tiny_model_path, "cpu") == 1
    assert cpu_threads(tiny_model_path, "cuda") is None  # a GPU job: threads do not matter
    assert cpu_threads(big, "cpu") is None  # a real checkpoint keeps torch's default
    assert cpu_threads(tmp_path / "missing", "cpu") is None
