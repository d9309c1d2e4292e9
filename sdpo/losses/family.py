"""The SDPO family: SRPO, SC-SDPO and SDPG, and the KL penalty to the initial (reference) policy, as pure tensor
functions built on the memory-lean kernels (``sdpo.losses.chunked``, ``sdpo.losses.hidden``).

- SRPO, "Unifying Group-Relative and Self-Distillation Policy Optimization via Sample Routing" (arXiv 2604.02288):
  ``srpo_routes`` (Sec. 3.1), ``srpo_entropy_weights`` (Sec. 3.2), ``srpo_loss`` (Sec. 3.3, L_final).
- SC-SDPO, "Restoring the Sweet Spot: Pass-Rate Weighted Self-Distillation" (arXiv 2605.27765):
  ``sc_sdpo_weights`` (each question's weight sqrt(p̂(1 − p̂)), batch-adaptive normalisation) and
  ``sc_sdpo_loss``.
- SDPG, "Self-Distilled Policy Gradient" (arXiv 2606.04036): ``sdpg_beta`` (Sec. 3.5.2), ``sdpg_loss``
  (Eq. 3.1 with Eq. 2.1, 3.2, 3.5 and the Sec. 3.4 surrogates, off-policy form of App. A.3).
- ``reference_kl_loss``: a KL penalty to the initial policy on the sampled tokens (TRL's ``beta``, SDPG's α·L_K).

Every loss here that combines terms shares one normaliser, the aggregation weights of the whole response mask
(``sdpo.losses.aggregation``), as SRPO's L_final and SDPG's 1 / Σ_i |y_i| do: a term that covers only some
samples (SRPO's routed branches, SDPG's gated OPD) is scaled by its share ``term_share`` of those weights rather
than normalised by its own tokens. Per-sample and per-token weights that are normalised over the batch (SRPO's
entropy weights, SC-SDPO's pass-rate weights) are computed over the whole batch before it is split into
micro-batches or ranks (``sdpo.update``), and enter these functions as given tensors, so that splits do not
change them.

Shapes: B sequences, T response positions, V vocabulary entries, H hidden size. Logits (or hidden states) are
aligned to response positions: position ``t`` predicts ``response_ids[:, t]``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from sdpo.config import SelfDistillationConfig
from sdpo.losses.aggregation import aggregate_loss, aggregation_weights
from sdpo.losses.chunked import CHUNK_BYTES, _compute_dtype, _rowdot, sdpo_loss, token_logprobs
from sdpo.losses.grpo import grpo_loss
from sdpo.losses.hidden import HIDDEN_CHUNK_ROWS, sdpo_loss_from_hidden, token_logprobs_from_hidden
from sdpo.losses.reference import LOG_RATIO_CLAMP

KL_ESTIMATORS = ("k3", "urkl", "ufkl")


# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------

def term_share(mask: Tensor, rows: Tensor, loss_agg_mode: str, norm_length: int | None = None) -> float:
    """The factor c that turns a loss over the rows ``rows`` [B] (0/1), aggregated under its own mask
    ``mask * rows[:, None]``, into its share of the loss aggregated under the whole ``mask`` [B, T]:
    aggregate(l, mask · rows) · c = Σ aggregation_weights(mask) · rows · l for any per-token l. In every
    ``loss_agg_mode`` the two weightings differ on those rows by one constant (token-mean: N_rows / N), so c is
    a number: Σ w(mask)·rows / Σ w(mask·rows); 0 when the rows hold no token."""
    sub = mask * rows.to(mask.dtype)[:, None]
    own = float(aggregation_weights(sub, loss_agg_mode, torch.float64, norm_length).sum())
    if own == 0.0:
        return 0.0
    whole = aggregation_weights(mask, loss_agg_mode, torch.float64, norm_length)
    return float((whole * rows.to(torch.float64)[:, None]).sum()) / own


@torch.no_grad()
def _chunk_entropy(x: Tensor, temperature: float) -> Tensor:
    """Entropy of softmax(x / temperature) per row of x [c, V] -> [c] (compute dtype), with the kernel's
    operations: p = softmax(x), lse = max(x) - log(max(p)), H = lse - Σ p·x."""
    cd = _compute_dtype(x.dtype)
    x = x.to(cd)
    if temperature != 1.0:
        x = x / temperature
    p = torch.softmax(x, dim=-1)
    lse = x.amax(dim=-1) - torch.log(p.amax(dim=-1))
    return lse - _rowdot(p, x)


@torch.no_grad()
def token_entropy(logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0, *,
                  chunk_size: int | None = None) -> Tensor:
    """Entropy H_t = −Σ_v q_t(v) log q_t(v) of q_t = softmax(logits[:, t] / temperature) over the full vocabulary,
    logits [B, T, V] -> [B, T] (float32; float64 for float64 logits), 0 where ``mask`` [B, T] is 0. No gradient.
    Chunked over positions like ``sdpo_loss``: no [B, T, V] temporary (two [chunk, V] buffers at a time)."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got {tuple(logits.shape)}")
    B, T, V = logits.shape
    cd = _compute_dtype(logits.dtype)
    out = torch.zeros((B, T), dtype=cd, device=logits.device)
    rows = chunk_size or max(1, CHUNK_BYTES // (4 * V))
    active = torch.ones(B, T, dtype=torch.bool) if mask is None else (mask.detach().cpu() != 0)
    for b in range(B):
        for t0 in range(0, T, rows):
            t1 = min(T, t0 + rows)
            if bool(active[b, t0:t1].any()):
                out[b, t0:t1] = _chunk_entropy(logits[b, t0:t1], temperature)
    if mask is not None:
        out = out * (mask.to(out.device) != 0)
    return out


@torch.no_grad()
def token_entropy_from_hidden(hidden: Tensor, lm_head_weight: Tensor, mask: Tensor | None = None,
                              temperature: float = 1.0, *, chunk_size: int = HIDDEN_CHUNK_ROWS) -> Tensor:
    """``token_entropy(hidden @ lm_head_weight.T, mask, temperature)`` without holding [B, T, V] logits:
    hidden [B, T, H], lm_head_weight [V, H] -> [B, T]. Only positions where ``mask`` is set are evaluated."""
    if hidden.dim() != 3 or lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"hidden must be [B, T, H] and lm_head_weight [V, H]; got {tuple(hidden.shape)}, "
                         f"{tuple(lm_head_weight.shape)}")
    B, T, _ = hidden.shape
    cd = _compute_dtype(hidden.dtype)
    out = torch.zeros((B, T), dtype=cd, device=hidden.device)
    sel = torch.ones(B, T, dtype=torch.bool, device=hidden.device) if mask is None else (mask != 0)
    pos_b, pos_t = torch.nonzero(sel, as_tuple=True)
    for r0 in range(0, pos_b.numel(), chunk_size):
        pb, pt = pos_b[r0:r0 + chunk_size], pos_t[r0:r0 + chunk_size]
        out[pb, pt] = _chunk_entropy(hidden[pb, pt] @ lm_head_weight.T, temperature).to(cd)
    return out


