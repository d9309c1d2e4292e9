"""Choosing the rollout engine: ``sampler: auto | hf | vllm``.

``auto`` picks vLLM when it is installed *and* a CUDA GPU is visible, otherwise the HF ``generate`` sampler,
so the same config runs on a laptop and on a GPU worker. Asking for ``vllm`` explicitly where it cannot run is
an error that says how to fix it, never a silent fallback.
"""

from __future__ import annotations

from typing import Any

from sdpo.config import ConfigError, build_dataclass
from sdpo.rollout.base import Sampler

SAMPLERS = ("auto", "hf", "vllm")


def resolve_sampler_kind(kind: str) -> str:
    """"auto" -> "vllm" or "hf" for this machine; "hf" / "vllm" are returned as they are.

    Raises ConfigError for an unknown kind, or for "vllm" where vLLM cannot run (not installed, or no CUDA).
    """
    from sdpo.rollout.vllm import vllm_unavailable_reason

    if kind not in SAMPLERS:
        raise ConfigError("sampler", f"got {kind!r}; allowed values are {', '.join(map(repr, SAMPLERS))}")
    if kind == "auto":
        return "vllm" if vllm_unavailable_reason() is None else "hf"
    if kind == "vllm":
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise ConfigError("sampler", f"got 'vllm' but {reason}")
    return kind


def make_sampler(kind: str, model, tokenizer, *, batch_size: int = 16, max_prompt_len: int | None = None,
                 **vllm_opts: Any) -> Sampler:
    """Build the sampler named by ``kind`` for the trainer's ``model`` and ``tokenizer``.

    batch_size: sequences per HF ``generate`` call (vLLM schedules its own batches and ignores it).
    max_prompt_len: longest chat-templated prompt accepted, in tokens (both samplers; None = no limit).
    vllm_opts: the vLLM engine options (``sdpo.rollout.vllm.VLLMOptions``: adapter, gpu_memory_utilization,
        max_model_len, enable_sleep, lora_rank, ...). They only concern vLLM and are unused when the HF
        sampler is chosen (so one config serves both machines under ``auto``), but they are validated
        either way, so a typo is reported on a CPU machine too.
    """
    from sdpo.rollout.vllm import VLLMOptions

    build_dataclass(VLLMOptions, vllm_opts)
    resolved = resolve_sampler_kind(kind)
    if resolved == "vllm":
        from sdpo.rollout.vllm import VLLMSampler

        return VLLMSampler(model, tokenizer, max_prompt_len=max_prompt_len, **vllm_opts)
    from sdpo.rollout.hf import HFSampler

    return HFSampler(model, tokenizer, batch_size=batch_size, max_prompt_len=max_prompt_len)
