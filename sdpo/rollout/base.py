"""The sampler contract between rollout engines (HF generate, vLLM) and the trainer / test-time engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings shared by every sampler."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None


@dataclass
class Rollout:
    """One sampled response to one prompt.

    prompt_ids: token ids of the chat-templated prompt, [P] (no padding).
    response_ids: generated token ids, [T] (no padding; EOS included when generated).
    text: decoded response (special tokens skipped).
    logprobs: per-token log-probabilities under the sampling distribution, [T]
        (after temperature/top-k/top-p processing, as the sampler drew them).
    truncated: True when generation stopped at max_new_tokens without EOS.
    prompt_index: index of the prompt in the ``generate`` call (rollouts of one prompt form a group).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    logprobs: list[float]
    truncated: bool
    prompt_index: int = 0
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Sampler(Protocol):
    """Anything that turns chat prompts into rollouts. ``n`` rollouts per prompt, grouped in order:
    result[i * n + j] is the j-th rollout of prompts[i].

    The owner calls ``close()`` once it is done with the sampler (in a ``finally``): an engine-backed sampler
    (vLLM) shuts its engine down there and deletes its files; it is idempotent, and a no-op for HF.
    """

    def generate(self, prompts: list[list[dict[str, str]]], n: int, params: SamplingParams) -> list[Rollout]:
        ...

    def update_weights(self, model) -> None:
        """Called after each optimizer step so the next generation uses the current policy."""
        ...

    def close(self) -> None:
        """Release what the sampler holds (engine processes, GPU memory, temp files). Idempotent."""
        ...
