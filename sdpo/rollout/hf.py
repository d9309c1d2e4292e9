"""Sampling with transformers ``generate`` (CPU and GPU), returning per-token sampling log-probs.

The sampled token's log-probability is taken under the distribution the token was actually drawn from
(temperature, then top-k, then top-p), recorded step by step by a logits processor so that no
[B, T, V] score tensor is ever held (``output_scores`` would keep one [B, V] tensor per generated token).

Only our ``SamplingParams`` shape that distribution. A checkpoint's ``generation_config.json`` often carries its
own sampling settings (Qwen2.5: ``repetition_penalty=1.05``, top-k, top-p), which ``generate`` would otherwise
apply on top of ours: the rollouts would not come from the policy's distribution and the recorded log-probs
would not be theirs. ``generate`` fills every setting left ``None`` in the config it is given from the model's
own ``generation_config``, so a neutral config passed in is not enough for settings whose neutral value is
``None`` (``min_p``, ``top_h``, ``suppress_tokens``, ``sequence_bias``, ...): during the call the model's
``generation_config`` is replaced by one holding only its special-token ids (and cache settings).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from sdpo.callbacks import StopRequested
from sdpo.models import chat_ids
from sdpo.rollout.base import Rollout, SamplingParams


class _RecordSampledLogprob(LogitsProcessor):
    """Last processor in the chain: keeps log_softmax of the final scores of step t and, at step t+1,
    gathers the log-prob of the token that was drawn at step t (now the last column of input_ids)."""

    def __init__(self) -> None:
        self.prev: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """[B] last sampled tokens -> [B, T] log-probs of all sampled tokens."""
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, last_tokens[:, None]).squeeze(-1))
            self.prev = None
        if not self.steps:
            return torch.zeros(last_tokens.shape[0], 0)
        return torch.stack(self.steps, dim=1)


class _StopWhenAsked(StoppingCriteria):
    """Ends every sequence of the ``generate`` call once ``should_stop()`` says so (asked after every token;
    ``sdpo.callbacks.StopPoll`` makes that cheap). ``fired`` tells the sampler why generation ended."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop
        self.fired = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.Tensor:
        if not self.fired and self.should_stop():
            self.fired = True
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    for e in (eos if isinstance(eos, (list, tuple)) else [eos]):
        if e is not None:
            ids.add(int(e))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


# Settings that only say which tokens are special or how the KV cache is kept: carried over from the model's
# generation_config. Everything else (all the sampling settings) is ours alone.
_KEPT_GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                         "use_cache", "cache_implementation")


