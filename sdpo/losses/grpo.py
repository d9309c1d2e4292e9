"""GRPO (paper Sec. 2), the baseline SDPO is compared with and mixed into by ``loss: hybrid``: group-normalised
outcome advantages and the PPO clipped surrogate with dual clip (verl ``compute_policy_loss`` semantics).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from sdpo.losses.aggregation import aggregate_loss
from sdpo.losses.reference import LOG_RATIO_CLAMP


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: int | None = None,
    sample_mask: Tensor | None = None,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate with dual clip (GRPO policy loss; verl ``compute_policy_loss`` semantics).

    logprobs, old_logprobs: [B, T] current / sampler log-probs of the response tokens; advantages: [B, T] or
    [B] (broadcast over T); response_mask: [B, T]; sample_mask: [B]; rollout_is_weights: [B, T] (detached).
    loss_scale_factor: seq-mean-token-sum-norm's constant divisor (default T).
    ratio = exp(clamp(logprobs - old, -20, 20)); l1 = -A ratio; l2 = -A clamp(ratio, 1 - low, 1 + high);
    l = max(l1, l2); for A < 0 additionally l = min(l, -A c) (dual clip, c > 1).
    Metrics: grpo/loss, grpo/clip_fraction (l2 > l1), grpo/clip_fraction_lower (dual clip active),
    grpo/approx_kl (mean old - new), grpo/ratio_mean.
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != response_mask.shape or logprobs.dim() != 2:
        raise ValueError(f"logprobs, old_logprobs and response_mask must all be [B, T]; got "
                         f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(response_mask.shape)}")
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (dual clip), got {clip_ratio_c!r}")
    if clip_ratio_low < 0 or clip_ratio_high < 0:
        raise ValueError(f"clip ratios must be >= 0, got low={clip_ratio_low!r}, high={clip_ratio_high!r}")
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    if advantages.shape != logprobs.shape:
        raise ValueError(f"advantages must be [B] or [B, T], got {tuple(advantages.shape)}")
    dtype = logprobs.dtype
    mask = response_mask.to(dtype)
    if sample_mask is not None:
        mask = mask * sample_mask.to(dtype)[:, None]
    adv = advantages.detach().to(dtype)
    log_ratio = (logprobs - old_logprobs.detach().to(dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    l1 = -adv * ratio
    l2 = -adv * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clipped = torch.maximum(l1, l2)
    l3 = -adv * clip_ratio_c
    per_token = torch.where(adv < 0, torch.minimum(clipped, l3), clipped)
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights.detach().to(dtype)
    loss = aggregate_loss(per_token, mask, loss_agg_mode, loss_scale_factor)

    active = mask != 0
    n = max(int(active.sum()), 1)

    def mean(x: Tensor) -> float:
        return float(torch.where(active, x.detach().to(dtype), torch.zeros((), dtype=dtype)).sum() / n)

    metrics = {
        "grpo/loss": float(loss.detach()),
        "grpo/clip_fraction": mean((l2 > l1).to(dtype)),
        "grpo/clip_fraction_lower": mean(((clipped > l3) & (adv < 0)).to(dtype)),
        "grpo/approx_kl": mean(-log_ratio),
        "grpo/ratio_mean": mean(ratio),
    }
    return loss, metrics


def group_advantages(rewards: Tensor, group_ids: Tensor | Sequence[Hashable], norm_by_std: bool = True,
                     eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantages (paper Sec. 2): reward minus its group's mean, over (std + eps) when norm_by_std.

    rewards: [N]; group_ids: [N] tensor or a sequence of hashable ids (e.g. prompt uids). The std is the
    unbiased sample std (as verl). Members of single-sample groups get advantage 0 (no baseline exists;
    verl would leave their raw reward). Returns [N] in rewards' float dtype (float32 for integer rewards).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(rewards.shape)}")
    n = rewards.shape[0]
    if len(group_ids) != n:
        raise ValueError(f"group_ids has {len(group_ids)} entries for {n} rewards")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    if n == 0:
        return torch.zeros(0, dtype=out_dtype, device=rewards.device)
    if isinstance(group_ids, Tensor):
        inverse = torch.unique(group_ids.reshape(-1), return_inverse=True)[1].to(rewards.device)
    else:
        first: dict[Hashable, int] = {}
        inverse = torch.tensor([first.setdefault(g, len(first)) for g in group_ids], device=rewards.device)
    r = rewards.to(torch.float64)
    n_groups = int(inverse.max()) + 1
    count = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, inverse, r) / count
    centred = r - mean[inverse]
    adv = centred
    if norm_by_std:
        sq = torch.zeros_like(count).index_add_(0, inverse, centred * centred)
        std = (sq / (count - 1).clamp(min=1)).sqrt()
        adv = centred / (std[inverse] + eps)
    adv = torch.where(count[inverse] > 1, adv, torch.zeros_like(adv))
    return adv.to(out_dtype)
