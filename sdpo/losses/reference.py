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


def sdpo_per_token_reference(student_logits: Tensor, teacher_logits: Tensor, response_ids: Tensor,
                             cfg: SelfDistillationConfig, *, old_logprobs: Tensor | None = None,
                             rollout_is_weights: Tensor | None = None) -> Tensor:
    """SDPO's per-token loss [B, T] before aggregation (``sdpo_loss_reference``'s terms: the divergence or the
    token-mode term, times the clipped IS ratio and the rollout weights)."""
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
    return per_token


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
    per_token = sdpo_per_token_reference(student_logits, teacher_logits, response_ids, cfg,
                                         old_logprobs=old_logprobs, rollout_is_weights=rollout_is_weights)
    mask = response_mask.to(per_token.dtype)
    if sample_mask is not None:
        mask = mask * sample_mask.to(per_token.dtype)[:, None]
    return aggregate_reference(per_token, mask, cfg.loss_agg_mode, cfg.loss_scale_factor)


# ---------------------------------------------------------------------------------------------------------
# The family (``sdpo.losses.family``) written as the papers' formulas
# ---------------------------------------------------------------------------------------------------------

def _logp(logits: Tensor, ids: Tensor, temperature: float) -> Tensor:
    return torch.log_softmax(logits / temperature, -1).gather(-1, ids[..., None]).squeeze(-1)


def ppo_per_token_reference(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float,
                            clip_high: float, clip_c: float) -> Tensor:
    """The dual-clip PPO surrogate per token [B, T]: max(−A r, −A clip(r, 1 − low, 1 + high)), and for A < 0 its
    min with −A c (r = exp(logprobs − old), advantages [B])."""
    a = advantages[:, None].to(logprobs.dtype)
    r = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    clipped = torch.maximum(-a * r, -a * r.clamp(1 - clip_low, 1 + clip_high))
    return torch.where(a < 0, torch.minimum(clipped, -a * clip_c), clipped)


def srpo_loss_reference(student_logits: Tensor, teacher_logits: Tensor, response_ids: Tensor,
                        response_mask: Tensor, rewards: Tensor, teacher_available: Tensor, advantages: Tensor,
                        old_logprobs: Tensor, cfg: SelfDistillationConfig, *, entropy_beta: float = 1.0,
                        success_threshold: float = 1.0, temperature: float = 1.0, clip_low: float = 0.2,
                        clip_high: float = 0.2, clip_c: float = 3.0) -> Tensor:
    """SRPO (arXiv 2604.02288) on one batch, from the paper's formulas: z_SDPO = (1 − c) m (Sec. 3.1);
    H_{i,t} = −Σ_v q log q of the teacher at cfg.temperature, w̃ = exp(−β H), w = w̃ / mean_{Ω_sdpo} w̃ (Sec. 3.2);
    L_final = (Σ z^GRPO ℓ^GRPO + Σ z^SDPO w ℓ^SDPO) / (Σ z^GRPO + Σ z^SDPO) over valid tokens (Sec. 3.3), the
    normalisation generalised to ``cfg.loss_agg_mode``. ℓ^GRPO: ``ppo_per_token_reference`` at
    ``temperature``; ℓ^SDPO: ``sdpo_per_token_reference`` (old_logprobs also serve the IS clip)."""
    route = (1.0 - (rewards >= success_threshold).to(student_logits.dtype)) * teacher_available.to(student_logits.dtype)
    mask = response_mask.to(student_logits.dtype)
    q = torch.log_softmax(teacher_logits.detach() / cfg.temperature, -1)
    entropy = -(q.exp() * q).sum(-1)
    omega = mask * route[:, None]
    raw = torch.exp(-entropy_beta * entropy) * omega
    w = raw / (raw.sum() / omega.sum()) if float(omega.sum()) > 0 else raw
    l_sd = sdpo_per_token_reference(student_logits, teacher_logits, response_ids, cfg,
                                    old_logprobs=old_logprobs if cfg.is_clip is not None else None)
    l_pg = ppo_per_token_reference(_logp(student_logits, response_ids, temperature), old_logprobs, advantages,
                                   clip_low, clip_high, clip_c)
    per_token = (1.0 - route)[:, None] * l_pg + route[:, None] * w * l_sd
    return aggregate_reference(per_token, mask, cfg.loss_agg_mode, cfg.loss_scale_factor)


