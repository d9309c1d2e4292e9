"""One policy update on a batch of scored rollouts: the part of a training step shared by the trainer
(``sdpo.trainer``) and test-time self-distillation (``sdpo.ttt``).

Paper Sec. 3: SDPO re-scores each rollout under a teacher context (a successful sibling and/or the
environment's feedback) and distils the teacher's next-token distribution into the student. GRPO (the
baseline) uses group-normalised scalar rewards; ``hybrid`` mixes the two, either their losses
(``hybrid_mix="loss"``, TRL's ``distillation_weight``) or their advantages (``hybrid_mix="advantage"``, the
paper's Sec. 4 combination A = λ·A_GRPO + (1 − λ)·A_SDPO). The family (``sdpo.losses.family``): ``srpo`` routes
failed samples with a teacher context to entropy-weighted SDPO and the rest to GRPO (arXiv 2604.02288), ``sc_sdpo``
weights each question's SDPO loss by its pass rate's sqrt(p̂(1 − p̂)) (arXiv 2605.27765), ``sdpg`` is GRPO plus
gated full-vocabulary on-policy distillation plus a KL to the initial policy (arXiv 2606.04036); ``kl_coef`` adds
that KL penalty (TRL's ``beta``) to any loss.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from sdpo.callbacks import StopRequested
from sdpo.config import ConfigError, PolicyConfig, SelfDistillationConfig, _choice, _number, build_dataclass
from sdpo.distributed import SINGLE, DistContext
from sdpo.forward import (
    ResponseBatch,
    eval_mode,
    model_device,
    plain_head_weight,
    response_hidden,
    response_logits,
    student_inputs,
)
from sdpo.losses import (
    KL_ESTIMATORS,
    group_advantages,
    grpo_loss,
    reference_kl_loss,
    sc_sdpo_loss,
    sdpg_beta,
    sdpg_loss,
    sdpo_loss,
    sdpo_loss_from_hidden,
    srpo_entropy_weights,
    srpo_loss,
    srpo_routes,
    token_entropy,
    token_entropy_from_hidden,
    token_logprobs,
    token_logprobs_from_hidden,
)
from sdpo.losses.family import pass_rates, sc_sdpo_normaliser_parts, sc_sdpo_scales
from sdpo.minibatches import MicroBatch, UpdatePlan, plan_update
from sdpo.precision import make_adamw, step_tensors
from sdpo.reprompt import build_teacher_messages, reprompt_metrics, tokenize_teacher_inputs
from sdpo.rollout.base import Rollout
from sdpo.rollout.correction import rollout_is_weights

LOSSES = ("sdpo", "grpo", "hybrid", "srpo", "sc_sdpo", "sdpg")
#: The losses with a self-distillation term (they build teacher contexts and need a teacher).
TEACHER_LOSSES = ("sdpo", "hybrid", "srpo", "sc_sdpo", "sdpg")
HYBRID_MIXES = ("loss", "advantage")
CODE_FEEDBACK = ("all_tests", "first_failure")


@dataclass
class UpdateConfig(PolicyConfig):
    """Settings of the policy update; the policy and sampling settings (adapter, LoRA, n, max_new_tokens,
    temperature, ...) are ``PolicyConfig``'s. ``TrainConfig`` and ``SolveConfig`` extend it.

    loss: "sdpo" | "grpo" | "hybrid" | "srpo" | "sc_sdpo" | "sdpg" (docs/family.md). hybrid_weight w is the SDPO share of a hybrid, mixed by ``hybrid_mix``:
        "loss": (1 - w) * L_GRPO + w * L_SDPO (TRL's ``distillation_weight`` = w);
        "advantage": one PPO-clipped policy-gradient loss on the per-token advantage
        λ * A_GRPO + (1 - λ) * A_SDPO with λ = 1 - w (the paper's Sec. 4 λ weighs GRPO), where A_SDPO on a
        response token y_t is log π_teacher(y_t) - log π(y_t) (detached, at self_distillation.temperature; zero
        on samples without a teacher context): the sampled-token form of SDPO's advantage, so it needs
        self_distillation.mode "token"; the PPO clip of the mixed surrogate replaces self_distillation.is_clip.
        On the first, on-policy step with seq-mean-token-mean-all the two mixes take the same gradient; they
        differ once ratios leave 1 (later mini-batches / epochs) and the clip engages on the mixed advantage.
    srpo_entropy_beta: SRPO's β of the entropy-aware weights exp(−β H_teacher) on its SDPO branch (arXiv
        2604.02288, Sec. 3.2; the paper's default 1). SRPO routes a failed sample with a teacher context to SDPO
        (self_distillation's divergence, top-k, alpha), every other sample to GRPO.
    sc_sdpo: no setting of its own; p̂ counts rewards >= self_distillation.success_reward_threshold.
    sdpg_beta, sdpg_warmup_steps, sdpg_decay_steps: SDPG's distillation coefficient β(k) = sdpg_beta ·
        min(1, k / warmup) · min(1, (max_steps − k) / decay) at training step k (arXiv 2606.04036, Sec. 3.5.2; the
        paper's 1e-3, 50, 350 of 400 steps; 0 = no warm-up / no decay; at test time β = sdpg_beta).
        sdpg_positive_gate: distil only samples with a positive advantage (Eq. 3.5). SDPG always distils the
        full vocabulary with the reverse KL (Eq. 3.2): self_distillation.mode, alpha and distillation_topk do not
        apply to it.
    kl_coef: weight of a KL penalty to the initial policy on the sampled tokens (TRL's ``beta``; SDPG's α);
        None = 1e-3 for sdpg (the paper's α), 0 (off) otherwise. kl_estimator: "k3" (TRL / GRPO's) | "urkl" |
        "ufkl" (SDPG's, Sec. 3.4); None = "urkl" for sdpg, "k3" otherwise. The initial policy is the base with
        the adapters disabled for LoRA and a frozen copy for full fine-tuning (``sdpo.teacher.FrozenBase``; one
        copy with teacher_regularization "base").
    micro_batch_size: samples per forward/backward. mini_batch_size: samples per optimizer step
        (None = the whole batch, i.e. one on-policy step). ppo_epochs: passes over the batch (at test time,
        over each round's attempts). docs/fidelity.md maps these names to the reference's.
    rollout_correction_threshold: truncation of the token-level trainer/sampler ratio (None = off).
    code_feedback: what the code environment reports to the teacher about a failed attempt: "all_tests" (the
        reference's: every test runs; a runtime error first, then a timeout, then the two shortest wrong
        answers) or "first_failure" (the first failing test in test order; cheaper). The reward is unchanged.
    fused_lm_head: compute the losses from hidden states and the LM-head weight chunk by chunk, never holding
        [B, T, V] logits (``sdpo_loss_from_hidden``). Needs a bias-free ``nn.Linear`` LM head on the student
        (not LoRA-wrapped) and a teacher that exposes (hidden, head weight): not the full-model trust-region
        teacher, whose reference model has its own head.
    """

    loss: str = "sdpo"
    hybrid_weight: float = 0.5
    hybrid_mix: str = "loss"
    srpo_entropy_beta: float = 1.0
    sdpg_beta: float = 1e-3
    sdpg_warmup_steps: int = 50
    sdpg_decay_steps: int = 350
    sdpg_positive_gate: bool = True
    kl_coef: float | None = None
    kl_estimator: str | None = None
    self_distillation: SelfDistillationConfig = field(default_factory=SelfDistillationConfig)
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    micro_batch_size: int = 4
    mini_batch_size: int | None = None
    ppo_epochs: int = 1
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    clip_ratio_c: float = 3.0
    norm_adv_by_std: bool = True
    rollout_correction_threshold: float | None = 2.0
    code_feedback: str = "all_tests"
    fused_lm_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.self_distillation, dict):
            self.self_distillation = build_dataclass(SelfDistillationConfig, self.self_distillation,
                                                     prefix="self_distillation.")
        if not isinstance(self.self_distillation, SelfDistillationConfig):
            raise ConfigError("self_distillation", f"expected a mapping, got {self.self_distillation!r}")
        _choice("loss", self.loss, LOSSES)
        _number("hybrid_weight", self.hybrid_weight, lo=0.0, hi=1.0)
        _choice("hybrid_mix", self.hybrid_mix, HYBRID_MIXES)
        if self.loss == "hybrid" and self.hybrid_mix == "advantage" and self.self_distillation.mode != "token":
            raise ConfigError("hybrid_mix", f"hybrid_mix='advantage' mixes the sampled token's SDPO advantage "
                              f"into GRPO's; it needs self_distillation.mode='token' (and alpha 1.0), got mode="
                              f"{self.self_distillation.mode!r}; set it, or use hybrid_mix='loss'")
        _number("srpo_entropy_beta", self.srpo_entropy_beta, lo=0.0, lo_open=True)
        _number("sdpg_beta", self.sdpg_beta, lo=0.0)
        for name in ("sdpg_warmup_steps", "sdpg_decay_steps"):
            _number(name, getattr(self, name), lo=0, integer=True)
        if not isinstance(self.sdpg_positive_gate, bool):
            raise ConfigError("sdpg_positive_gate", f"got {self.sdpg_positive_gate!r}; expected true or false")
        if self.kl_coef is None:  # the loss's own default: SDPG's alpha, else no penalty
            self.kl_coef = 1e-3 if self.loss == "sdpg" else 0.0
        _number("kl_coef", self.kl_coef, lo=0.0)
        if self.kl_estimator is None:
            self.kl_estimator = "urkl" if self.loss == "sdpg" else "k3"
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _number("lr", self.lr, lo=0.0, lo_open=True)
        _number("weight_decay", self.weight_decay, lo=0.0)
        _number("max_grad_norm", self.max_grad_norm, lo=0.0, lo_open=True)
        _number("micro_batch_size", self.micro_batch_size, lo=1, integer=True)
        if self.mini_batch_size is not None:
            _number("mini_batch_size", self.mini_batch_size, lo=1, integer=True)
        _number("ppo_epochs", self.ppo_epochs, lo=1, integer=True)
        _number("clip_ratio_low", self.clip_ratio_low, lo=0.0, hi=1.0, hi_open=True)
        _number("clip_ratio_high", self.clip_ratio_high, lo=0.0)
        _number("clip_ratio_c", self.clip_ratio_c, lo=1.0, lo_open=True)
        if self.rollout_correction_threshold is not None:
            _number("rollout_correction_threshold", self.rollout_correction_threshold, lo=1.0)
        _choice("code_feedback", self.code_feedback, CODE_FEEDBACK)
        if not isinstance(self.fused_lm_head, bool):
            raise ConfigError("fused_lm_head", f"got {self.fused_lm_head!r}; expected true or false")
        if self.fused_lm_head:
            _check_fused_lm_head(self)


#: Names under which transformers models keep their LM head (output embedding).
LM_HEAD_NAMES = ("lm_head", "embed_out")


def _check_fused_lm_head(cfg: UpdateConfig) -> None:
    """Reject ``fused_lm_head`` combinations the fused path cannot run (checked again at run time by
    ``plain_head_weight`` on the actual model)."""
    sd = cfg.self_distillation
    if cfg.loss in TEACHER_LOSSES and sd.teacher_regularization == "trust-region" and cfg.adapter == "full":
        raise ConfigError(
            "fused_lm_head", "fused_lm_head=true with self_distillation.teacher_regularization='trust-region' "
            "and adapter='full' is not supported (the frozen reference model has its own LM head, so the teacher "
            "logits are not one hidden state times one head); set fused_lm_head=false, use adapter='lora', or "
            "teacher_regularization='ema' or 'live'")
    if cfg.adapter == "lora" and cfg.lora_target_modules:
        wrapped = [m for m in cfg.lora_target_modules if m in LM_HEAD_NAMES]
        if wrapped:
            raise ConfigError(
                "fused_lm_head", f"fused_lm_head=true with the LM head in lora_target_modules ({wrapped[0]!r}) "
                "is not supported (the fused loss uses the plain head weight and would drop the adapter); remove "
                f"{wrapped[0]!r} from lora_target_modules or set fused_lm_head=false")


@dataclass
class ScoredBatch:
    """Rollouts with their rewards and feedback, flattened in group order (``group_ids[i]`` = question)."""

    prompts: list[list[dict[str, str]]]
    rollouts: list[Rollout]
    rewards: list[float]
    feedback: list[str | None]
    group_ids: list[int]

    def __len__(self) -> int:
        return len(self.rollouts)


@dataclass
class UpdateTensors:
    """The batch as the update's micro-batches read it: one row per sample of this rank, the responses
    right-padded to one width T (the same on every rank).

    student / teacher: the student's and the teacher's inputs (``sdpo.forward``; no teacher without an SDPO term).
    response_ids, response_mask, sampler_logprobs: [N, T]. sample_mask: [N], 1 where the sample has a teacher
    context (SDPO distils it). advantages: [N], GRPO's outcome advantages. old_logprobs: [N, T] under the policy
    before the update at the sampling temperature, old_logprobs_sd at the self-distillation temperature (None
    where nothing needs them). rollout_weights: [N, T] rollout-correction weights (None = off).
    sample_weights: [N] SC-SDPO's per-question weights. token_weights: [N, T] SRPO's entropy weights.
    ref_logprobs: [N, T] the initial policy's log-probs at the sampling temperature (KL penalty). All three are
    computed over the whole batch (every rank) before it is split, and None where the loss has none.
    """

    student: ResponseBatch
    teacher: ResponseBatch | None
    response_ids: Tensor
    response_mask: Tensor
    sampler_logprobs: Tensor
    sample_mask: Tensor
    advantages: Tensor
    old_logprobs: Tensor | None = None
    old_logprobs_sd: Tensor | None = None
    rollout_weights: Tensor | None = None
    sample_weights: Tensor | None = None
    token_weights: Tensor | None = None
    ref_logprobs: Tensor | None = None


def uses_teacher(loss: str) -> bool:
    """Whether ``loss`` has a self-distillation term (needs teacher contexts and a teacher)."""
    return loss in TEACHER_LOSSES


def has_learning_signal(batch: ScoredBatch, cfg: UpdateConfig, contexts: list | None = None) -> bool:
    """Whether an update on ``batch`` can move the weights: for a self-distillation term, some sample has a
    teacher context (a demonstration or feedback), for a policy-gradient term the rewards differ (else every
    advantage is 0), for a KL penalty always (the policy may have left the initial one). SRPO's SDPO branch
    takes the failed samples with a context; SC-SDPO needs such a sample in a question that is neither always
    nor never solved; SDPG needs differing rewards (its distillation is gated by a positive advantage).
    contexts: the batch's teacher contexts (``sdpo.reprompt.build_teacher_messages``) when built already."""
    if contexts is None:
        contexts = build_teacher_messages(batch.prompts, [r.text for r in batch.rollouts], batch.rewards,
                                          batch.group_ids, batch.feedback, cfg.self_distillation)
    thr = cfg.self_distillation.success_reward_threshold
    sdpo_signal = any(c.distill_mask for c in contexts)
    grpo_signal = len(set(batch.rewards)) > 1
    srpo_signal = any(c.distill_mask and r < thr for c, r in zip(contexts, batch.rewards, strict=True))
    p = pass_rates(torch.tensor(batch.rewards, dtype=torch.float64), batch.group_ids, thr)
    sc_signal = any(c.distill_mask and 0.0 < float(q) < 1.0 for c, q in zip(contexts, p, strict=True))
    signal = {"sdpo": sdpo_signal, "grpo": grpo_signal, "hybrid": sdpo_signal or grpo_signal,
              "srpo": srpo_signal or grpo_signal, "sc_sdpo": sc_signal, "sdpg": grpo_signal}[cfg.loss]
    return signal or bool(cfg.kl_coef)


def plan_masks(data: UpdateTensors, cfg: UpdateConfig) -> dict[str, Tensor]:
    """The aggregation mask of each loss term (the keys of the plan's scales): SDPO's response_mask ·
    sample_mask, GRPO's response_mask; SRPO and SDPG normalise all their terms by the whole response mask
    (``sdpo.losses.family``); the KL penalty by the response mask."""
    resp = data.response_mask.float()
    masks = {}
    if cfg.loss in ("sdpo", "hybrid", "sc_sdpo"):
        masks["sdpo"] = resp * data.sample_mask[:, None]
    if cfg.loss in ("grpo", "hybrid"):
        masks["grpo"] = resp
    if cfg.loss in ("srpo", "sdpg"):
        masks[cfg.loss] = resp
    if cfg.kl_coef and cfg.loss != "sdpg":
        masks["kl"] = resp
    return masks


def policy_update(model, optimizer, teacher, tokenizer, batch: ScoredBatch, cfg: UpdateConfig, *,
                  seed: int = 0, dist: DistContext | None = None, should_stop=None, reference=None,
                  progress: tuple[int, int] | None = None) -> dict[str, float]:
    """Run ``cfg.ppo_epochs`` passes of mini-batch optimizer steps on ``batch``; return mean metrics.

    The teacher is *not* updated here (the caller does it once per training step, after all mini-batches).

    dist: data parallelism (:mod:`sdpo.distributed`). ``batch`` is then this rank's block of the global batch
    (ranks in order, whole groups per rank); mini-batches are slices of the *global* sample order, losses are
    normalised by global aggregation weights and gradients summed over ranks, so every rank takes the same
    optimizer step as one process holding the global batch. Every rank runs the same number of forward /
    backward passes and collectives (zero-weight dummy micro-batches pad the ranks with fewer rows).
    should_stop: single process only; asked before every micro-batch, raising ``sdpo.callbacks.StopRequested``
        when it says stop (the optimizer steps already taken stay taken).
    reference: the initial policy (``sdpo.teacher.make_reference``), needed when ``cfg.kl_coef`` > 0.
    progress: (step, total steps) of a training run, for SDPG's β(k) schedule (None: β = sdpg_beta).
    """
    ctx = dist or SINGLE
    if len(batch) == 0:
        raise ValueError("policy_update: empty batch (each data-parallel rank needs at least one sample)")
    sd = cfg.self_distillation
    if sd.loss_scale_factor is None:  # seq-mean-token-sum-norm divides by a constant: the max response length
        sd = replace(sd, loss_scale_factor=cfg.max_new_tokens)
    metrics: dict[str, list[float]] = defaultdict(list)
    batch_keys: set[str] = set()  # batch-level metrics (reprompt, rollout-correction fractions)

    # 1. The batch as tensors: teacher contexts (a successful sibling and/or feedback; samples with neither are
    #    not distilled), GRPO advantages (per group of one question's rollouts; groups never straddle ranks) and
    #    the family's sample masks and weights (SRPO's routes, SDPG's gate, SC-SDPO's weights over all ranks).
    data, batch_metrics = batch_tensors(batch, tokenizer, cfg, sd, ctx)
    _record(metrics, batch_metrics, batch_keys)

    # 2. The plan: mini-batches over the global sample order, their micro-batches and exact accumulation scales
    #    under the global mini-batch's aggregation weights (the ranks' denominators summed).
    sizes = [int(x) for x in ctx.all_gather_object(len(batch))]
    masks = plan_masks(data, cfg)
    plan = plan_update(sizes, ctx.rank, masks, sd.loss_agg_mode, micro_batch_size=cfg.micro_batch_size,
                       mini_batch_size=cfg.mini_batch_size, ppo_epochs=cfg.ppo_epochs, seed=seed)
    if ctx.enabled:
        plan = plan.globalised(ctx.all_reduce(plan.local_denominators(), "sum"), sd.loss_agg_mode)

    # 3. Old log-probs under the policy before the first step (IS weights, PPO ratios, rollout correction), the
    #    initial policy's (KL penalty) and SRPO's entropy weights, over the whole batch (normalised over ranks).
    data, rc_metrics = with_old_logprobs(model, data, plan, cfg, sd)
    _record(metrics, rc_metrics, batch_keys)
    if cfg.kl_coef:
        if reference is None:
            raise ValueError(f"policy_update: kl_coef={cfg.kl_coef} needs the reference policy "
                             "(sdpo.teacher.make_reference)")
        data = replace(data, ref_logprobs=_logprobs(reference, data.student, data.response_ids,
                                                    plan.old_logprob_micro, cfg.temperature, cfg.fused_lm_head))
    if cfg.loss == "srpo":
        data, srpo_metrics = with_entropy_weights(model, teacher, data, plan, cfg, sd, ctx)
        _record(metrics, srpo_metrics, batch_keys)
    run_step, run_steps = progress if progress is not None else (None, None)
    beta = sdpg_beta(cfg.sdpg_beta, run_step, run_steps, cfg.sdpg_warmup_steps, cfg.sdpg_decay_steps)

    # 4. Optimizer steps: micro-batch forward/backward, the gradients summed over ranks and clipped; a step whose
    #    gradient is not finite is skipped.
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    n_steps = 0
    for step in plan.steps:
        optimizer.zero_grad(set_to_none=True)
        for micro in step.micro:
            if should_stop is not None and should_stop():
                raise StopRequested
            loss, micro_metrics = micro_batch_loss(model, teacher, data, micro, cfg, sd, beta=beta)
            loss.backward()
            _record(metrics, {**micro_metrics, "loss": float(loss.detach())})
        n_steps += optimizer_step(optimizer, params, cfg.max_grad_norm, ctx, metrics)

    # 5. Metrics, means over ranks; "loss" is the sum of an optimizer step's scaled micro-batch losses.
    out = _reduce_metrics(metrics, batch_keys, len(batch), max(len(plan.steps), 1), ctx)
    out["update/optimizer_steps"] = float(n_steps)  # steps taken (a skipped one is not): the EMA teacher's cue
    return out


# ---------------------------------------------------------------------------------------------------
# The pieces of an update
# ---------------------------------------------------------------------------------------------------

def batch_tensors(batch: ScoredBatch, tokenizer, cfg: UpdateConfig, sd: SelfDistillationConfig,
                  ctx: DistContext = SINGLE) -> tuple[UpdateTensors, dict[str, float]]:
    """``batch`` as ``UpdateTensors`` (without old log-probs) and the re-prompting metrics. Responses are padded to
    the width of the longest response on any rank (a collective under data parallelism). ``sample_mask`` is the
    samples the distillation term takes: those with a teacher context, for SRPO only the failed ones
    (``srpo_routes``), for SDPG only those with a positive advantage (``sdpg_positive_gate``); SC-SDPO's
    ``sample_weights`` are normalised over every rank's questions (a collective)."""
    rollouts = batch.rollouts
    width = None
    if ctx.enabled:
        width = int(ctx.all_reduce([max(1, max(len(r.response_ids) for r in rollouts))], "max")[0])
    response_ids = _pad([r.response_ids for r in rollouts], tokenizer.pad_token_id, torch.long, width)
    response_mask = _pad([[1] * len(r.response_ids) for r in rollouts], 0, torch.long, width)
    data = UpdateTensors(
        student=student_inputs([r.prompt_ids for r in rollouts], response_ids, response_mask, tokenizer.pad_token_id),
        teacher=None, response_ids=response_ids, response_mask=response_mask,
        sampler_logprobs=_pad([r.logprobs for r in rollouts], 0.0, torch.float32, width),
        sample_mask=torch.ones(len(batch)),
        advantages=group_advantages(torch.tensor(batch.rewards, dtype=torch.float32), batch.group_ids,
                                    norm_by_std=cfg.norm_adv_by_std))
    if not uses_teacher(cfg.loss):
        return data, {}
    contexts = build_teacher_messages(batch.prompts, [r.text for r in rollouts], batch.rewards, batch.group_ids,
                                      batch.feedback, sd)
    data.teacher = tokenize_teacher_inputs(tokenizer, contexts, response_ids, response_mask, sd.max_reprompt_len,
                                           sd.reprompt_truncation)
    distill = torch.tensor([float(c.distill_mask) for c in contexts])
    metrics = reprompt_metrics(contexts, batch.rewards, batch.group_ids, batch.feedback, sd)
    rewards = torch.tensor(batch.rewards, dtype=torch.float64)
    data.sample_mask = distill
    if cfg.loss == "srpo":  # the SDPO branch: failed samples with a teacher context (Sec. 3.1)
        data.sample_mask = srpo_routes(rewards, distill, sd.success_reward_threshold).float()
        metrics["srpo/route_sdpo_fraction"] = float(data.sample_mask.mean())
        metrics["srpo/route_grpo_fraction"] = 1.0 - metrics["srpo/route_sdpo_fraction"]
    elif cfg.loss == "sdpg":  # the gated OPD term: a teacher context and a positive advantage (Eq. 3.5)
        if cfg.sdpg_positive_gate:
            data.sample_mask = distill * (data.advantages > 0).float()
        metrics["sdpg/gate_fraction"] = float(data.sample_mask.mean())
    elif cfg.loss == "sc_sdpo":  # each question's weight, normalised over the whole batch (every rank)
        scales = sc_sdpo_scales(pass_rates(rewards, batch.group_ids, sd.success_reward_threshold))
        total, count = (float(x) for x in ctx.all_reduce(
            list(sc_sdpo_normaliser_parts(scales, batch.group_ids, distill)), "sum"))
        norm = total / count if count else 0.0
        data.sample_weights = (scales / norm if norm > 0 else torch.zeros_like(scales)).float()
        metrics["sc_sdpo/normaliser"] = norm
        metrics["sc_sdpo/pass_rate_mean"] = float(pass_rates(rewards, batch.group_ids,
                                                             sd.success_reward_threshold).mean())
    return data, metrics


def with_old_logprobs(model, data: UpdateTensors, plan: UpdatePlan, cfg: UpdateConfig,
                      sd: SelfDistillationConfig) -> tuple[UpdateTensors, dict[str, float]]:
    """``data`` with the log-probs of the policy before the update where something needs them (GRPO's ratio,
    SDPO's IS clip, rollout correction), in the plan's forwards, and the rollout-correction weights and metrics."""
    if cfg.loss in ("sdpo", "sc_sdpo") and sd.is_clip is None and cfg.rollout_correction_threshold is None \
            and not cfg.kl_coef:
        return data, {}
    passes, fused = plan.old_logprob_micro, cfg.fused_lm_head
    old = _old_logprobs(model, data.student, data.response_ids, passes, cfg.temperature, fused)
    old_sd = old
    if uses_teacher(cfg.loss) and sd.is_clip is not None and sd.temperature != cfg.temperature:
        old_sd = _old_logprobs(model, data.student, data.response_ids, passes, sd.temperature, fused)
    data = replace(data, old_logprobs=old, old_logprobs_sd=old_sd)
    if cfg.rollout_correction_threshold is None:
        return data, {}
    weights, metrics = rollout_is_weights(old, data.sampler_logprobs, data.response_mask,
                                          cfg.rollout_correction_threshold)
    return replace(data, rollout_weights=weights), metrics


def with_entropy_weights(model, teacher, data: UpdateTensors, plan: UpdatePlan, cfg: UpdateConfig,
                         sd: SelfDistillationConfig, ctx: DistContext = SINGLE,
                         ) -> tuple[UpdateTensors, dict[str, float]]:
    """``data`` with SRPO's entropy weights w = exp(−β H) / mean_Ω exp(−β H) (arXiv 2604.02288, Sec. 3.2) of the
    tokens routed to SDPO, H the teacher's entropy at ``self_distillation.temperature``, the mean over those
    tokens of the whole batch on every rank: one no-grad teacher forward per pass of the plan's old-log-prob
    passes (as many on every rank) before the update, so that the weights do not depend on the split."""
    sel = data.response_mask.double() * data.sample_mask.double()[:, None]
    entropy = torch.zeros(sel.shape, dtype=torch.float64)
    device = model_device(model)
    assert data.teacher is not None  # batch_tensors builds the teacher inputs for SRPO
    for rows in plan.old_logprob_micro:
        dummy = rows is None
        rows = torch.tensor([0]) if rows is None else rows
        tb = data.teacher.rows(rows).trimmed().to(device)
        mask = sel[rows].to(device)
        if cfg.fused_lm_head:
            hidden, head = teacher.hidden(tb)
            ent = token_entropy_from_hidden(hidden, head, mask, sd.temperature)
        else:
            ent = token_entropy(teacher.logits(tb), mask, sd.temperature)
        if not dummy:
            entropy[rows] = ent.double().cpu()
    raw = torch.where(sel != 0, torch.exp(-cfg.srpo_entropy_beta * entropy), torch.zeros_like(entropy))
    total, count, h_sum = (float(x) for x in ctx.all_reduce([float(raw.sum()), float(sel.sum()),
                                                             float((entropy * sel).sum())], "sum"))
    norm = total / count if count else 0.0
    weights, _ = srpo_entropy_weights(entropy, sel, cfg.srpo_entropy_beta, normaliser=norm)
    return replace(data, token_weights=weights), {"srpo/entropy_normaliser": norm,
                                                  "srpo/teacher_entropy_mean": h_sum / count if count else 0.0}


def micro_batch_loss(model, teacher, data: UpdateTensors, micro: MicroBatch, cfg: UpdateConfig,
                     sd: SelfDistillationConfig, *, beta: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """One micro-batch's loss, scaled so that its gradient is its exact share of the mini-batch's, and its
    metrics (none for a dummy pass, whose scales are 0).

    L = w_SDPO · s_SDPO · L_SDPO + w_GRPO · s_GRPO · L_GRPO with the plan's scales s and (w_SDPO, w_GRPO) = (1, 0)
    for "sdpo", (0, 1) for "grpo", (w, 1 − w) for a hybrid mixing losses (w = hybrid_weight); a hybrid mixing
    advantages has the GRPO term alone, on the per-token advantage λ·A_GRPO + (1 − λ)·A_SDPO with λ = 1 − w.
    "sc_sdpo" is the SDPO term with each question's weight; "srpo" and "sdpg" are one term each
    (``srpo_loss``, ``sdpg_loss`` with SDPG's β(k) = ``beta``); plus kl_coef · s_KL · L_KL when kl_coef > 0
    (inside ``sdpg_loss`` for "sdpg").
    """
    device = model_device(model)
    rows = torch.tensor([0]) if micro.rows is None else micro.rows  # a dummy pass runs row 0
    mb = data.student.rows(rows).trimmed().to(device)
    ids, rmask = data.response_ids[rows].to(device), data.response_mask[rows].to(device)
    rcw = data.rollout_weights[rows].to(device) if data.rollout_weights is not None else None
    fused = cfg.fused_lm_head
    head_w = plain_head_weight(model) if fused else None  # refuses a LoRA-wrapped / biased head
    student = response_hidden(model, mb) if fused else response_logits(model, mb)
    tb = data.teacher.rows(rows).trimmed().to(device) if data.teacher is not None else None
    mix_advantages = cfg.loss == "hybrid" and cfg.hybrid_mix == "advantage"
    total = torch.zeros((), device=device)
    metrics: dict[str, float] = {}
    lp = None  # the student's log-probs of the response at the sampling temperature, when a term needs them

    def rows_of(x: Tensor | None) -> Tensor | None:
        return None if x is None else x[rows].to(device)

    def rows_needed(x: Tensor | None) -> Tensor:
        assert x is not None  # filled before the update for the terms that use it (with_old_logprobs, ...)
        return x[rows].to(device)

    old_sd = rows_of(data.old_logprobs_sd) if sd.is_clip is not None else None
    kl_coef, kl_estimator = cfg.kl_coef, cfg.kl_estimator
    assert kl_coef is not None and kl_estimator is not None  # UpdateConfig fills in the loss's defaults
    if cfg.loss in ("sdpo", "hybrid", "sc_sdpo") and not mix_advantages:
        t_out, t_head_w = _teacher_output(teacher, tb, fused)
        kw: dict[str, Any] = dict(old_logprobs=old_sd, sample_mask=data.sample_mask[rows].to(device),
                                  rollout_is_weights=rcw)
        if cfg.loss == "sc_sdpo":
            l_sd, m_sd = sc_sdpo_loss(student, t_out, ids, rmask, sd, rows_needed(data.sample_weights),
                                      head_weight=head_w, teacher_head_weight=t_head_w, **kw)
        elif head_w is not None:  # fused
            # the teacher's own head: an EMA teacher of a full model has its own (EMA'd) weights
            l_sd, m_sd = sdpo_loss_from_hidden(student, t_out, head_w, ids, rmask, sd,
                                               teacher_lm_head_weight=t_head_w, **kw)
        else:
            l_sd, m_sd = sdpo_loss(student, t_out, ids, rmask, sd, **kw)
        w = cfg.hybrid_weight if cfg.loss == "hybrid" else 1.0
        total = total + w * micro.scales["sdpo"] * l_sd
        metrics.update(m_sd)
    if cfg.loss in ("grpo", "hybrid"):
        lp = _token_logprobs(student, head_w, ids, cfg.temperature)
        adv = data.advantages[rows].to(device)
        w = (1.0 - cfg.hybrid_weight) if cfg.loss == "hybrid" else 1.0
        if mix_advantages:
            a_sd = _sdpo_token_advantages(teacher, tb, lp, student, head_w, ids, cfg)
            a_sd = a_sd * data.sample_mask[rows].to(device)[:, None]
            lam = 1.0 - cfg.hybrid_weight
            adv, w = lam * adv[:, None] + (1.0 - lam) * a_sd, 1.0
            metrics["hybrid/sdpo_advantage_mean"] = float((a_sd * rmask).sum() / rmask.sum().clamp(min=1))
        l_pg, m_pg = grpo_loss(lp, rows_needed(data.old_logprobs), adv, rmask,
                               clip_ratio_low=cfg.clip_ratio_low, clip_ratio_high=cfg.clip_ratio_high,
                               clip_ratio_c=cfg.clip_ratio_c, loss_agg_mode=sd.loss_agg_mode,
                               loss_scale_factor=sd.loss_scale_factor, rollout_is_weights=rcw)
        total = total + w * micro.scales["grpo"] * l_pg
        metrics.update(m_pg)
    clips = dict(clip_ratio_low=cfg.clip_ratio_low, clip_ratio_high=cfg.clip_ratio_high,
                 clip_ratio_c=cfg.clip_ratio_c)
    if cfg.loss == "srpo":
        t_out, t_head_w = _teacher_output(teacher, tb, fused)
        l_sr, m_sr = srpo_loss(student, t_out, ids, rmask, data.sample_mask[rows].to(device),
                               data.advantages[rows].to(device), rows_needed(data.old_logprobs), sd,
                               entropy_weights=rows_of(data.token_weights), temperature=cfg.temperature,
                               head_weight=head_w, teacher_head_weight=t_head_w, old_logprobs_sd=old_sd,
                               rollout_is_weights=rcw, **clips)
        total = total + micro.scales["srpo"] * l_sr
        metrics.update({k: v for k, v in m_sr.items() if not k.startswith("srpo/route_")})  # batch-level ones
    if cfg.loss == "sdpg":
        t_out, t_head_w = _teacher_output(teacher, tb, fused)
        l_pg, m_pg = sdpg_loss(student, t_out, ids, rmask, data.advantages[rows].to(device),
                               rows_needed(data.old_logprobs), sd, opd_mask=data.sample_mask[rows].to(device),
                               beta=beta, ref_logprobs=rows_of(data.ref_logprobs), kl_coef=kl_coef,
                               kl_estimator=kl_estimator, temperature=cfg.temperature, head_weight=head_w,
                               teacher_head_weight=t_head_w, old_logprobs_sd=old_sd, rollout_is_weights=rcw,
                               **clips)
        total = total + micro.scales["sdpg"] * l_pg
        metrics.update({k: v for k, v in m_pg.items() if k != "sdpg/gate_fraction"})  # batch-level
    if cfg.kl_coef and cfg.loss != "sdpg":
        lp = lp if lp is not None else _token_logprobs(student, head_w, ids, cfg.temperature)
        l_kl, m_kl = reference_kl_loss(lp, rows_needed(data.ref_logprobs), rmask, estimator=kl_estimator,
                                       old_logprobs=rows_needed(data.old_logprobs),
                                       loss_agg_mode=sd.loss_agg_mode, loss_scale_factor=sd.loss_scale_factor)
        total = total + cfg.kl_coef * micro.scales["kl"] * l_kl
        metrics.update(m_kl)
    return total, ({} if micro.dummy else metrics)


def _teacher_output(teacher, t_batch, fused: bool) -> tuple[Tensor, Tensor | None]:
    """The teacher's logits [B, T, V] and None, or (fused) its hidden states and its own LM-head weight."""
    if fused:
        return teacher.hidden(t_batch)
    return teacher.logits(t_batch), None


def _token_logprobs(student: Tensor, head_w: Tensor | None, ids: Tensor, temperature: float) -> Tensor:
    if head_w is not None:
        return token_logprobs_from_hidden(student, head_w, ids, temperature)
    return token_logprobs(student, ids, temperature)


def optimizer_step(optimizer, params: list[Tensor], max_grad_norm: float, ctx: DistContext,
                   metrics: dict[str, list[float]]) -> int:
    """Sum the accumulated gradients over ranks, clip them to ``max_grad_norm`` and step; a gradient whose norm
    is not finite skips the step (the same decision on every rank: the gradients are reduced). Float32 masters
    (bf16 / fp16 full fine-tuning) take the gradients before they are reduced and clipped. Returns the steps
    taken (1 or 0)."""
    grads = step_tensors(optimizer, params)
    ctx.all_reduce_grads(grads)
    grad_norm = torch.nn.utils.clip_grad_norm_(grads, max_grad_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    metrics["grad_norm"].append(float(grad_norm))
    taken = bool(torch.isfinite(grad_norm))
    if taken:
        optimizer.step()
    else:
        metrics["update/skipped_nonfinite"].append(1.0)
    optimizer.zero_grad(set_to_none=True)
    return int(taken)


def make_optimizer(model, cfg: UpdateConfig, *, warmup_steps: int = 0, total_steps: int = 1,
                   schedule: str = "constant"):
    """AdamW (float32 masters for a bfloat16 / float16 full fine-tune, ``sdpo.precision``) and its LambdaLR:
    linear warmup over ``warmup_steps`` from lr/warmup_steps, then constant or cosine to 0 at ``total_steps``."""
    optimizer = make_adamw(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _pad(rows: list[list], value, dtype, width: int | None = None) -> Tensor:
    width = width or max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.tensor(r, dtype=dtype)
    return out


def _record(metrics: dict[str, list[float]], values: dict[str, float], batch_keys: set[str] | None = None) -> None:
    for k, v in values.items():
        metrics[k].append(v)
        if batch_keys is not None:
            batch_keys.add(k)


@torch.no_grad()
def _old_logprobs(model, batch: ResponseBatch, ids: Tensor, passes: list[Tensor | None], temperature: float,
                  fused: bool) -> Tensor:
    """Log-probs of ``ids`` under ``model``, one forward per entry of ``passes`` (rows of the batch; None repeats
    row 0 and is discarded: under FSDP every rank must run the same number of forwards). In eval mode (no
    dropout), as the reference's ``compute_log_prob``, whatever mode an earlier update left the model in."""
    out = torch.zeros(ids.shape, dtype=torch.float32)
    device = model_device(model)
    with eval_mode(model):
        for rows in passes:
            dummy = rows is None
            rows = torch.tensor([0]) if rows is None else rows
            mb = batch.rows(rows).trimmed().to(device)
            if fused:
                lp = token_logprobs_from_hidden(response_hidden(model, mb), plain_head_weight(model),
                                                ids[rows].to(device), temperature)
            else:
                lp = token_logprobs(response_logits(model, mb), ids[rows].to(device), temperature)
            if not dummy:
                out[rows] = lp.float().cpu()
    return out


@torch.no_grad()
def _logprobs(source, batch: ResponseBatch, ids: Tensor, passes: list[Tensor | None], temperature: float,
              fused: bool) -> Tensor:
    """``_old_logprobs`` of a no-grad policy with ``logits(batch)`` / ``hidden(batch)`` (the initial policy,
    ``sdpo.teacher.FrozenBase``): one forward per pass, dummies included, on the student inputs."""
    out = torch.zeros(ids.shape, dtype=torch.float32)
    device = model_device(source.student)
    for rows in passes:
        dummy = rows is None
        rows = torch.tensor([0]) if rows is None else rows
        mb = batch.rows(rows).trimmed().to(device)
        if fused:
            hidden, head = source.hidden(mb)
            lp = token_logprobs_from_hidden(hidden, head, ids[rows].to(device), temperature)
        else:
            lp = token_logprobs(source.logits(mb), ids[rows].to(device), temperature)
        if not dummy:
            out[rows] = lp.float().cpu()
    return out


@torch.no_grad()
def _sdpo_token_advantages(teacher, t_batch, student_lp: Tensor, student_out: Tensor, head_w: Tensor | None,
                           ids: Tensor, cfg: UpdateConfig) -> Tensor:
    """A_SDPO [B, T] = log π_teacher(y_t) - log π(y_t) at ``self_distillation.temperature`` (paper Sec. 3: the
    sampled-token advantage whose policy gradient is the token-mode SDPO gradient). student_lp: the student's
    log-probs at ``cfg.temperature`` (reused when the temperatures agree); student_out: its logits [B, T, V],
    or hidden states [B, T, H] with ``head_w`` [V, H] (fused LM head)."""
    temp = cfg.self_distillation.temperature
    if head_w is not None:
        t_hidden, t_head_w = teacher.hidden(t_batch)
        lt = token_logprobs_from_hidden(t_hidden, t_head_w, ids, temp)
        ls = student_lp if temp == cfg.temperature else token_logprobs_from_hidden(student_out, head_w, ids, temp)
    else:
        lt = token_logprobs(teacher.logits(t_batch), ids, temp)
        ls = student_lp if temp == cfg.temperature else token_logprobs(student_out, ids, temp)
    return (lt - ls.detach()).to(student_lp.dtype)


def _reduce_metrics(metrics: dict[str, list[float]], batch_keys: set[str], n: int, steps: int,
                    ctx: DistContext) -> dict[str, float]:
    """Means over all ranks: micro-batch metrics count once per micro-batch, batch-level ones (reprompt and
    rollout-correction fractions) by their rank's sample count; "loss" is the sum over ranks of the scaled
    micro-batch losses (globally normalised), per optimizer step."""
    keys = sorted(set().union(*ctx.all_gather_object(sorted(k for k, v in metrics.items() if v))))
    vec = []
    for k in keys:
        v = metrics.get(k, [])
        if k == "loss":
            vec += [sum(v), float(steps) if ctx.is_main else 0.0]
        else:
            w = float(n) if k in batch_keys and ctx.enabled else 1.0
            vec += [sum(v) * w, len(v) * w]
    tot = ctx.all_reduce(vec, "sum") if keys else torch.zeros(0)
    return {k: float(tot[2 * i] / tot[2 * i + 1]) for i, k in enumerate(keys) if float(tot[2 * i + 1]) > 0}
