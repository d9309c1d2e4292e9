"""The SDPO loss written as the formula (paper Sec. 3; reference lasgroup/SDPO ``compute_self_distillation_loss``).

This is the specification the memory-lean kernels implement (``sdpo.losses.chunked``, ``sdpo.losses.hidden``)
and the oracle their tests compare against: full [B, T, V] log-softmax tensors and plain autograd, so run it in
float64 on small inputs. Shapes: B sequences, T response positions, V vocabulary entries; logits are aligned to
response positions (position t predicts response_ids[:, t]), and every response id is inside the vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdpo.config import SelfDistillationConfig

#: Upper clamp of the top-k log-mass before forming the tail bucket (reference value).
TAIL_LOG_MASS_MAX = -1e-7
#: Clamp of the log importance ratio (reference value).
LOG_RATIO_CLAMP = 20.0


def aggregate_reference(per_token: Tensor, mask: Tensor, loss_agg_mode: str,
                        norm_length: int | None = None) -> Tensor:
    """One loss from per-token losses l [B, T] under mask m [B, T] (the modes of ``sdpo.losses.aggregation``):
    token-mean Σ m·l / Σ m; seq-mean-token-sum: the mean over active sequences (Σ_t m > 0) of Σ_t m·l;
    seq-mean-token-mean: the mean over active sequences of Σ_t m·l / Σ_t m; seq-mean-token-sum-norm: Σ m·l / L
    (L = norm_length, default T); seq-mean-token-mean-all: the mean over all B sequences of Σ_t m·l / Σ_t m,
    inactive ones counting as 0. Every denominator is at least 1."""
    seq_sum, seq_len = (per_token * mask).sum(-1), mask.sum(-1)
    if loss_agg_mode == "token-mean":
        return seq_sum.sum() / seq_len.sum().clamp(min=1.0)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        return seq_sum.sum() / (norm_length or mask.shape[-1])
    seq_mean = seq_sum / seq_len.clamp(min=1.0)
    if loss_agg_mode == "seq-mean-token-mean-all":
        return seq_mean.sum() / max(mask.shape[0], 1)
    active = (seq_len > 0).to(per_token.dtype)
    per_seq = seq_sum if loss_agg_mode == "seq-mean-token-sum" else seq_mean
    return (per_seq * active).sum() / active.sum().clamp(min=1.0)


def generalised_jsd(ls: Tensor, lt: Tensor, alpha: float) -> Tensor:
    """Divergence of student and teacher log-probs [..., K] -> [...]: α = 0 KL(teacher ‖ student) (forward),
    α = 1 KL(student ‖ teacher) (reverse), else (1 − α) KL(s ‖ M) + α KL(t ‖ M) with M = (1 − α) p_s + α p_t."""
    ps, pt = ls.exp(), lt.exp()
    if alpha == 0.0:
        return (pt * (lt - ls)).sum(-1)
    if alpha == 1.0:
        return (ps * (ls - lt)).sum(-1)
    m = torch.log((1 - alpha) * ps + alpha * pt)
    return (1 - alpha) * (ps * (ls - m)).sum(-1) + alpha * (pt * (lt - m)).sum(-1)


def sdpo_loss_reference(student_logits: Tensor, teacher_logits: Tensor, response_ids: Tensor,
                        response_mask: Tensor, cfg: SelfDistillationConfig, *, old_logprobs: Tensor | None = None,
                        sample_mask: Tensor | None = None, rollout_is_weights: Tensor | None = None) -> Tensor:
    """SDPO's self-distillation loss, the arguments and the value of ``sdpo.losses.sdpo_loss`` (without metrics).

    student_logits, teacher_logits: [B, T, V] (no gradient flows into the teacher); response_ids: [B, T];
    response_mask: [B, T]; old_logprobs: [B, T] (with ``cfg.is_clip``); sample_mask: [B]; rollout_is_weights:
    [B, T]. Per token t, with p = softmax(logits / cfg.temperature) of each side:
      logit mode: the divergence ``generalised_jsd`` over the support: the whole vocabulary, or the student's
        top-k tokens (true log-probs of both sides) plus one tail bucket log(1 − Σ_k p) each (``add_tail``), or
        renormalised over the k;
      token mode: (log p_s(y_t) − log p_t(y_t)).detach() · log p_s(y_t), whose gradient is the sampled-token one;
    times the detached importance ratio min(exp(log p_s(y_t) − old_t), is_clip) and the rollout weights, then
    aggregated under response_mask · sample_mask by ``aggregate_reference`` (``cfg.loss_agg_mode``).
    """
    s, t = student_logits / cfg.temperature, teacher_logits.detach() / cfg.temperature
    ls_full, lt_full = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    y = response_ids[..., None]
    lp_y, lt_y = ls_full.gather(-1, y).squeeze(-1), lt_full.gather(-1, y).squeeze(-1)
    if cfg.mode == "token":
        per_token = (lp_y - lt_y).detach() * lp_y
    else:
        ls, lt = ls_full, lt_full
        if cfg.distillation_topk is not None:
            idx = torch.topk(s, cfg.distillation_topk, dim=-1).indices
            ls, lt = ls_full.gather(-1, idx), lt_full.gather(-1, idx)
            if cfg.distillation_add_tail:
                def tail(lp: Tensor) -> Tensor:
                    mass = torch.logsumexp(lp, -1, keepdim=True).clamp(max=TAIL_LOG_MASS_MAX)
                    return torch.cat([lp, torch.log(-torch.expm1(mass))], -1)
                ls, lt = tail(ls), tail(lt)
            else:
                ls, lt = ls - torch.logsumexp(ls, -1, keepdim=True), lt - torch.logsumexp(lt, -1, keepdim=True)
        per_token = generalised_jsd(ls, lt, cfg.alpha)
    if cfg.is_clip is not None:
        assert old_logprobs is not None, "cfg.is_clip needs old_logprobs"
        log_ratio = (lp_y.detach() - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        per_token = per_token * log_ratio.exp().clamp(max=cfg.is_clip)
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    mask = response_mask.to(per_token.dtype)
    if sample_mask is not None:
        mask = mask * sample_mask.to(per_token.dtype)[:, None]
    return aggregate_reference(per_token, mask, cfg.loss_agg_mode, cfg.loss_scale_factor)
