"""The committed demo model: its files are the recorded ones, it is the default model with no build, it loads
in float32 and writes programs that pass built-in examples; the export that produced it keeps the weights."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from sdpo.toy import demo


def test_committed_files_match_their_recorded_sha256():
    assert demo.mismatches() == []
    manifest = demo.read_manifest()
    assert {"config.json", "model.safetensors", "tokenizer.json", "toy_training.json"} <= set(manifest["sha256"])
    size = sum(p.stat().st_size for p in demo.DEMO_DIR.iterdir())
    assert size < 8_000_000, f"the committed demo model grew to {size} bytes"


def test_the_recorded_recipe_is_the_one_the_training_log_ran():
    manifest = demo.read_manifest()
    trained = json.loads((demo.DEMO_DIR / "toy_training.json").read_text())
    args = shlex.split(manifest["recipe"])
    assert args[:2] == ["sdpo", "make-toy-model"]
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    cfg = trained["config"]
    assert int(flags.get("--seed", 0)) == cfg["seed"] and int(flags.get("--steps", 1200)) == trained["steps"]
    assert int(flags.get("--examples", 40_000)) == cfg["n_examples"] and not trained["stopped_by_time"]
    assert [float(w) for w in flags["--mix"].split(",")] == cfg["mix"]


def test_default_model_is_the_demo_model_without_any_build(tmp_path, monkeypatch):
    from sdpo.models import default_model_path, demo_model_path

    monkeypatch.delenv("SDPO_MODEL", raising=False)
    monkeypatch.setenv("SDPO_DATA_DIR", str(tmp_path))
    assert default_model_path() == demo_model_path() == demo.DEMO_DIR
    assert not (tmp_path / "models").exists()  # nothing was built
    (tmp_path / "models" / "toy").mkdir(parents=True)  # a toy model the user built wins
    (tmp_path / "models" / "toy" / "config.json").write_text("{}")
    assert default_model_path() == tmp_path / "models" / "toy"
    monkeypatch.setenv("SDPO_MODEL", "/somewhere/else")
    assert str(default_model_path()) == "/somewhere/else"


def test_demo_model_loads_in_float32_and_greedily_solves_some_easy_examples():
    from sdpo.data.examples import example_problems
    from sdpo.data.problem import Problem
    from sdpo.envs import score
    from sdpo.models import chat_ids, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(demo.DEMO_DIR)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert json.loads((demo.DEMO_DIR / "sdpo_model.json").read_text())["kind"] == "toy"
    easy = [Problem.parse(p).to_task() for p in example_problems() if p["meta"].get("difficulty") == "easy"]
    solved = 0
    for task in easy:
        ids = torch.tensor([chat_ids(tok, task.messages)])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=128, do_sample=False)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        solved += score(task, text, tests=task.hidden_tests).reward == 1.0
    assert solved >= 2, f"greedy decoding solved {solved} of {len(easy)} easy examples"


def test_export_keeps_the_weights_in_half_precision_and_records_every_file(tmp_path):
    from sdpo.models import load_model_and_tokenizer
    from sdpo.toy.pretrain import ToyModelConfig, make_toy_model

    src = make_toy_model(tmp_path / "src", ToyModelConfig(steps=2, hidden_size=64, num_layers=2, num_heads=2,
                                                           num_kv_heads=1, vocab_size=400, n_examples=100,
                                                           batch_size=4, warmup_steps=1, log_every=1),
                         log=lambda s: None)
    out = tmp_path / "demo"
    manifest = demo.export_demo_model(src, out, recipe="sdpo make-toy-model --out X --steps 2")
    assert demo.mismatches(out) == [] and manifest["stored_dtype"] == "float16"
    assert manifest["source_model_sha256"] == demo.sha256(src / "model.safetensors")
    assert (out / "model.safetensors").stat().st_size < 0.6 * (src / "model.safetensors").stat().st_size
    a, tok = load_model_and_tokenizer(src)
    b, tok_b = load_model_and_tokenizer(out)
    assert tok_b.get_vocab() == tok.get_vocab() and next(b.parameters()).dtype == torch.float32
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=2e-2)
    with open(out / "tokenizer.json", "ab") as f:
        f.write(b" ")
    assert demo.mismatches(out) == ["tokenizer.json: sha256 " + demo.sha256(out / "tokenizer.json")[:16]
                                    + ", recorded " + manifest["sha256"]["tokenizer.json"][:16]]
    with pytest.raises(ValueError, match="^src: "):
        demo.export_demo_model(tmp_path, tmp_path / "x", recipe="-")
