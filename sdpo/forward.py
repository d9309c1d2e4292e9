"""Forward passes of a causal LM on ``[prompt | response]`` batches, for the student and the teacher alike.

Layout (both sides): ``input_ids`` is ``[B, P + T]`` with the prompt part in columns ``0 .. P-1`` (left-padded
to the longest prompt P) and the response in columns ``P .. P+T-1`` (right-padded, attention = response_mask).
The logit at column ``P - 1 + t`` predicts ``response_ids[:, t]``; hence the aligned slice is
``logits[:, P-1 : P-1+T]`` with ``P = batch.response_start``.

- :func:`student_inputs` lays out such a batch (``sdpo.reprompt.tokenize_teacher_inputs`` lays out the teacher's
  with it); :meth:`ResponseBatch.rows` and :meth:`ResponseBatch.trimmed` cut a micro-batch out of one.
- :func:`response_logits` / :func:`response_hidden` run a model on a batch and return only the response-aligned
  positions, so that index ``t`` predicts ``response_ids[:, t]`` for teacher and student alike.
- :func:`output_head` / :func:`plain_head_weight`: the LM head, and its weight for the fused (from-hidden) losses.
- :func:`eval_mode`: forwards without dropout, every module's own train/eval flag restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from sdpo.config import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class ResponseBatch:
    """Model input ``[left-padded prompt | right-padded response]`` (see the module docstring).

    input_ids, attention_mask, position_ids: [B, P + T] (long).
    response_start: P, the column of the first response token. Logits ``[:, P-1 : P-1+T]`` predict the response.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_start: int

    @property
    def response_len(self) -> int:
        return self.input_ids.shape[1] - self.response_start

    def to(self, device: torch.device | str) -> ResponseBatch:
        return ResponseBatch(self.input_ids.to(device), self.attention_mask.to(device),
                             self.position_ids.to(device), self.response_start)

    def rows(self, idx: torch.Tensor) -> ResponseBatch:
        """The rows ``idx`` [b] (long), e.g. one micro-batch."""
        return ResponseBatch(self.input_ids[idx], self.attention_mask[idx], self.position_ids[idx],
                             self.response_start)

    def trimmed(self) -> ResponseBatch:
        """Without the left-padding columns that are padding in every row (at least one prompt column stays)."""
        keep = int(self.attention_mask[:, :self.response_start].sum(-1).max())
        cut = self.response_start - max(keep, 1)
        return ResponseBatch(self.input_ids[:, cut:], self.attention_mask[:, cut:], self.position_ids[:, cut:],
                             self.response_start - cut)


def student_inputs(prompt_ids_list: Sequence[Sequence[int]], response_ids: torch.Tensor,
                   response_mask: torch.Tensor, pad_id: int) -> ResponseBatch:
    """Lay out ``[left-padded prompt | response]``.

    prompt_ids_list: [B] token id lists (unpadded). response_ids, response_mask: [B, T], right-padded.
    Returns a :class:`ResponseBatch` on ``response_ids.device``; position ids = cumsum(attention_mask) - 1,
    clamped at 0 (pads and trailing response pads keep a valid position; they are masked out).
    """
    if response_ids.dim() != 2 or response_ids.shape != response_mask.shape:
        raise ValueError(f"response_ids {tuple(response_ids.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must both be [B, T]")
    if len(prompt_ids_list) != response_ids.shape[0]:
        raise ValueError(f"{len(prompt_ids_list)} prompts for {response_ids.shape[0]} responses")
    if any(len(p) == 0 for p in prompt_ids_list):
        raise ValueError("every prompt needs at least one token (the response's first token is predicted "
                         "from the last prompt position)")
    device = response_ids.device
    width = max(len(p) for p in prompt_ids_list)
    prompt = torch.full((len(prompt_ids_list), width), pad_id, dtype=torch.long, device=device)
    prompt_mask = torch.zeros_like(prompt)
    for i, ids in enumerate(prompt_ids_list):
        prompt[i, width - len(ids):] = torch.as_tensor(list(ids), dtype=torch.long, device=device)
        prompt_mask[i, width - len(ids):] = 1
    input_ids = torch.cat([prompt, response_ids.long()], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return ResponseBatch(input_ids, attention_mask, position_ids, width)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers model under a peft wrapper (LoRA layers stay injected, so adapters still apply)."""
    base = getattr(model, "get_base_model", None)
    return cast("PreTrainedModel", base() if base is not None else model)


def response_logits(model: nn.Module, batch: ResponseBatch) -> torch.Tensor:
    """Run ``model`` on ``batch`` and return the response-aligned logits [B, T, V] (index t predicts
    ``response_ids[:, t]``). Only the last T+1 positions go through the LM head (``logits_to_keep``)."""
    t = batch.response_len
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False, logits_to_keep=t + 1)
    return out.logits[:, :t]


def response_hidden(model: nn.Module, batch: ResponseBatch) -> torch.Tensor:
    """Final (post-norm) hidden states at the response-aligned positions [B, T, H], for a fused
    ``hidden @ output_head(model).weight.T`` loss. Runs the decoder only (no LM head); equals
    ``response_logits`` after the head for models whose head is a plain linear layer (no logit soft-capping)."""
    start = batch.response_start
    decoder = unwrap(model).get_decoder()
    out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=batch.position_ids, use_cache=False)
    return out.last_hidden_state[:, start - 1: start - 1 + batch.response_len]


def output_head(model: nn.Module) -> nn.Module:
    """The LM head (output embedding) of a transformers or peft model."""
    return unwrap(model).get_output_embeddings()


def plain_head_weight(model: nn.Module) -> torch.Tensor:
    """The LM-head weight [V, H] of ``model`` for a fused (from-hidden) loss. Raises ConfigError (field
    ``fused_lm_head``) unless the head is a plain bias-free ``nn.Linear``: a LoRA-wrapped head's ``.weight``
    is only its frozen base, so fusing it would silently drop the adapter."""
    head = output_head(model)
    if type(head) is not nn.Linear or head.bias is not None:
        kind = type(head).__name__ + (" with a bias" if type(head) is nn.Linear else "")
        raise ConfigError(
            "fused_lm_head", f"the fused LM-head path needs a bias-free nn.Linear LM head, got {kind} "
            f"({type(head).__module__}); a LoRA adapter on the head (lora_target_modules containing it) cannot be "
            "fused: remove the head from lora_target_modules or set fused_lm_head=false"
        )
    return head.weight


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode; restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training
