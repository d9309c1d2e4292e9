import json

import torch

from sdpo.models import chat_ids, load_model_and_tokenizer
from sdpo.tiny import make_tiny_model


def test_tiny_model_reload_gives_identical_logits(tmp_path, tiny_model_path):
    model, tok = load_model_and_tokenizer(tiny_model_path)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 5_000_000
    ids = torch.tensor([chat_ids(tok, [{"role": "user", "content": "Reverse a list."}])])
    with torch.no_grad():
        a = model(ids).logits
    # rebuilding with the same seed reproduces the checkpoint exactly
    again = make_tiny_model(tmp_path / "again", seed=0)
    model2, tok2 = load_model_and_tokenizer(again)
    assert tok2.get_vocab() == tok.get_vocab()
    assert (again / "tokenizer.json").read_bytes() == (tiny_model_path / "tokenizer.json").read_bytes()
    with torch.no_grad():
        b = model2(ids).logits
    assert torch.equal(a, b)
    # another seed gives another model
    other, _ = load_model_and_tokenizer(make_tiny_model(tmp_path / "other", seed=1))
    with torch.no_grad():
        assert not torch.allclose(other(ids).logits, a)


def test_chat_template(tiny_model_path):
    _, tok = load_model_and_tokenizer(tiny_model_path)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(chat_ids(tok, msgs)) == text
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert json.loads((tiny_model_path / "sdpo_model.json").read_text())["kind"] == "tiny"


def test_cli_make_tiny_model(tmp_path):
    from typer.testing import CliRunner

    from sdpo.cli import app

    res = CliRunner().invoke(app, ["make-tiny-model", "--out", str(tmp_path / "m"), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "tokenizer.json").exists() and (tmp_path / "m" / "config.json").exists()
