"""The vLLM sampler's contract, on a real engine: needs the gpu extra (vllm==0.32.0) and a CUDA GPU.

Skipped, with the reason in pytest's summary, wherever either is missing (this includes CI and every CPU
machine). What it checks:
* generate: grouping, prompt ids from our tokenizer, one log-prob per response token, text decoded by us;
* the sampler's log-probs are those the trainer computes with an HF forward pass (the rollout-correction
  ratio starts near 1);
* full mode with sleep: a second generation without an update in between (the level-2 sleep discarded the
  engine's weights) still agrees with the trainer;
* per-prompt seeds: the same question twice in one batch gets different rollouts;
* full-weight update: weights pushed in place change the samples, and the engine then agrees with the
  updated trainer;
* LoRA update: a new adapter changes the samples, the engine agrees with the PEFT model, and only the newest
  adapter stays loaded;
* sleep mode: the engine is asleep between generations.
"""

import pytest
import torch

vllm = pytest.importorskip(
    "vllm", reason="vllm is not installed (install the gpu extra: pip install -e '.[gpu]' on a CUDA machine)"
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM contract tests need a CUDA GPU"),
]

from sdpo.models import chat_ids, load_model_and_tokenizer  # noqa: E402
from sdpo.rollout.base import SamplingParams  # noqa: E402
from sdpo.rollout.correction import rollout_is_weights  # noqa: E402
from sdpo.rollout.vllm import VLLMSampler  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "Write a function that returns the sum of a list."}],
    [{"role": "user", "content": "Reverse each line of the input."}],
]
ENGINE = dict(gpu_memory_utilization=0.3, max_model_len=1024, enforce_eager=True, enable_sleep=True)
SAMPLE = SamplingParams(max_new_tokens=24, temperature=1.0, seed=1234)


