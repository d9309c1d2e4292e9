import pytest
import torch

from sdpo.models import load_model_and_tokenizer
from sdpo.rollout.base import Rollout, Sampler, SamplingParams
from sdpo.rollout.hf import HFSampler

PROMPTS = [
    [{"role": "user", "content": "Write a program that reverses its input."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sum a list"}],
]


@pytest.fixture(scope="module")
def model_tok(tiny_model_path):
    return load_model_and_tokenizer(tiny_model_path)


def _recomputed_logprobs(model, r: Rollout, params: SamplingParams) -> torch.Tensor:
    ids = torch.tensor([r.prompt_ids + r.response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(r.prompt_ids) - 1:-1].double() / params.temperature
    if params.top_k:
        kth = logits.topk(params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.response_ids)[:, None]).squeeze(-1)


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=12, temperature=0.7, seed=1),
                                    SamplingParams(max_new_tokens=12, temperature=1.3, top_k=20, seed=2)])
def test_logprobs_are_those_of_the_sampling_distribution(model_tok, params):
    model, tok = model_tok
    sampler = HFSampler(model, tok, batch_size=3)
    assert isinstance(sampler, Sampler)
    rollouts = sampler.generate(PROMPTS, 3, params)
    assert [r.prompt_index for r in rollouts] == [0, 0, 0, 1, 1, 1]
    for r in rollouts:
        assert len(r.logprobs) == len(r.response_ids) > 0
        ref = _recomputed_logprobs(model, r, params)
        torch.testing.assert_close(torch.tensor(r.logprobs, dtype=torch.float64), ref, atol=2e-4, rtol=1e-4)
        assert r.truncated == (len(r.response_ids) == params.max_new_tokens and tok.eos_token_id not in r.response_ids)
        assert r.text == tok.decode(r.response_ids, skip_special_tokens=True)


def test_seeded_sampling_is_reproducible_and_left_padding_is_harmless(model_tok):
    model, tok = model_tok
    p = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)
    a = HFSampler(model, tok, batch_size=4).generate(PROMPTS, 2, p)
    b = HFSampler(model, tok, batch_size=4).generate(PROMPTS, 2, p)
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    c = HFSampler(model, tok, batch_size=4).generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, seed=8))
    assert [r.response_ids for r in a] != [r.response_ids for r in c]
    # greedy: a padded batch gives the same continuation as each prompt alone
    g = SamplingParams(max_new_tokens=6, temperature=0.0)
    both = HFSampler(model, tok, batch_size=2).generate(PROMPTS, 1, g)
    alone = [HFSampler(model, tok).generate([p_], 1, g)[0] for p_ in PROMPTS]
    assert [r.response_ids for r in both] == [r.response_ids for r in alone]


def test_eos_stops_and_is_not_truncated(model_tok):
    model, tok = model_tok
    eos = tok.eos_token_id
    # force EOS to be the likeliest token: greedy must emit it first and stop
    with torch.no_grad():
        bias = torch.zeros(model.config.vocab_size)
        bias[eos] = 100.0
        head = model.get_output_embeddings()
        old = None if head.bias is None else head.bias.clone()
        head.bias = torch.nn.Parameter(bias)
    try:
        r = HFSampler(model, tok).generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=5, temperature=0.0))[0]
    finally:
        head.bias = None if old is None else torch.nn.Parameter(old)
    assert r.response_ids == [eos] and not r.truncated and r.text == ""


def test_bad_arguments(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="n: got 0"):
        HFSampler(model, tok).generate(PROMPTS, 0, SamplingParams())
    with pytest.raises(ValueError, match="max_prompt_len"):
        HFSampler(model, tok, max_prompt_len=3).generate(PROMPTS, 1, SamplingParams(max_new_tokens=2))
