"""One policy update on a batch of scored rollouts: the part of a training step shared by the trainer
(``sdpo.trainer``) and test-time self-distillation (``sdpo.ttt``).

Paper Sec. 3: SDPO re-scores each rollout under a teacher context (a successful sibling and/or the
environment's feedback) and distils the teacher's next-token distribution into the student. GRPO (the
baseline) uses group-normalised scalar rewards; ``hybrid`` mixes both losses.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from sdpo.config import ConfigError, SelfDistillationConfig, _choice, _number, build_dataclass
from sdpo.losses import (
    aggregation_weights,
    group_advantages,
    grpo_loss,
    sdpo_loss,
    sdpo_loss_from_hidden,
    token_logprobs,
    token_logprobs_from_hidden,
)
from sdpo.reprompt import (
    build_teacher_messages,
    output_head,
    reprompt_metrics,
    response_hidden,
    response_logits,
    student_inputs,
    tokenize_teacher_inputs,
)
from sdpo.rollout.base import Rollout
from sdpo.rollout.correction import rollout_is_weights

LOSSES = ("sdpo", "grpo", "hybrid")


@dataclass
class UpdateConfig:
    """Settings of the policy update (shared by ``TrainConfig`` and ``SolveConfig``, which extend it).

    loss: "sdpo" | "grpo" | "hybrid" (= (1 - hybrid_weight) * grpo + hybrid_weight * sdpo).
    temperature: the sampling temperature; GRPO ratios and rollout correction use log-probs at it.
    micro_batch_size: samples per forward/backward. mini_batch_size: samples per optimizer step
        (None = the whole batch, i.e. one on-policy step). ppo_epochs: passes over the batch.
    rollout_correction_threshold: truncation of the token-level trainer/sampler ratio (None = off).
    """

    loss: str = "sdpo"
    hybrid_weight: float = 0.5
    self_distillation: SelfDistillationConfig = field(default_factory=SelfDistillationConfig)
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    micro_batch_size: int = 4
    mini_batch_size: int | None = None
    ppo_epochs: int = 1
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    clip_ratio_c: float = 3.0
    norm_adv_by_std: bool = True
    rollout_correction_threshold: float | None = 2.0
    fused_lm_head: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.self_distillation, dict):
            self.self_distillation = build_dataclass(SelfDistillationConfig, self.self_distillation,
                                                     prefix="self_distillation.")
        if not isinstance(self.self_distillation, SelfDistillationConfig):
            raise ConfigError("self_distillation", f"expected a mapping, got {self.self_distillation!r}")
        _choice("loss", self.loss, LOSSES)
        _number("hybrid_weight", self.hybrid_weight, lo=0.0, hi=1.0)
        _number("lr", self.lr, lo=0.0, lo_open=True)
        _number("weight_decay", self.weight_decay, lo=0.0)
        _number("max_grad_norm", self.max_grad_norm, lo=0.0, lo_open=True)
        _number("temperature", self.temperature, lo=0.0, lo_open=True)
        _number("micro_batch_size", self.micro_batch_size, lo=1, integer=True)
        if self.mini_batch_size is not None:
            _number("mini_batch_size", self.mini_batch_size, lo=1, integer=True)
        _number("ppo_epochs", self.ppo_epochs, lo=1, integer=True)
        _number("clip_ratio_low", self.clip_ratio_low, lo=0.0, hi=1.0, hi_open=True)
        _number("clip_ratio_high", self.clip_ratio_high, lo=0.0)
        _number("clip_ratio_c", self.clip_ratio_c, lo=1.0, lo_open=True)
        if self.rollout_correction_threshold is not None:
            _number("rollout_correction_threshold", self.rollout_correction_threshold, lo=1.0)


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


def _pad(rows: list[list], value, dtype) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.tensor(r, dtype=dtype)
    return out


def _index(batch, idx: torch.Tensor):
    return type(batch)(batch.input_ids[idx], batch.attention_mask[idx], batch.position_ids[idx],
                       batch.response_start)


def _trim(batch):
    """Drop left-padding columns that are padding in every row of a micro-batch."""
    keep = int(batch.attention_mask[:, :batch.response_start].sum(-1).max())
    cut = batch.response_start - max(keep, 1)
    return type(batch)(batch.input_ids[:, cut:], batch.attention_mask[:, cut:], batch.position_ids[:, cut:],
                       batch.response_start - cut)


def _split_rows(n: int, size: int) -> list[torch.Tensor]:
    return [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]


def _acc_scale(mask_mini: torch.Tensor, rows: torch.Tensor, mode: str) -> float:
    """Gradient-accumulation scale of a micro-batch: its share of the mini-batch's aggregation weights over
    its own (the loss functions normalise per micro-batch), so that accumulated micro-batch gradients equal the
    gradient of the mini-batch loss exactly, in every ``loss_agg_mode``."""
    w_mini = aggregation_weights(mask_mini, mode)[rows].sum()
    w_micro = aggregation_weights(mask_mini[rows], mode).sum()
    return 0.0 if float(w_micro) == 0.0 else float(w_mini / w_micro)


@torch.no_grad()
def _old_logprobs(model, batch, ids, mask, micro: int, temperature: float, fused: bool) -> torch.Tensor:
    out = torch.zeros(ids.shape, dtype=torch.float32)
    for rows in _split_rows(len(ids), micro):
        mb = _trim(_index(batch, rows)).to(_device(model))
        if fused:
            lp = token_logprobs_from_hidden(response_hidden(model, mb), output_head(model).weight,
                                            ids[rows].to(_device(model)), temperature)
        else:
            lp = token_logprobs(response_logits(model, mb), ids[rows].to(_device(model)), temperature)
        out[rows] = lp.float().cpu()
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def policy_update(model, optimizer, teacher, tokenizer, batch: ScoredBatch, cfg: UpdateConfig, *,
                  seed: int = 0) -> dict[str, float]:
    """Run ``cfg.ppo_epochs`` passes of mini-batch optimizer steps on ``batch``; return mean metrics.

    The teacher is *not* updated here (the caller does it once per training step, after all mini-batches).
    """
    sd = cfg.self_distillation
    device = _device(model)
    n = len(batch)
    use_sdpo = cfg.loss in ("sdpo", "hybrid")
    use_grpo = cfg.loss in ("grpo", "hybrid")
    metrics: dict[str, list[float]] = defaultdict(list)

    # 1. Tensors: right-padded responses, sampler log-probs, student input layout.
    response_ids = _pad([r.response_ids for r in batch.rollouts], tokenizer.pad_token_id, torch.long)
    response_mask = _pad([[1] * len(r.response_ids) for r in batch.rollouts], 0, torch.long)
    sampler_lp = _pad([r.logprobs for r in batch.rollouts], 0.0, torch.float32)
    s_batch = student_inputs([r.prompt_ids for r in batch.rollouts], response_ids, response_mask,
                             tokenizer.pad_token_id)
    rewards = torch.tensor(batch.rewards, dtype=torch.float32)

    # 2. GRPO advantages (per group of one question's rollouts).
    advantages = group_advantages(rewards, batch.group_ids, norm_by_std=cfg.norm_adv_by_std)

    # 3. Teacher contexts: successful sibling and/or feedback; samples with neither are masked out.
    if use_sdpo:
        contexts = build_teacher_messages(batch.prompts, [r.text for r in batch.rollouts], batch.rewards,
                                          batch.group_ids, batch.feedback, sd)
        for k, v in reprompt_metrics(contexts, batch.rewards, batch.group_ids, batch.feedback, sd).items():
            metrics[k].append(v)
        t_batch = tokenize_teacher_inputs(tokenizer, contexts, response_ids, response_mask,
                                          sd.max_reprompt_len, sd.reprompt_truncation)
        sample_mask = torch.tensor([float(c.distill_mask) for c in contexts])
    else:
        sample_mask = torch.ones(n)

    # 4. Old log-probs under the policy before the first update (IS weights, PPO ratios, rollout correction).
    need_old = use_grpo or sd.is_clip is not None or cfg.rollout_correction_threshold is not None
    old_lp = _old_logprobs(model, s_batch, response_ids, response_mask, cfg.micro_batch_size, cfg.temperature,
                           cfg.fused_lm_head) if need_old else None
    old_lp_sd = old_lp
    if need_old and use_sdpo and sd.is_clip is not None and sd.temperature != cfg.temperature:
        old_lp_sd = _old_logprobs(model, s_batch, response_ids, response_mask, cfg.micro_batch_size,
                                  sd.temperature, cfg.fused_lm_head)
    rc_weights = None
    if cfg.rollout_correction_threshold is not None:
        rc_weights, rc_metrics = rollout_is_weights(old_lp, sampler_lp, response_mask,
                                                    cfg.rollout_correction_threshold)
        for k, v in rc_metrics.items():
            metrics[k].append(v)

    # 5. Mini-batch optimizer steps; micro-batch forward/backward with exact accumulation scaling.
    mini = cfg.mini_batch_size or n
    rng = random.Random(seed)
    sd_mask = response_mask.float() * sample_mask[:, None]
    model.train()
    for _epoch in range(cfg.ppo_epochs):
        order = list(range(n))
        if cfg.ppo_epochs > 1 or mini < n:
            rng.shuffle(order)
        order_t = torch.tensor(order)
        for start in range(0, n, mini):
            mini_rows = order_t[start:start + mini].sort().values
            optimizer.zero_grad(set_to_none=True)
            for local in _split_rows(len(mini_rows), cfg.micro_batch_size):
                rows = mini_rows[local]
                mb = _trim(_index(s_batch, rows)).to(device)
                ids = response_ids[rows].to(device)
                rmask = response_mask[rows].to(device)
                rcw = rc_weights[rows].to(device) if rc_weights is not None else None
                total = torch.zeros((), device=device)
                if cfg.fused_lm_head:
                    s_hidden = response_hidden(model, mb)
                    head_w = output_head(model).weight
                else:
                    s_logits = response_logits(model, mb)
                if use_sdpo:
                    tb = _trim(_index(t_batch, rows)).to(device)
                    scale = _acc_scale(sd_mask[mini_rows], local, sd.loss_agg_mode)
                    kw = dict(old_logprobs=old_lp_sd[rows].to(device) if sd.is_clip is not None else None,
                              sample_mask=sample_mask[rows].to(device), rollout_is_weights=rcw)
                    if cfg.fused_lm_head:
                        t_hidden, _ = teacher.hidden(tb)
                        l_sd, m_sd = sdpo_loss_from_hidden(s_hidden, t_hidden, head_w, ids, rmask, sd, **kw)
                    else:
                        l_sd, m_sd = sdpo_loss(s_logits, teacher.logits(tb), ids, rmask, sd, **kw)
                    w = cfg.hybrid_weight if cfg.loss == "hybrid" else 1.0
                    total = total + w * scale * l_sd
                    for k, v in m_sd.items():
                        metrics[k].append(v)
                if use_grpo:
                    if cfg.fused_lm_head:
                        lp = token_logprobs_from_hidden(s_hidden, head_w, ids, cfg.temperature)
                    else:
                        lp = token_logprobs(s_logits, ids, cfg.temperature)
                    scale = _acc_scale(response_mask[mini_rows].float(), local, sd.loss_agg_mode)
                    l_pg, m_pg = grpo_loss(lp, old_lp[rows].to(device), advantages[rows].to(device), rmask,
                                           clip_ratio_low=cfg.clip_ratio_low, clip_ratio_high=cfg.clip_ratio_high,
                                           clip_ratio_c=cfg.clip_ratio_c, loss_agg_mode=sd.loss_agg_mode,
                                           rollout_is_weights=rcw)
                    w = (1.0 - cfg.hybrid_weight) if cfg.loss == "hybrid" else 1.0
                    total = total + w * scale * l_pg
                    for k, v in m_pg.items():
                        metrics[k].append(v)
                total.backward()
                metrics["loss"].append(float(total.detach()))
            params = [p for p in model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            metrics["grad_norm"].append(float(grad_norm))
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:
                metrics["update/skipped_nonfinite"].append(1.0)
            optimizer.zero_grad(set_to_none=True)
    out = {k: float(sum(v) / len(v)) for k, v in metrics.items() if v}
    # "loss" is the sum of scaled micro-batch losses of each optimizer step; report it per optimizer step
    steps = cfg.ppo_epochs * len(range(0, n, mini))
    out["loss"] = float(sum(metrics["loss"]) / max(steps, 1))
    return out