def trainer_logprobs(model, rollout) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of the sampled tokens from one HF forward pass (temperature 1)."""
    p, t = len(rollout.prompt_ids), len(rollout.response_ids)
    ids = torch.tensor([rollout.prompt_ids + rollout.response_ids], device="cuda")
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, p - 1:p - 1 + t].float()
    target = torch.tensor(rollout.response_ids, device="cuda")[:, None]
    return torch.log_softmax(logits, dim=-1).gather(-1, target).squeeze(-1).cpu()


def assert_matches_trainer(model, rollouts, *, mean_tol=0.05, max_tol=0.5):
    diffs = []
    for r in rollouts:
        ref = trainer_logprobs(model, r)
        diffs.append((ref - torch.tensor(r.logprobs)).abs())
    diffs = torch.cat(diffs)
    assert diffs.numel() > 0
    assert diffs.mean().item() < mean_tol, f"mean |logp_vllm - logp_hf| = {diffs.mean().item():.4f}"
    assert diffs.max().item() < max_tol, f"max |logp_vllm - logp_hf| = {diffs.max().item():.4f}"


def responses(rollouts):
    return [r.response_ids for r in rollouts]


@pytest.fixture()
def model_and_tokenizer(tiny_model_path):
    model, tokenizer = load_model_and_tokenizer(tiny_model_path, dtype="bfloat16", device="cuda")
    yield model, tokenizer
    del model
    torch.cuda.empty_cache()


def test_generate_full_update_and_logprobs(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    sampler = VLLMSampler(model, tokenizer, adapter="full", **ENGINE)
    try:
        before = sampler.generate(PROMPTS, 3, SAMPLE)
        assert len(before) == 6
        assert [r.prompt_index for r in before] == [0, 0, 0, 1, 1, 1]
        for r in before:
            assert r.prompt_ids == chat_ids(tokenizer, PROMPTS[r.prompt_index])
            assert 0 < len(r.response_ids) <= SAMPLE.max_new_tokens
            assert len(r.logprobs) == len(r.response_ids)
            assert all(lp <= 0.0 for lp in r.logprobs)
            assert r.text == tokenizer.decode(r.response_ids, skip_special_tokens=True)
            assert r.truncated == (r.response_ids[-1] not in sampler.stop_token_ids)
        assert sampler.llm.llm_engine.is_sleeping()
        assert_matches_trainer(model, before)

        # no update in between: the level-2 sleep dropped the weights, the wake must restore the trainer's
        again = sampler.generate(PROMPTS, 3, SAMPLE)
        assert_matches_trainer(model, again)
        twins = sampler.generate([PROMPTS[0], PROMPTS[0]], 2, SAMPLE)  # one seed per rollout, not per call
        assert responses(twins[:2]) != responses(twins[2:])
        assert_matches_trainer(model, twins)

        # greedy groups (vLLM itself refuses n > 1 at temperature 0): n identical rollouts per prompt
        greedy = sampler.generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=0.0))
        assert [r.prompt_index for r in greedy] == [0, 0, 1, 1]
        assert greedy[0].response_ids == greedy[1].response_ids and greedy[2].response_ids == greedy[3].response_ids

        # rollout correction on these rollouts: ratios near 1, almost nothing truncated
        t = max(len(r.response_ids) for r in before)
        pad = lambda rows: torch.tensor([row + [0.0] * (t - len(row)) for row in rows])  # noqa: E731
        mask = torch.tensor([[1] * len(r.logprobs) + [0] * (t - len(r.logprobs)) for r in before])
        _, metrics = rollout_is_weights(pad([trainer_logprobs(model, r).tolist() for r in before]),
                                        pad([r.logprobs for r in before]), mask)
        assert abs(metrics["rollout_corr/kl"]) < 0.05
        assert metrics["rollout_corr/is_fraction_high"] < 0.05

        with torch.no_grad():
            gen = torch.Generator(device="cuda").manual_seed(0)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * 0.05)
        sampler.update_weights(model)
        after = sampler.generate(PROMPTS, 3, SAMPLE)
        assert responses(after) != responses(before)
        assert_matches_trainer(model, after)
        assert_matches_trainer(model, sampler.generate(PROMPTS, 3, SAMPLE))  # and again, no update
    finally:
        work = sampler.work_dir
        sampler.close()
    assert not work.exists()


def test_lora_update_changes_outputs_and_evicts_old_adapters(model_and_tokenizer):
    from sdpo.adapters import apply_adapter

    base, tokenizer = model_and_tokenizer
    model = apply_adapter(base, "lora", r=8, alpha=16)  # the trainer's LoRA (peft, adapter "default")
    sampler = VLLMSampler(model, tokenizer, adapter="lora", **ENGINE)
    try:
        before = sampler.generate(PROMPTS, 2, SAMPLE)
        assert_matches_trainer(model, before)
        assert_matches_trainer(model, sampler.generate(PROMPTS, 2, SAMPLE))  # level-1 sleep, no update

        gen = torch.Generator(device="cuda").manual_seed(0)
        for _ in range(2):  # two updates: the first adapter must be gone after the second
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * 0.05)
            sampler.update_weights(model)
            after = sampler.generate(PROMPTS, 2, SAMPLE)
            assert responses(after) != responses(before)
            assert_matches_trainer(model, after)
            assert sampler.llm.llm_engine.list_loras() == {sampler.version}
            before = after
    finally:
        sampler.close()


def test_stop_check_runs_the_engine_loop_and_aborts_on_stop(model_and_tokenizer):
    """With ``should_stop`` the sampler drives ``LLMEngine.add_request`` / ``step`` itself: never asked to stop,
    its rollouts are those ``LLM.generate`` gives (same seeds, same grouping); asked to stop, it aborts the
    call's requests, raises ``StopRequested``, and the engine serves the next call."""
    from sdpo.adapters import apply_adapter
    from sdpo.callbacks import StopRequested

    base, tokenizer = model_and_tokenizer
    model = apply_adapter(base, "lora", r=8, alpha=16)
    plain = VLLMSampler(model, tokenizer, adapter="lora", **ENGINE)
    try:
        expected = plain.generate(PROMPTS, 3, SAMPLE)
    finally:
        plain.close()
    asked = []
    sampler = VLLMSampler(model, tokenizer, adapter="lora", should_stop=lambda: asked.append(1) or False, **ENGINE)
    try:
        got = sampler.generate(PROMPTS, 3, SAMPLE)
        assert responses(got) == responses(expected) and [r.prompt_index for r in got] == [0, 0, 0, 1, 1, 1]
        assert asked  # asked between engine steps
        steps = []

        def stop_at_the_sixth_step() -> bool:
            steps.append(1)
            return len(steps) > 5

        sampler.should_stop = stop_at_the_sixth_step
        with pytest.raises(StopRequested):
            sampler.generate(PROMPTS, 2, SamplingParams(max_new_tokens=900, temperature=1.0, seed=7))
        assert not sampler.llm.llm_engine.has_unfinished_requests()
        sampler.should_stop = lambda: False
        assert len(sampler.generate(PROMPTS, 2, SAMPLE)) == 4
    finally:
        sampler.close()