def sc_sdpo_loss_reference(student_logits: Tensor, teacher_logits: Tensor, response_ids: Tensor,
                           response_mask: Tensor, rewards: Tensor, group_ids: list, sample_mask: Tensor,
                           cfg: SelfDistillationConfig, *, success_threshold: float = 1.0,
                           old_logprobs: Tensor | None = None) -> Tensor:
    """SC-SDPO (arXiv 2605.27765) on one batch, from the formula: p̂_q = the pass rate of question q's group,
    s_q = [p̂_q (1 − p̂_q)]^{1/2}, w_q = s_q / mean_{q ∈ Q} s_q over the questions with a distilled sample
    (sample_mask), and each question's SDPO per-token terms weighted by its w_q, aggregated as SDPO."""
    groups = sorted(set(group_ids), key=group_ids.index)
    p = {g: sum(float(r) >= success_threshold for r, h in zip(rewards.tolist(), group_ids, strict=True) if h == g)
         / sum(1 for h in group_ids if h == g) for g in groups}
    s = {g: (p[g] * (1.0 - p[g])) ** 0.5 for g in groups}
    active = {g for g, m in zip(group_ids, sample_mask.tolist(), strict=True) if m}
    norm = sum(s[g] for g in active) / len(active) if active else 0.0
    w = torch.tensor([s[g] / norm if norm > 0 else 0.0 for g in group_ids], dtype=student_logits.dtype)
    per_token = sdpo_per_token_reference(student_logits, teacher_logits, response_ids, cfg,
                                         old_logprobs=old_logprobs) * w[:, None]
    mask = response_mask.to(per_token.dtype) * sample_mask.to(per_token.dtype)[:, None]
    return aggregate_reference(per_token, mask, cfg.loss_agg_mode, cfg.loss_scale_factor)


def sdpg_loss_reference(student_logits: Tensor, teacher_logits: Tensor, response_ids: Tensor,
                        response_mask: Tensor, rewards: Tensor, group_ids: list, teacher_available: Tensor,
                        old_logprobs: Tensor, ref_logprobs: Tensor, cfg: SelfDistillationConfig, *, beta: float,
                        kl_coef: float, kl_estimator: str, temperature: float = 1.0, eps: float = 1e-6,
                        clip_low: float = 0.2, clip_high: float = 0.2, clip_c: float = 3.0) -> Tensor:
    """SDPG (arXiv 2606.04036) on one batch, from the formulas: A = (R − μ_G)/(σ_G + ε) (Eq. 2.1, unbiased std;
    0 for one-sample groups), m = 1[A > 0] · teacher_available (Eq. 3.5), ℓ^OPD = Σ_a p log(p / q) over the full
    vocabulary at cfg.temperature (Eq. 3.2), times the clipped IS ratio; f_K: "urkl" ½ log² (π_θ/π_ref), "ufkl"
    π_ref/π_θ + log(π_θ/π_ref), "k3" π_ref/π_θ − log(π_ref/π_θ) − 1 (Sec. 3.4), times ρ = π_θ/π_old (App. A.3);
    L = Σ_{i,t} [ℓ^clip + β m ℓ^OPD + α ρ f_K] / Σ_i |y_i| (Eq. 3.1), normalised as ``cfg.loss_agg_mode``."""
    dtype = student_logits.dtype
    r = rewards.to(dtype)
    adv = torch.zeros_like(r)
    for g in set(group_ids):
        idx = torch.tensor([i for i, h in enumerate(group_ids) if h == g])
        if len(idx) > 1:
            adv[idx] = (r[idx] - r[idx].mean()) / (r[idx].std() + eps)
    gate = (adv > 0).to(dtype) * teacher_available.to(dtype)
    lp = _logp(student_logits, response_ids, temperature)
    l_out = ppo_per_token_reference(lp, old_logprobs, adv, clip_low, clip_high, clip_c)
    ls = torch.log_softmax(student_logits / cfg.temperature, -1)
    lt = torch.log_softmax(teacher_logits.detach() / cfg.temperature, -1)
    l_opd = (ls.exp() * (ls - lt)).sum(-1)
    if cfg.is_clip is not None:
        lp_sd = ls.gather(-1, response_ids[..., None]).squeeze(-1)
        l_opd = l_opd * torch.exp((lp_sd.detach() - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
                                  ).clamp(max=cfg.is_clip)
    log_w = lp - ref_logprobs
    f_k = {"urkl": 0.5 * log_w ** 2, "ufkl": torch.exp(-log_w) + log_w,
           "k3": torch.exp(-log_w) + log_w - 1.0}[kl_estimator]
    rho = torch.exp(lp.detach() - old_logprobs)
    per_token = l_out + beta * gate[:, None] * l_opd + kl_coef * rho * f_k
    return aggregate_reference(per_token, response_mask.to(dtype), cfg.loss_agg_mode, cfg.loss_scale_factor)
