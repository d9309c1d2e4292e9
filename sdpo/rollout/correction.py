"""Rollout correction: token-level truncated importance sampling between the sampler and the trainer.

A sampling engine (vLLM in bfloat16 with its own kernels, or a sampler whose weights lag one step) does not
draw from exactly the distribution the trainer scores. The reference (lasgroup/SDPO, a fork of verl; its
``verl/trainer/ppo/rollout_corr_helper.py``, ``compute_rollout_correction_weights`` with
``algorithm.rollout_correction.rollout_is=token`` and ``rollout_is_threshold=2.0`` in the rich-feedback
run scripts) re-weights each response token by the truncated ratio

    w_t = min(exp(clamp(log pi_train(y_t) - log pi_sampler(y_t), -20, 20)), threshold) * mask_t

(TIS: truncated importance sampling; the paper's settings use threshold 2). The weights carry no
gradient: they change the measure, not the objective. Only the upper side is truncated; tokens
the trainer finds *less* likely than the sampler keep their small weight.

This module implements that rule from the formula above (no code copied) and the diagnostics the reference
logs under ``rollout_corr/`` so a user can see a sampler/trainer mismatch growing.

Known bias with truncated sampling (``top_p < 1`` or ``top_k``): both samplers report the log-prob of the
token under the distribution it was drawn from, i.e. *after* top-k/top-p renormalisation (vLLM's
``processed_logprobs``, the HF sampler's recorder), while the trainer's old log-probs apply the temperature
only. For a kept token, log pi_sampler = log pi_trainer - log Z_t, where Z_t <= 1 is the trainer's
probability mass kept by the truncation at step t, so every ratio is biased low by Z_t even with identical
weights: weights shrink, ``rollout_corr/kl`` reads -mean(log Z_t) > 0. ``truncated_sampling_warning`` says so
(the vLLM sampler emits it once); see docs/gpus.md.
"""

from __future__ import annotations

import torch

from sdpo.config import ConfigError

# The reference clamps the log-ratio to +-20 before exp() so that a single wildly mismatched token cannot
# overflow (exp(20) ~ 4.9e8 is still finite in float32 and bfloat16).
SAFETY_BOUND = 20.0


def truncated_sampling_warning(top_p: float, top_k: int | None) -> str | None:
    """The warning to emit when rollouts are drawn with top-p / top-k truncation (see the module docstring),
    or None when sampling is not truncated (top_p >= 1 and no top_k)."""
    parts = ([f"top_p={top_p}"] if top_p < 1.0 else []) + ([f"top_k={top_k}"] if top_k else [])
    if not parts:
        return None
    return (f"sampling with {' and '.join(parts)}: the sampler's log-probs are renormalised after the "
            "truncation while the trainer's old log-probs apply the temperature only, so rollout correction "
            "ratios pi_trainer / pi_sampler are biased low by the kept probability mass (weights < 1 and "
            "rollout_corr/kl > 0 even when sampler and trainer agree); set top_p: 1.0 and top_k: null, or "
            "rollout_correction_threshold: null to switch the correction off (docs/gpus.md)")


def rollout_is_weights(
    trainer_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    threshold: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level truncated importance weights pi_train / pi_sampler and mismatch metrics.

    Args:
        trainer_logprobs: [B, T] log-probabilities of the sampled tokens under the trainer's current policy
            (the "old" log-probs computed by the trainer before the update, temperature applied as when
            sampling).
        sampler_logprobs: [B, T] log-probabilities the sampler reported for the same tokens
            (``Rollout.logprobs``, right-padded).
        mask: [B, T] bool or {0, 1} response mask (1 = a real response token).
        threshold: upper truncation of the ratio (> 0); the reference uses 2.0.

    Returns:
        weights: [B, T], detached, zero on padding, in float32 or wider (float64 inputs stay float64).
        metrics: scalar diagnostics, all namespaced ``rollout_corr/``:
            ``is_mean`` / ``is_max`` / ``is_min``: statistics of the ratio *before* truncation (after the
                +-20 safety clamp) over valid tokens, as the reference logs them;
            ``is_fraction_high`` / ``is_fraction_low``: fraction of valid tokens with ratio > threshold
                (these are truncated) or < 1/threshold;
            ``kl``: mean of log pi_sampler - log pi_train (direct estimator of KL(sampler || trainer));
            ``k3_kl``: mean of r - log r - 1 with r = pi_train / pi_sampler (low-variance KL estimator);
            ``chi2_token``: mean of r^2 - 1;
            ``tokens``: number of valid tokens.
        With no valid token at all the weights are all zero and ``metrics`` is ``{"rollout_corr/tokens": 0}``
        (the reference raises instead; a fully masked micro-batch must not stop a training run).

    Raises:
        ValueError: shapes differ, or threshold is not a positive finite number.
    """
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not (
        0.0 < float(threshold) < float("inf")
    ):
        raise ConfigError("rollout_correction_threshold",
                          f"got {threshold!r}; expected a positive finite number (the reference uses 2.0)")
    if trainer_logprobs.shape != sampler_logprobs.shape or trainer_logprobs.shape != mask.shape:
        raise ValueError(
            "rollout_is_weights: trainer_logprobs, sampler_logprobs and mask must have the same shape; got "
            f"{tuple(trainer_logprobs.shape)}, {tuple(sampler_logprobs.shape)} and {tuple(mask.shape)}"
        )

    dtype = torch.promote_types(torch.promote_types(trainer_logprobs.dtype, sampler_logprobs.dtype),
                                torch.float32)
    with torch.no_grad():
        trainer = trainer_logprobs.detach().to(dtype)
        sampler = sampler_logprobs.detach().to(sampler_logprobs.device).to(dtype)
        valid = mask.detach().to(device=trainer.device).bool()
        maskf = valid.to(dtype)
        n = int(valid.sum().item())
        if n == 0:
            return torch.zeros_like(trainer), {"rollout_corr/tokens": 0}

        # Padding may hold anything (including -inf); zero it before any arithmetic so no NaN can leak.
        log_ratio = torch.where(valid, trainer - sampler, torch.zeros_like(trainer))
        ratio = torch.exp(log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND)) * maskf
        weights = ratio.clamp(max=float(threshold))

        def masked_mean(x: torch.Tensor) -> float:
            return float((x * maskf).sum().item() / n)

        metrics = {
            "rollout_corr/is_mean": masked_mean(ratio),
            "rollout_corr/is_max": float(ratio.masked_fill(~valid, float("-inf")).max().item()),
            "rollout_corr/is_min": float(ratio.masked_fill(~valid, float("inf")).min().item()),
            "rollout_corr/is_fraction_high": masked_mean((ratio > threshold).to(dtype)),
            "rollout_corr/is_fraction_low": masked_mean((ratio < 1.0 / threshold).to(dtype)),
            "rollout_corr/kl": masked_mean(-log_ratio),
            "rollout_corr/k3_kl": masked_mean(torch.exp(log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND))
                                              - log_ratio - 1.0),
            "rollout_corr/chi2_token": masked_mean(ratio.square()) - 1.0,
            "rollout_corr/tokens": n,
        }
    return weights, metrics
