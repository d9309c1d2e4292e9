import json
import math

import pytest
import torch

from sdpo.config import ConfigError
from sdpo.toy.pretrain import DEFAULT_STEPS, ToyModelConfig, lr_at, make_toy_model

SMALL = dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, vocab_size=400, n_examples=200,
             batch_size=4, warmup_steps=2, log_every=2)


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = ToyModelConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 110, cfg) == pytest.approx(0.1)
    assert lr_at(9, 110, cfg) == pytest.approx(1.0)
    assert lr_at(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, 110, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("kw,field", [({"steps": 0}, "steps"), ({"hidden_size": 65}, "hidden_size"),
                                      ({"mix": (1, 1)}, "mix"), ({"lr": -1.0}, "lr"),
                                      ({"num_kv_heads": 3}, "num_kv_heads"), ({"minutes": 0}, "minutes")])
def test_config_rejects_bad_values(kw, field):
    with pytest.raises(ConfigError) as e:
        ToyModelConfig(**kw)
    assert e.value.field == field


def test_default_run_has_a_fixed_step_count_and_no_time_cap():
    cfg = ToyModelConfig()
    assert cfg.steps == DEFAULT_STEPS and cfg.minutes is None
    assert ToyModelConfig(steps=None).steps == DEFAULT_STEPS  # "no --steps" still means a fixed schedule


def test_minutes_cap_stops_early_and_is_reported(tmp_path):
    logs = []
    out = make_toy_model(tmp_path / "c", ToyModelConfig(steps=50, minutes=1e-6, **SMALL), log=logs.append)
    stats = json.loads((out / "toy_training.json").read_text())
    assert stats["stopped_by_time"] and stats["steps"] == 1 and stats["planned_steps"] == 50
    assert any("not deterministic" in line for line in logs)
    assert any("STOPPED EARLY" in line for line in logs)


def test_training_is_deterministic_and_reduces_loss(tmp_path):
    logs = []
    a = make_toy_model(tmp_path / "a", ToyModelConfig(steps=8, threads=1, **SMALL), log=logs.append)
    # same seed, another process-level RNG state, another thread count and a (never hit) time cap: identical
    # weights (so the default of 2 threads gives the same model on a 1-core machine)
    torch.manual_seed(123)
    b = make_toy_model(tmp_path / "b", ToyModelConfig(steps=8, minutes=60, threads=2, **SMALL), log=lambda s: None)
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    stats = json.loads((a / "toy_training.json").read_text())
    assert stats["steps"] == 8 and stats["losses"][-1][1] < stats["losses"][0][1]
    assert not stats["stopped_by_time"] and not json.loads((b / "toy_training.json").read_text())["stopped_by_time"]
    assert any(line.startswith("step 8/8") for line in logs)


@pytest.mark.slow
def test_cli_make_toy_model_saves_a_loadable_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from sdpo.cli import app
    from sdpo.models import chat_ids, load_model_and_tokenizer
    from sdpo.toy.generator import splits

    out = tmp_path / "toy"
    res = CliRunner().invoke(app, ["make-toy-model", "--out", str(out), "--steps", "20", "--examples", "300",
                                   "--eval-problems", "1", "--samples", "1", "--mix", "0.5,0.15,0.1,0.25"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "toy_training.json").read_text())["config"]["mix"] == [0.5, 0.15, 0.1, 0.25]
    assert "gap/solution/demo" in res.output
    model, tok = load_model_and_tokenizer(out)
    assert json.loads((out / "sdpo_model.json").read_text())["kind"] == "toy"
    assert set(json.loads((out / "toy_eval.json").read_text())) == {"easy", "hard"}
    p = splits(0, 1, 0, seed=0)["test"][0]
    ids = torch.tensor([chat_ids(tok, p.messages())])
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    bad = CliRunner().invoke(app, ["make-toy-model", "--out", str(out), "--steps", "0"])
    assert bad.exit_code == 2 and "steps" in bad.output


@pytest.mark.parametrize("mix", ["1,2", "a,b,c,d", "1,1,-1,1", "0,0,0,0"])
def test_cli_rejects_a_bad_mix_before_building_anything(tmp_path, mix):
    from typer.testing import CliRunner

    from sdpo.cli import app

    res = CliRunner().invoke(app, ["make-toy-model", "--out", str(tmp_path / "toy"), "--mix", mix])
    assert res.exit_code == 2 and "mix" in res.output
    assert not (tmp_path / "toy").exists()


def test_continue_training_from_a_toy_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from sdpo.models import load_tokenizer

    a = make_toy_model(tmp_path / "a", ToyModelConfig(steps=4, **SMALL), log=lambda s: None)
    logs = []
    b = make_toy_model(tmp_path / "b", ToyModelConfig(steps=3, init_from=str(a), **SMALL), log=logs.append)
    assert load_tokenizer(b).get_vocab() == load_tokenizer(a).get_vocab()
    stats = json.loads((b / "toy_training.json").read_text())
    assert stats["steps"] == 3 and stats["total_steps"] == 7
    assert json.loads((b / "sdpo_model.json").read_text())["steps"] == 7
    assert any("continuing" in line for line in logs)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and not all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ConfigError) as e:
        ToyModelConfig(init_from=str(tmp_path / "missing"))
    assert e.value.field == "init_from"
