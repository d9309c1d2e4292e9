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


# ------------------------------------------------------------------- the checkpoint's generation_config is ignored

# Sampling settings a checkpoint may ship (Qwen2.5 ships repetition_penalty=1.05). min_p and typical_p are
# applied by ``generate`` after our recorder, repetition_penalty and no_repeat_ngram_size before it: either
# kind would make the rollouts differ from the policy's distribution.
OPINIONATED = {"repetition_penalty": 3.0, "no_repeat_ngram_size": 2, "min_p": 0.3, "typical_p": 0.5,
               "top_k": 3, "temperature": 0.2, "do_sample": True}


@pytest.fixture(scope="module")
def opinionated_model_tok(tiny_model_path, tmp_path_factory):
    """The tiny model, same weights, saved with a generation_config.json full of sampling settings."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("opinionated") / "model"
    shutil.copytree(tiny_model_path, out)
    gen_file = out / "generation_config.json"
    gen = json.loads(gen_file.read_text())
    gen_file.write_text(json.dumps({**gen, **OPINIONATED}))
    model, tok = load_model_and_tokenizer(out)
    for k, v in OPINIONATED.items():  # the test only means something if the settings were loaded
        assert getattr(model.generation_config, k) == v, k
    return model, tok


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=12, temperature=0.7, seed=1),
                                    SamplingParams(max_new_tokens=12, temperature=1.3, top_k=20, seed=2)])
def test_the_checkpoints_generation_config_does_not_shape_sampling(model_tok, opinionated_model_tok, params):
    model, tok = opinionated_model_tok
    rollouts = HFSampler(model, tok, batch_size=3).generate(PROMPTS, 3, params)
    for r in rollouts:
        ref = _recomputed_logprobs(model, r, params)
        torch.testing.assert_close(torch.tensor(r.logprobs, dtype=torch.float64), ref, atol=2e-4, rtol=1e-4)
    # same weights with a clean generation config, same seed: the same tokens
    clean, clean_tok = model_tok
    expected = HFSampler(clean, clean_tok, batch_size=3).generate(PROMPTS, 3, params)
    assert [r.response_ids for r in rollouts] == [r.response_ids for r in expected]
    # greedy too (no_repeat_ngram_size / repetition_penalty would change the argmax path)
    g = SamplingParams(max_new_tokens=12, temperature=0.0)
    assert ([r.response_ids for r in HFSampler(model, tok).generate(PROMPTS, 1, g)]
            == [r.response_ids for r in HFSampler(clean, clean_tok).generate(PROMPTS, 1, g)])
    # and the model's own generation_config is left as it was
    assert model.generation_config.repetition_penalty == 3.0 and model.generation_config.min_p == 0.3


def test_a_lora_models_base_generation_config_does_not_shape_sampling(model_tok, opinionated_model_tok):
    import copy

    from sdpo.adapters import apply_adapter

    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
    lora = apply_adapter(copy.deepcopy(opinionated_model_tok[0]), "lora", r=4)  # zero-initialised: same function
    clean = apply_adapter(copy.deepcopy(model_tok[0]), "lora", r=4)
    tok = model_tok[1]
    got = HFSampler(lora, tok).generate(PROMPTS, 2, params)
    want = HFSampler(clean, tok).generate(PROMPTS, 2, params)
    assert [r.response_ids for r in got] == [r.response_ids for r in want]
    for r in got:
        ref = _recomputed_logprobs(lora, r, params)
        torch.testing.assert_close(torch.tensor(r.logprobs, dtype=torch.float64), ref, atol=2e-4, rtol=1e-4)


def test_generation_stops_within_a_token_of_being_asked(model_tok):
    """``should_stop`` is asked after every token; once it says stop, generate ends and raises StopRequested
    (the tiny model rarely emits EOS, so without it this call would generate 4 x 2000 tokens)."""
    from sdpo.callbacks import StopRequested

    model, tok = model_tok
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 20

    sampler = HFSampler(model, tok, batch_size=2, should_stop=should_stop)
    with pytest.raises(StopRequested):
        sampler.generate(PROMPTS[:1], 4, SamplingParams(max_new_tokens=2000, seed=0))
    assert len(asked) == 21  # once before the first chunk, then after each token; the 21st said stop
    # never asked to stop: the same sampler generates to the end
    sampler.should_stop = lambda: False
    out = sampler.generate(PROMPTS[:1], 2, SamplingParams(max_new_tokens=16, seed=0))
    assert len(out) == 2 and all(len(r.response_ids) <= 16 for r in out)