def neutral_generation_config(model, *, max_new_tokens: int, do_sample: bool, eos_token_id: list[int],
                              pad_token_id: int | None) -> GenerationConfig:
    """A ``GenerationConfig`` that leaves the model's next-token distribution untouched (every processor and
    warper of ``generate`` off; ours are passed as ``logits_processor``), keeping the model's special-token ids."""
    own = getattr(model, "generation_config", None)
    kept = {k: getattr(own, k, None) for k in _KEPT_GENERATION_KEYS}
    kept = {k: v for k, v in kept.items() if v is not None}
    kept.update(eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return GenerationConfig(
        **kept, max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=1, num_return_sequences=1,
        temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, min_length=0, length_penalty=1.0, guidance_scale=1.0,
        renormalize_logits=False, remove_invalid_values=False,
    )


def _generating_model(model):
    """The transformers model whose ``generate`` runs (a peft model's base model)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@contextmanager
def _bare_generation_config(model):
    """Within the block the model's own generation_config holds only special-token ids and cache settings, so
    ``generate`` cannot fill the ``None`` settings of the config we pass from the checkpoint's."""
    owner = _generating_model(model)
    own = getattr(owner, "generation_config", None)
    if own is None:
        yield
        return
    bare = {k: getattr(own, k, None) for k in _KEPT_GENERATION_KEYS}
    owner.generation_config = GenerationConfig(**{k: v for k, v in bare.items() if v is not None})
    try:
        yield
    finally:
        owner.generation_config = own


class HFSampler:
    """``Sampler`` over a live transformers model (full or peft). It always samples from the current
    weights, so ``update_weights`` has nothing to do.

    batch_size: sequences generated per ``generate`` call (rollouts are chunked to bound memory).
    should_stop: asked while generating (after every token; pass a ``sdpo.callbacks.StopPoll`` for anything
        costly); when it says stop, ``generate`` ends within a token and raises ``StopRequested``.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 16, max_prompt_len: int | None = None,
                 should_stop: Callable[[], bool] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size}; must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_prompt_len = max_prompt_len
        self.should_stop = should_stop

    def update_weights(self, model) -> None:
        self.model = model

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""

    def prompt_ids(self, prompt: list[dict[str, str]]) -> list[int]:
        ids = chat_ids(self.tokenizer, prompt)
        if self.max_prompt_len is not None and len(ids) > self.max_prompt_len:
            raise ValueError(
                f"max_prompt_len: prompt has {len(ids)} tokens, more than max_prompt_len={self.max_prompt_len}; "
                "raise max_prompt_len or shorten the question"
            )
        return ids

    @torch.no_grad()
    def generate(self, prompts: list[list[dict[str, str]]], n: int, params: SamplingParams) -> list[Rollout]:
        if n < 1:
            raise ValueError(f"n: got {n}; must be >= 1")
        encoded = [self.prompt_ids(p) for p in prompts]
        jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(n)]
        device = next(self.model.parameters()).device
        gen = torch.Generator(device="cpu")
        if params.seed is not None:
            gen.manual_seed(params.seed)
        was_training = self.model.training
        self.model.eval()
        out: list[Rollout] = []
        try:
            for start in range(0, len(jobs), self.batch_size):
                if self.should_stop is not None and self.should_stop():
                    raise StopRequested
                chunk = jobs[start:start + self.batch_size]
                if params.seed is not None:
                    # one seed per chunk drawn from the call's generator: reproducible for any chunking
                    chunk_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
                    torch.manual_seed(chunk_seed)
                out.extend(self._generate_chunk(chunk, params, device))
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, chunk, params: SamplingParams, device) -> list[Rollout]:
        pad = self.tokenizer.pad_token_id
        width = max(len(ids) for _, ids in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, ids) in enumerate(chunk):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        greedy = params.temperature == 0.0
        processors: list[LogitsProcessor] = []
        if not greedy:
            if params.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                processors.append(TopKLogitsWarper(top_k=params.top_k))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p=params.top_p))
        recorder = _RecordSampledLogprob()
        processors.append(recorder)
        eos = _eos_ids(self.model, self.tokenizer)
        config = neutral_generation_config(_generating_model(self.model), max_new_tokens=params.max_new_tokens,
                                           do_sample=not greedy, eos_token_id=sorted(eos), pad_token_id=pad)
        stop = _StopWhenAsked(self.should_stop) if self.should_stop is not None else None
        with _bare_generation_config(self.model):
            seqs = self.model.generate(  # warpers are ours, in the chain above; the config's are all off
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config,
                logits_processor=LogitsProcessorList(processors),
                stopping_criteria=StoppingCriteriaList([stop] if stop is not None else []),
            )
        if stop is not None and stop.fired:
            raise StopRequested
        gen_tokens = seqs[:, width:].cpu()
        logprobs = recorder.finish(gen_tokens[:, -1]).cpu() if gen_tokens.shape[1] else torch.zeros(len(chunk), 0)
        rollouts = []
        for row, (prompt_index, ids) in enumerate(chunk):
            toks = gen_tokens[row].tolist()
            end = next((k + 1 for k, t in enumerate(toks) if t in eos), None)
            truncated = end is None
            end = len(toks) if end is None else end
            resp = toks[:end]
            rollouts.append(Rollout(
                prompt_ids=list(ids), response_ids=resp,
                text=self.tokenizer.decode(resp, skip_special_tokens=True),
                logprobs=logprobs[row, :end].tolist(), truncated=truncated and len(resp) >= params.max_new_tokens,
                prompt_index=prompt_index,
            ))
        return rollouts
