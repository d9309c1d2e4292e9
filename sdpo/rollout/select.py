"""Choosing the rollout engine: ``sampler: auto | hf | vllm``.

``auto`` picks vLLM only when the trainer's model is on a CUDA device, the job is single-process and
``import vllm`` (with its ``LLM`` entry point) actually succeeds; otherwise the HF ``generate`` sampler, with
one log line (logger ``sdpo.rollout.select``) saying why -- a warning when vLLM is installed but fails to
import. So the same config runs on a laptop, on a GPU host training on the CPU (``device: cpu``) and on a GPU
worker. Asking for ``vllm`` explicitly where it cannot run is an error that says how to fix it, never a silent
fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from sdpo.config import SAMPLERS, ConfigError, build_dataclass
from sdpo.rollout.base import Sampler
from sdpo.rollout.hf import HFSampler
from sdpo.rollout.vllm import BROKEN_INSTALL, VLLMOptions, VLLMSampler, vllm_unavailable_reason

logger = logging.getLogger(__name__)


def resolve_sampler_kind(kind: str, device: torch.device | str | None = None) -> str:
    """"auto" -> "vllm" or "hf" for this machine; "hf" / "vllm" are returned as they are.

    device: where the trainer's model lives (``make_sampler`` passes it); ``auto`` resolves to vllm only for a
    CUDA device (None = not known: the machine alone decides). Raises ConfigError for an unknown kind, or for
    "vllm" where vLLM cannot run (not installed or not importable, no CUDA, a multi-process job).
    """
    if kind not in SAMPLERS:
        raise ConfigError("sampler", f"got {kind!r}; allowed values are {', '.join(map(repr, SAMPLERS))}")
    if kind == "auto":
        reason = vllm_unavailable_reason(device)
        if reason is None:
            logger.info("sampler: auto -> vllm")
            return "vllm"
        log = logger.warning if reason.startswith(BROKEN_INSTALL) else logger.info
        log("sampler: auto -> hf, because %s", reason)
        return "hf"
    if kind == "vllm":
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise ConfigError("sampler", f"got 'vllm' but {reason}")
    return kind


def make_sampler(kind: str, model, tokenizer, *, batch_size: int = 16, max_prompt_len: int | None = None,
                 should_stop: Callable[[], bool] | None = None, **vllm_opts: Any) -> Sampler:
    """Build the sampler named by ``kind`` for the trainer's ``model`` and ``tokenizer``.

    batch_size: sequences per HF ``generate`` call (vLLM schedules its own batches and ignores it).
    max_prompt_len: longest chat-templated prompt accepted, in tokens (both samplers; None = no limit).
    should_stop: asked while generating (both samplers); when it says stop, ``generate`` ends early and raises
        ``sdpo.callbacks.StopRequested``. Pass a ``sdpo.callbacks.StopPoll`` when asking is costly.
    vllm_opts: the vLLM engine options (``sdpo.rollout.vllm.VLLMOptions``: adapter, gpu_memory_utilization,
        max_model_len (pass max_prompt_len + max_new_tokens when both are known), enable_sleep, lora_rank,
        ...). They only concern vLLM and are unused when the HF sampler is chosen (so one config serves both
        machines under ``auto``), but they are validated either way, so a typo is reported on a CPU machine
        too.
    """
    build_dataclass(VLLMOptions, vllm_opts)
    resolved = resolve_sampler_kind(kind, device=_model_device(model))
    if resolved == "vllm":
        return VLLMSampler(model, tokenizer, max_prompt_len=max_prompt_len, should_stop=should_stop, **vllm_opts)
    return HFSampler(model, tokenizer, batch_size=batch_size, max_prompt_len=max_prompt_len,
                     should_stop=should_stop)


def _model_device(model) -> torch.device | None:
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return None if param is None else param.device
