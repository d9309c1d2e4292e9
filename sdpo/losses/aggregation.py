"""How per-token losses become one loss: the five ``loss_agg_mode`` values as aggregation weights (SDPO,
arXiv 2601.20802; reference lasgroup/SDPO, verl ``agg_loss``). ``sdpo.losses.reference.aggregate_reference``
writes the same modes out as formulas.

With ``mask = response_mask * sample_mask[:, None]`` [B, T]:

* ``token-mean``: sum(mask * l) / max(sum(mask), 1).
* ``seq-mean-token-sum``: mean over *active* sequences (at least one unmasked token) of sum_t mask * l.
* ``seq-mean-token-mean``: mean over active sequences of sum_t mask * l / sum_t mask.
* ``seq-mean-token-sum-norm``: sum(mask * l) / L with L a constant: ``norm_length`` (the config's
  ``loss_scale_factor``; the trainer and the solver pass their max_new_tokens), so that the loss scale does not
  depend on the batch. That is verl's default divisor, the padded response length, which verl's rollouts pad
  to max_response_length. Without ``norm_length`` L is mask.shape[-1] (the width of the tensors given).
* ``seq-mean-token-mean-all``: mean over *all* B sequences of sum_t mask * l / sum_t mask; fully masked
  sequences (no tokens, or samples without a teacher context) count as zero. This is the reference's SDPO
  weighting (lasgroup/SDPO, core_algos.py ``compute_self_distillation_loss`` + dp_actor.py ``update_policy``: a
  token-mean per micro-batch of one sequence, scaled by 1 / mini-batch size) and TRL's SDPO loss.

Counting only active sequences in seq-mean-token-sum / seq-mean-token-mean (rather than all B rows, as older
verl does) keeps ``sample_mask`` (samples without a teacher context) from diluting the loss, consistent with
token-mean; seq-mean-token-mean-all is the diluting variant. The denominators of every mode are clamped to at
least 1, so a fully masked batch gives a zero loss that is still connected to the graph (backward works and
yields zero gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdpo.config import LOSS_AGG_MODES


def aggregation_weights(mask: Tensor, loss_agg_mode: str, dtype: torch.dtype | None = None,
                        norm_length: int | None = None) -> Tensor:
    """Weights ``w`` [B, T] such that the aggregated loss is ``sum(w * per_token_loss)``.

    mask: [B, T], 0/1 (or non-negative weights). norm_length: seq-mean-token-sum-norm's constant divisor
    (default T). See the module docstring for the five modes.
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={loss_agg_mode!r}; allowed values are {', '.join(LOSS_AGG_MODES)}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    m = mask.to(dtype or torch.float32)
    if loss_agg_mode == "token-mean":
        return m / m.sum().clamp(min=1.0)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        return m / max(norm_length or m.shape[-1], 1)
    row = m.sum(-1)
    if loss_agg_mode == "seq-mean-token-mean-all":
        return m / row.clamp(min=1.0)[:, None] / max(m.shape[0], 1)
    n_seq = (row > 0).sum().to(m.dtype).clamp(min=1.0)
    if loss_agg_mode == "seq-mean-token-sum":
        return m / n_seq
    return m / row.clamp(min=1.0)[:, None] / n_seq  # seq-mean-token-mean


def aggregate_loss(per_token: Tensor, mask: Tensor, loss_agg_mode: str = "token-mean",
                   norm_length: int | None = None) -> Tensor:
    """Aggregate a [B, T] per-token loss under ``mask`` [B, T]; masked entries never contribute (even NaN)."""
    w = aggregation_weights(mask, loss_agg_mode, per_token.dtype, norm_length)
    return (torch.where(w != 0, per_token, torch.zeros_like(per_token)) * w).sum()