def _student_logprobs(student: Tensor, head_weight: Tensor | None, ids: Tensor, temperature: float) -> Tensor:
    if head_weight is not None:
        return token_logprobs_from_hidden(student, head_weight, ids, temperature)
    return token_logprobs(student, ids, temperature)


def _distill(student: Tensor, teacher: Tensor, head_weight: Tensor | None, teacher_head_weight: Tensor | None,
             ids: Tensor, mask: Tensor, sd: SelfDistillationConfig, **kw) -> tuple[Tensor, dict[str, float]]:
    """SDPO's kernel on logits, or on hidden states with the LM-head weight(s) (fused path)."""
    if head_weight is not None:
        return sdpo_loss_from_hidden(student, teacher, head_weight, ids, mask, sd,
                                     teacher_lm_head_weight=teacher_head_weight, **kw)
    return sdpo_loss(student, teacher, ids, mask, sd, **kw)


def _weights(*ws: Tensor | None) -> Tensor | None:
    out = None
    for w in ws:
        if w is not None:
            out = w if out is None else out * w
    return out


# --------------------------------------------------------------------------------------------------
# KL to the initial policy (TRL's beta; SDPG's α·L_K)
# --------------------------------------------------------------------------------------------------

def reference_kl_terms(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token KL surrogate f(π_θ(y_t), π_ref(y_t)) on the sampled tokens [B, T] -> [B, T], log r = log π_θ −
    log π_ref (differentiable through ``logprobs``):
      "k3": π_ref/π_θ − log(π_ref/π_θ) − 1, the GRPO / TRL estimator of KL(π_θ ‖ π_ref) (its value ≥ 0);
      "urkl": ½ log² r, SDPG's unnormalised reverse KL surrogate (arXiv 2606.04036, Sec. 3.4, L_SDPG−URKL);
      "ufkl": π_ref/π_θ + log r, SDPG's unnormalised forward KL surrogate (Sec. 3.4, L_SDPG−UFKL); k3 + 1, so
        the same gradient as "k3".
    log r is clamped to ±20 (as the importance ratios)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator={estimator!r}; allowed values are {', '.join(KL_ESTIMATORS)}")
    log_r = (logprobs - ref_logprobs.detach().to(logprobs.dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if estimator == "urkl":
        return 0.5 * log_r * log_r
    if estimator == "ufkl":
        return torch.exp(-log_r) + log_r
    return torch.exp(-log_r) + log_r - 1.0


def reference_kl_loss(logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor, *, estimator: str = "k3",
                      old_logprobs: Tensor | None = None, loss_agg_mode: str = "token-mean",
                      loss_scale_factor: int | None = None) -> tuple[Tensor, dict[str, float]]:
    """The KL penalty to the reference (initial) policy, aggregated like the policy loss:
    Σ w · SG[ρ_t] · f(π_θ(y_t), π_ref(y_t)) with w the aggregation weights of ``response_mask`` [B, T],
    f = ``reference_kl_terms`` and ρ_t = exp(log π_θ(y_t) − old_t) the detached importance ratio to the sampling
    policy (SDPG App. A.3; exactly 1 on an on-policy step, where this is TRL's unweighted ``beta`` term);
    ``old_logprobs`` None means ρ = 1. logprobs, ref_logprobs, old_logprobs: [B, T].
    Metrics: ref_kl/estimate (mean of f over the tokens), ref_kl/log_ratio_mean (mean log π_θ/π_ref, a sample
    estimate of KL(π_θ ‖ π_ref))."""
    if logprobs.shape != ref_logprobs.shape or logprobs.shape != response_mask.shape or logprobs.dim() != 2:
        raise ValueError(f"logprobs, ref_logprobs and response_mask must be [B, T]; got {tuple(logprobs.shape)}, "
                         f"{tuple(ref_logprobs.shape)}, {tuple(response_mask.shape)}")
    per_token = reference_kl_terms(logprobs, ref_logprobs, estimator)
    if old_logprobs is not None:
        log_rho = (logprobs.detach() - old_logprobs.to(logprobs.dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        per_token = per_token * log_rho.exp()
    loss = aggregate_loss(per_token, response_mask.to(logprobs.dtype), loss_agg_mode, loss_scale_factor)
    active = response_mask != 0
    n = max(int(active.sum()), 1)
    est = reference_kl_terms(logprobs.detach(), ref_logprobs, estimator)
    log_r = (logprobs.detach() - ref_logprobs.to(logprobs.dtype))
    return loss, {"ref_kl/estimate": float(torch.where(active, est, 0.0).sum() / n),
                  "ref_kl/log_ratio_mean": float(torch.where(active, log_r, 0.0).sum() / n)}


# --------------------------------------------------------------------------------------------------
# SRPO
# --------------------------------------------------------------------------------------------------

def srpo_routes(rewards: Tensor, teacher_available: Tensor, success_threshold: float = 1.0) -> Tensor:
    """SRPO's routing mask (arXiv 2604.02288, Sec. 3.1): z_SDPO = (1 − c_i) · m_i with c_i = 1[y_i is correct]
    (reward ≥ ``success_threshold``) and m_i = 1[teacher information is available for y_i]; z_GRPO = 1 − z_SDPO.
    rewards, teacher_available: [N] -> z_SDPO [N] in rewards' float dtype (float32 for integer rewards)."""
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    correct = (rewards >= success_threshold).to(dtype)
    return (1.0 - correct) * (teacher_available != 0).to(dtype)


def srpo_entropy_weights(teacher_entropy: Tensor, sdpo_mask: Tensor, beta: float = 1.0, *,
                         normaliser: float | None = None) -> tuple[Tensor, float]:
    """SRPO's entropy-aware dynamic weights (arXiv 2604.02288, Sec. 3.2): w̃_{i,t} = exp(−β H_{i,t}) with H the
    self-teacher's entropy, and w_{i,t} = w̃_{i,t} / ((1/|Ω_sdpo|) Σ_{(j,s) ∈ Ω_sdpo} w̃_{j,s}), Ω_sdpo the valid
    tokens routed to SDPO (``sdpo_mask`` [B, T] != 0). teacher_entropy: [B, T].

    normaliser: the mean of w̃ over Ω_sdpo when Ω_sdpo is larger than these rows (the whole batch, over ranks:
    ``sdpo.update`` passes it so that the weights do not depend on how the batch is split); None = computed here.
    Returns (w [B, T], 0 outside Ω_sdpo; the normaliser used, 0.0 when Ω_sdpo is empty)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    active = sdpo_mask != 0
    raw = torch.where(active, torch.exp(-beta * teacher_entropy.detach()), torch.zeros_like(teacher_entropy))
    if normaliser is None:
        n = int(active.sum())
        normaliser = float(raw.sum()) / n if n else 0.0
    if normaliser <= 0.0:
        return torch.zeros_like(raw), 0.0
    return raw / normaliser, float(normaliser)


def srpo_loss(
    student: Tensor, teacher: Tensor, response_ids: Tensor, response_mask: Tensor, sdpo_route: Tensor,
    advantages: Tensor, old_logprobs: Tensor, cfg: SelfDistillationConfig, *,
    entropy_weights: Tensor | None = None, entropy_beta: float = 1.0, temperature: float = 1.0,
    head_weight: Tensor | None = None, teacher_head_weight: Tensor | None = None,
    old_logprobs_sd: Tensor | None = None, rollout_is_weights: Tensor | None = None,
    clip_ratio_low: float = 0.2, clip_ratio_high: float = 0.2, clip_ratio_c: float = 3.0,
) -> tuple[Tensor, dict[str, float]]:
    """SRPO's objective (arXiv 2604.02288, Sec. 3.3):
    L_final = (Σ_{i,t} z_i^GRPO ℓ_{i,t}^GRPO + Σ_{i,t} z_i^SDPO w_{i,t} ℓ_{i,t}^SDPO) / (Σ z^GRPO + Σ z^SDPO),
    the sums over valid response tokens, generalised to ``cfg.loss_agg_mode`` (token-mean is the paper's: each
    branch weighs by the tokens it covers).

    student, teacher: logits [B, T, V], or hidden states [B, T, H] / [B, T, H_t] with ``head_weight`` [V, H]
    (and ``teacher_head_weight`` [V, H_t], default head_weight) for the fused LM-head path. response_ids,
    response_mask: [B, T]. sdpo_route: [B] z^SDPO (``srpo_routes``). advantages: [B] GRPO's (Eq. of Sec. 3.1).
    old_logprobs: [B, T] the sampling policy's log-probs at ``temperature`` (GRPO's ratio; at
    cfg.temperature for the IS clip: ``old_logprobs_sd``, default the same). ℓ^GRPO: ``grpo_loss``'s clipped
    surrogate; ℓ^SDPO: ``sdpo_loss``'s per-token divergence under ``cfg``; w: ``entropy_weights`` [B, T] as
    computed over the whole batch, or None to compute them here from the teacher's entropy at
    cfg.temperature (``srpo_entropy_weights`` with β = ``entropy_beta``).
    Metrics: the two losses' own (sdpo/*, grpo/*) and srpo/route_sdpo_fraction, srpo/route_grpo_fraction
    (samples), srpo/entropy_weight_mean and srpo/entropy_weight_max (over the SDPO tokens).
    """
    mask = response_mask.to(torch.float64 if student.dtype == torch.float64 else torch.float32)
    route = sdpo_route.to(mask.dtype)
    if entropy_weights is None:
        sel = mask * route[:, None]
        if head_weight is not None:
            ent = token_entropy_from_hidden(teacher, teacher_head_weight if teacher_head_weight is not None
                                            else head_weight, sel, cfg.temperature)
        else:
            ent = token_entropy(teacher, sel, cfg.temperature)
        entropy_weights, _ = srpo_entropy_weights(ent, sel, entropy_beta)
    old_sd = old_logprobs if old_logprobs_sd is None else old_logprobs_sd
    l_sd, m_sd = _distill(student, teacher, head_weight, teacher_head_weight, response_ids, response_mask, cfg,
                          old_logprobs=old_sd if cfg.is_clip is not None else None, sample_mask=route,
                          rollout_is_weights=_weights(entropy_weights.to(mask.dtype), rollout_is_weights))
    lp = _student_logprobs(student, head_weight, response_ids, temperature)
    l_pg, m_pg = grpo_loss(lp, old_logprobs, advantages, response_mask, clip_ratio_low=clip_ratio_low,
                           clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c,
                           loss_agg_mode=cfg.loss_agg_mode, loss_scale_factor=cfg.loss_scale_factor,
                           sample_mask=1.0 - route, rollout_is_weights=rollout_is_weights)
    c_sd = term_share(mask, route, cfg.loss_agg_mode, cfg.loss_scale_factor)
    c_pg = term_share(mask, 1.0 - route, cfg.loss_agg_mode, cfg.loss_scale_factor)
    loss = c_sd * l_sd + c_pg * l_pg
    sel = (mask * route[:, None]) != 0
    w = entropy_weights.detach()
    n_sel = int(sel.sum())
    metrics = {**m_sd, **m_pg,
               "srpo/route_sdpo_fraction": float(route.mean()) if route.numel() else 0.0,
               "srpo/route_grpo_fraction": float((1.0 - route).mean()) if route.numel() else 0.0,
               "srpo/entropy_weight_mean": float(w[sel].sum() / n_sel) if n_sel else 0.0,
               "srpo/entropy_weight_max": float(w[sel].max()) if n_sel else 0.0}
    return loss, metrics


# --------------------------------------------------------------------------------------------------
# SC-SDPO
# --------------------------------------------------------------------------------------------------

def pass_rates(rewards: Tensor, group_ids: Tensor | Sequence[Hashable], success_threshold: float = 1.0) -> Tensor:
    """p̂ of each sample's group: the fraction of the group's rollouts with reward ≥ ``success_threshold``.
    rewards: [N]; group_ids: [N] -> [N] float64."""
    if isinstance(group_ids, Tensor):
        inverse = torch.unique(group_ids.reshape(-1), return_inverse=True)[1]
    else:
        first: dict[Hashable, int] = {}
        inverse = torch.tensor([first.setdefault(g, len(first)) for g in group_ids], dtype=torch.long)
    if inverse.numel() != rewards.numel():
        raise ValueError(f"group_ids has {inverse.numel()} entries for {rewards.numel()} rewards")
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    ok = (rewards.to(torch.float64).cpu() >= success_threshold).to(torch.float64)
    g = int(inverse.max()) + 1
    count = torch.zeros(g, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ok))
    hits = torch.zeros(g, dtype=torch.float64).index_add_(0, inverse, ok)
    return (hits / count)[inverse]


def sc_sdpo_scales(p_hat: Tensor) -> Tensor:
    """The unnormalised SC-SDPO weight of each question, [p̂ (1 − p̂)]^{1/2} (arXiv 2605.27765: the residual
    per-question scale of GRPO's normalised advantage), elementwise."""
    p = p_hat.to(torch.float64).clamp(0.0, 1.0)
    return torch.sqrt(p * (1.0 - p))


def sc_sdpo_weights(rewards: Tensor, group_ids: Tensor | Sequence[Hashable], distill_mask: Tensor,
                    success_threshold: float = 1.0, *, normaliser: float | None = None) -> tuple[Tensor, float]:
    """SC-SDPO's per-sample weights (arXiv 2605.27765): each sample gets its question's
    s_q = [p̂_q (1 − p̂_q)]^{1/2} (``pass_rates`` of its group), normalised batch-adaptively:
    w_q = s_q / mean_{q' ∈ Q} s_{q'}, Q the batch's questions with at least one distilled sample
    (``distill_mask`` [N] != 0), so that the distilled questions' weights average 1 and the loss keeps SDPO's
    scale whatever the batch's difficulty. Questions with p̂ ∈ {0, 1} get weight 0.

    normaliser: mean_{q ∈ Q} s_q when Q is larger than these samples (the whole batch over ranks, from
    ``sdpo.update``); None = computed here. Returns (w [N] float64, the normaliser; all weights 0 when it is 0)."""
    p = pass_rates(rewards, group_ids, success_threshold)
    s = sc_sdpo_scales(p)
    if normaliser is None:
        total, count = sc_sdpo_normaliser_parts(s, group_ids, distill_mask)
        normaliser = total / count if count else 0.0
    if normaliser <= 0.0:
        return torch.zeros_like(s), 0.0
    return s / normaliser, float(normaliser)


def sc_sdpo_normaliser_parts(scales: Tensor, group_ids: Tensor | Sequence[Hashable],
                             distill_mask: Tensor) -> tuple[float, float]:
    """(Σ_{q ∈ Q} s_q, |Q|) over the questions with a distilled sample: additive over data-parallel ranks (whole
    groups per rank), so the batch's normaliser is the sum over ranks of the first over the sum of the second."""
    keys = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    seen: dict[Hashable, float] = {}
    for k, s, m in zip(keys, scales.tolist(), distill_mask.tolist(), strict=True):
        if m:
            seen[k] = s
    return float(sum(seen.values())), float(len(seen))


def sc_sdpo_loss(student: Tensor, teacher: Tensor, response_ids: Tensor, response_mask: Tensor,
                 cfg: SelfDistillationConfig, question_weights: Tensor, *, head_weight: Tensor | None = None,
                 teacher_head_weight: Tensor | None = None, old_logprobs: Tensor | None = None,
                 sample_mask: Tensor | None = None, rollout_is_weights: Tensor | None = None,
                 ) -> tuple[Tensor, dict[str, float]]:
    """SC-SDPO (arXiv 2605.27765): SDPO's loss with each question's per-token terms weighted by its w_q
    (``sc_sdpo_weights``): Σ agg_weights · w_q(i) · ℓ_{i,t}^SDPO, aggregated as ``cfg.loss_agg_mode`` under
    response_mask · sample_mask, i.e. ``sdpo_loss`` with w_q(i) folded into the per-token weights.
    student, teacher: logits [B, T, V] (or hidden states with ``head_weight``, the fused path);
    question_weights: [B]; the rest as ``sdpo_loss``. Metrics: sdpo/*, sc_sdpo/weight_mean (over distilled
    samples), sc_sdpo/zero_weight_fraction (distilled samples whose question has p̂ ∈ {0, 1})."""
    B, T = response_ids.shape
    qw = question_weights.detach().to(torch.float64 if student.dtype == torch.float64 else torch.float32)
    tw = qw[:, None].expand(B, T)
    loss, metrics = _distill(student, teacher, head_weight, teacher_head_weight, response_ids, response_mask, cfg,
                             old_logprobs=old_logprobs, sample_mask=sample_mask,
                             rollout_is_weights=_weights(tw, rollout_is_weights))
    dist = torch.ones(B, dtype=torch.bool) if sample_mask is None else (sample_mask.detach().cpu() != 0)
    dist = dist & (response_mask.detach().cpu().sum(-1) > 0)
    n = int(dist.sum())
    q = qw.detach().cpu()
    metrics["sc_sdpo/weight_mean"] = float(q[dist].sum() / n) if n else 0.0
    metrics["sc_sdpo/zero_weight_fraction"] = float((q[dist] == 0).sum() / n) if n else 0.0
    return loss, metrics


# --------------------------------------------------------------------------------------------------
# SDPG
# --------------------------------------------------------------------------------------------------

def sdpg_beta(beta_base: float, step: int | None, total_steps: int | None, warmup_steps: int, decay_steps: int,
              ) -> float:
    """SDPG's distillation coefficient (arXiv 2606.04036, Sec. 3.5.2):
    β(k) = β_base · min(1, k / T_warm) · min(1, (T − k) / T_decay) at training step k of T (a zero window is no
    warm-up / no decay). Without a step (test time) β = β_base."""
    if step is None or total_steps is None:
        return float(beta_base)
    warm = 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
    decay = 1.0 if decay_steps <= 0 else min(1.0, max(0.0, total_steps - step) / decay_steps)
    return float(beta_base) * warm * decay


def sdpg_distillation_config(cfg: SelfDistillationConfig) -> SelfDistillationConfig:
    """The distillation SDPG uses: the exact full-vocabulary student-to-teacher KL D_KL(p_t ‖ SG[q_t])
    (arXiv 2606.04036, Eq. 3.2): logit mode, no top-k (distillation_topk None), alpha 1 (reverse KL); the IS
    clip, temperature and aggregation of ``cfg``."""
    return replace(cfg, mode="logit", distillation_topk=None, alpha=1.0)


def sdpg_loss(
    student: Tensor, teacher: Tensor, response_ids: Tensor, response_mask: Tensor, advantages: Tensor,
    old_logprobs: Tensor, cfg: SelfDistillationConfig, *, opd_mask: Tensor, beta: float,
    ref_logprobs: Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "urkl",
    temperature: float = 1.0, head_weight: Tensor | None = None, teacher_head_weight: Tensor | None = None,
    old_logprobs_sd: Tensor | None = None, rollout_is_weights: Tensor | None = None,
    clip_ratio_low: float = 0.2, clip_ratio_high: float = 0.2, clip_ratio_c: float = 3.0,
) -> tuple[Tensor, dict[str, float]]:
    """SDPG's loss (arXiv 2606.04036, Eq. 3.1, in the one-step off-policy form of App. A.3):
    L = L_out + β(k) · L_OPD^+ + α · L_K, every term normalised by the same 1 / Σ_i |y_i| (here the aggregation
    weights of ``response_mask`` under ``cfg.loss_agg_mode``; token-mean is the paper's):
      L_out: the dual-clip PPO surrogate of the group-relative advantages A = (R − μ_G)/(σ_G + ε) (Eq. 2.1;
        ``advantages`` [B], computed with the std) — ``grpo_loss``;
      L_OPD^+ (Eq. 3.5): m_i · D_KL(p_{i,t} ‖ SG[q_{i,t}]) over the full vocabulary (Eq. 3.2,
        ``sdpg_distillation_config``), times the detached IS ratio as ``cfg.is_clip`` says; ``opd_mask`` [B] is
        m_i = 1[A_i > 0] times the availability of a teacher context (the positive-advantage gate);
      L_K: ``reference_kl_loss`` with ``kl_estimator`` ("urkl" ½ log² π_θ/π_ref, "ufkl" π_ref/π_θ + log π_θ/π_ref,
        Sec. 3.4) against ``ref_logprobs`` [B, T], weight α = ``kl_coef`` (skipped when 0).
    student, teacher: logits [B, T, V], or hidden states with ``head_weight`` (fused LM head). beta: β(k)
    (``sdpg_beta``). Metrics: grpo/*, sdpo/* of the OPD term, sdpg/beta, sdpg/gate_fraction (samples distilled),
    sdpg/opd_kl_mean, and with the KL term ref_kl/* and sdpg/ref_kl.
    """
    mask = response_mask.to(torch.float64 if student.dtype == torch.float64 else torch.float32)
    sd = sdpg_distillation_config(cfg)
    lp = _student_logprobs(student, head_weight, response_ids, temperature)
    l_out, metrics = grpo_loss(lp, old_logprobs, advantages, response_mask, clip_ratio_low=clip_ratio_low,
                               clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c,
                               loss_agg_mode=cfg.loss_agg_mode, loss_scale_factor=cfg.loss_scale_factor,
                               rollout_is_weights=rollout_is_weights)
    loss = l_out
    gate = opd_mask.to(mask.dtype)
    old_sd = old_logprobs if old_logprobs_sd is None else old_logprobs_sd
    l_opd, m_opd = _distill(student, teacher, head_weight, teacher_head_weight, response_ids, response_mask, sd,
                            old_logprobs=old_sd if sd.is_clip is not None else None, sample_mask=gate,
                            rollout_is_weights=rollout_is_weights)
    loss = loss + beta * term_share(mask, gate, sd.loss_agg_mode, sd.loss_scale_factor) * l_opd
    metrics.update(m_opd)
    metrics.update({"sdpg/beta": float(beta), "sdpg/gate_fraction": float(gate.mean()) if gate.numel() else 0.0,
                    "sdpg/opd_kl_mean": m_opd["sdpo/kl_mean"]})
    if kl_coef:
        if ref_logprobs is None:
            raise ValueError("sdpg_loss: kl_coef > 0 needs ref_logprobs (the reference policy's log-probs)")
        l_k, m_k = reference_kl_loss(lp, ref_logprobs, response_mask, estimator=kl_estimator,
                                     old_logprobs=old_logprobs, loss_agg_mode=cfg.loss_agg_mode,
                                     loss_scale_factor=cfg.loss_scale_factor)
        loss = loss + kl_coef * l_k
        metrics.update(m_k)
        metrics["sdpg/ref_kl"] = m_k["ref_kl/estimate"]
    return loss, metrics
