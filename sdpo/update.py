"""One policy update on a batch of scored rollouts: the part of a training step shared by the trainer
(``sdpo.trainer``) and test-time self-distillation (``sdpo.ttt``).

Paper Sec. 3: SDPO re-scores each rollout under a teacher context (a successful sibling and/or the
environment's feedback) and distils the teacher's next-token distribution into the student. GRPO (the
baseline) uses group-normalised scalar rewards; ``hybrid`` mixes the two, either their losses
(``hybrid_mix="loss"``, TRL's ``distillation_weight``) or their advantages (``hybrid_mix="advantage"``, the
paper's Sec. 4 combination A = λ·A_GRPO + (1 − λ)·A_SDPO).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace

import torch

from sdpo.config import ConfigError, PolicyConfig, SelfDistillationConfig, _choice, _number, build_dataclass
from sdpo.distributed import SINGLE, DistContext
from sdpo.losses import (
    aggregation_weights,
    group_advantages,
    grpo_loss,
    sdpo_loss,
    sdpo_loss_from_hidden,
    token_logprobs,
    token_logprobs_from_hidden,
)
from sdpo.precision import step_tensors
from sdpo.reprompt import (
    build_teacher_messages,
    reprompt_metrics,
    response_hidden,
    response_logits,
    student_inputs,
    tokenize_teacher_inputs,
)
from sdpo.rollout.base import Rollout
from sdpo.rollout.correction import rollout_is_weights
from sdpo.teacher import _plain_head_weight, eval_mode

LOSSES = ("sdpo", "grpo", "hybrid")
HYBRID_MIXES = ("loss", "advantage")
CODE_FEEDBACK = ("all_tests", "first_failure")


@dataclass
class UpdateConfig(PolicyConfig):
    """Settings of the policy update; the policy and sampling settings (adapter, LoRA, n, max_new_tokens,
    temperature, ...) are ``PolicyConfig``'s. ``TrainConfig`` and ``SolveConfig`` extend it.

    loss: "sdpo" | "grpo" | "hybrid". hybrid_weight w is the SDPO share of a hybrid, mixed by ``hybrid_mix``:
        "loss": (1 - w) * L_GRPO + w * L_SDPO (TRL's ``distillation_weight`` = w);
        "advantage": one PPO-clipped policy-gradient loss on the per-token advantage
        λ * A_GRPO + (1 - λ) * A_SDPO with λ = 1 - w (the paper's Sec. 4 λ weighs GRPO), where A_SDPO on a
        response token y_t is log π_teacher(y_t) - log π(y_t) (detached, at self_distillation.temperature; zero
        on samples without a teacher context): the sampled-token form of SDPO's advantage, so it needs
        self_distillation.mode "token"; the PPO clip of the mixed surrogate replaces self_distillation.is_clip.
        On the first, on-policy step with seq-mean-token-mean-all the two mixes take the same gradient; they
        differ once ratios leave 1 (later mini-batches / epochs) and the clip engages on the mixed advantage.
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
    ``_plain_head_weight`` on the actual model)."""
    sd = cfg.self_distillation
    if cfg.loss != "grpo" and sd.teacher_regularization == "trust-region" and cfg.adapter == "full":
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


def _pad(rows: list[list], value, dtype, width: int | None = None) -> torch.Tensor:
    width = width or max(1, max(len(r) for r in rows))
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


def _agg_denominator(mask: torch.Tensor, mode: str) -> float:
    """The batch-dependent normaliser of ``aggregation_weights(mask, mode)`` before clamping, additive over
    data-parallel ranks: the token count (token-mean), the active-sequence count (seq-mean-token-sum,
    seq-mean-token-mean), the sequence count (seq-mean-token-mean-all); 0 for seq-mean-token-sum-norm, whose
    normaliser is a constant (loss_scale_factor, else the global padded width)."""
    if mode == "token-mean":
        return float(mask.float().sum())
    if mode == "seq-mean-token-sum-norm":
        return 0.0
    if mode == "seq-mean-token-mean-all":
        return float(mask.shape[0])
    return float((mask.float().sum(-1) > 0).sum())


def _acc_scale(mask_mini: torch.Tensor, rows: torch.Tensor, mode: str,
               global_denominator: float | None = None) -> float:
    """Gradient-accumulation scale of a micro-batch: its share of the mini-batch's aggregation weights over
    its own (the loss functions normalise per micro-batch), so that accumulated micro-batch gradients equal the
    gradient of the mini-batch loss exactly, in every ``loss_agg_mode``.

    global_denominator: ``_agg_denominator`` of the *global* mini-batch (summed over data-parallel ranks,
    ``mask_mini`` being this rank's part); the weights are then those of the global mini-batch, so the sum over
    ranks of the local gradients is the global mini-batch gradient. None = this process holds the whole batch."""
    w_mini = aggregation_weights(mask_mini, mode, torch.float64)[rows].sum()
    w_micro = aggregation_weights(mask_mini[rows], mode, torch.float64).sum()
    if float(w_micro) == 0.0:
        return 0.0
    scale = float(w_mini / w_micro)
    if global_denominator is not None and mode != "seq-mean-token-sum-norm":
        scale *= max(_agg_denominator(mask_mini, mode), 1.0) / max(global_denominator, 1.0)
    return scale


@torch.no_grad()
def _old_logprobs(model, batch, ids, mask, micro: int, temperature: float, fused: bool,
                  n_passes: int = 0) -> torch.Tensor:
    """Log-probs of ``ids`` under ``model`` in micro-batches; at least ``n_passes`` forwards (extra ones repeat
    row 0 and are discarded: under FSDP every rank must run the same number of forwards). In eval mode (no
    dropout), as the reference's ``compute_log_prob``, whatever mode an earlier update left the model in."""
    out = torch.zeros(ids.shape, dtype=torch.float32)
    chunks = _split_rows(len(ids), micro)
    chunks += [None] * max(0, n_passes - len(chunks))
    with eval_mode(model):
        for rows in chunks:
            dummy = rows is None
            rows = torch.tensor([0]) if dummy else rows
            mb = _trim(_index(batch, rows)).to(_device(model))
            if fused:
                lp = token_logprobs_from_hidden(response_hidden(model, mb), _plain_head_weight(model),
                                                ids[rows].to(_device(model)), temperature)
            else:
                lp = token_logprobs(response_logits(model, mb), ids[rows].to(_device(model)), temperature)
            if not dummy:
                out[rows] = lp.float().cpu()
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _global_layout(ctx: DistContext, n: int) -> tuple[list[int], int]:
    """Sample counts of every rank and this rank's offset in the global (rank-ordered) batch."""
    sizes = [int(x) for x in ctx.all_gather_object(n)]
    return sizes, sum(sizes[:ctx.rank])


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


@torch.no_grad()
def _sdpo_token_advantages(teacher, t_batch, student_lp: torch.Tensor, student_out: torch.Tensor,
                           head_w: torch.Tensor | None, ids: torch.Tensor, cfg: UpdateConfig) -> torch.Tensor:
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


def policy_update(model, optimizer, teacher, tokenizer, batch: ScoredBatch, cfg: UpdateConfig, *,
                  seed: int = 0, dist: DistContext | None = None, should_stop=None) -> dict[str, float]:
    """Run ``cfg.ppo_epochs`` passes of mini-batch optimizer steps on ``batch``; return mean metrics.

    The teacher is *not* updated here (the caller does it once per training step, after all mini-batches).

    dist: data parallelism (:mod:`sdpo.distributed`). ``batch`` is then this rank's block of the global batch
    (ranks in order, whole groups per rank); mini-batches are slices of the *global* sample order, losses are
    normalised by global aggregation weights and gradients summed over ranks, so every rank takes the same
    optimizer step as one process holding the global batch. Every rank runs the same number of forward /
    backward passes and collectives (zero-weight dummy micro-batches pad the ranks with fewer rows).
    should_stop: single process only; asked before every micro-batch, raising ``sdpo.callbacks.StopRequested``
        when it says stop (the optimizer steps already taken stay taken).
    """
    ctx = dist or SINGLE
    sd = cfg.self_distillation
    if sd.loss_scale_factor is None:
        # seq-mean-token-sum-norm divides by a constant: the max response length (as verl)
        sd = replace(sd, loss_scale_factor=cfg.max_new_tokens)
    device = _device(model)
    n = len(batch)
    if n == 0:
        raise ValueError("policy_update: empty batch (each data-parallel rank needs at least one sample)")
    use_sdpo = cfg.loss in ("sdpo", "hybrid")
    use_grpo = cfg.loss in ("grpo", "hybrid")
    mix_advantages = cfg.loss == "hybrid" and cfg.hybrid_mix == "advantage"  # one PG loss, no SDPO loss term
    metrics: dict[str, list[float]] = defaultdict(list)
    batch_keys: set[str] = set()
    sizes, offset = _global_layout(ctx, n)
    n_global = sum(sizes)

    # 1. Tensors: right-padded responses (to the global width: seq-mean-token-sum-norm without a
    #    loss_scale_factor divides by it),
    #    sampler log-probs, student input layout.
    width = None
    if ctx.enabled:
        width = int(ctx.all_reduce([max(1, max(len(r.response_ids) for r in batch.rollouts))], "max")[0])
    response_ids = _pad([r.response_ids for r in batch.rollouts], tokenizer.pad_token_id, torch.long, width)
    response_mask = _pad([[1] * len(r.response_ids) for r in batch.rollouts], 0, torch.long, width)
    sampler_lp = _pad([r.logprobs for r in batch.rollouts], 0.0, torch.float32, width)
    s_batch = student_inputs([r.prompt_ids for r in batch.rollouts], response_ids, response_mask,
                             tokenizer.pad_token_id)
    rewards = torch.tensor(batch.rewards, dtype=torch.float32)

    # 2. GRPO advantages (per group of one question's rollouts; groups never straddle ranks).
    advantages = group_advantages(rewards, batch.group_ids, norm_by_std=cfg.norm_adv_by_std)

    # 3. Teacher contexts: successful sibling and/or feedback; samples with neither are masked out.
    if use_sdpo:
        contexts = build_teacher_messages(batch.prompts, [r.text for r in batch.rollouts], batch.rewards,
                                          batch.group_ids, batch.feedback, sd)
        for k, v in reprompt_metrics(contexts, batch.rewards, batch.group_ids, batch.feedback, sd).items():
            metrics[k].append(v)
            batch_keys.add(k)
        t_batch = tokenize_teacher_inputs(tokenizer, contexts, response_ids, response_mask,
                                          sd.max_reprompt_len, sd.reprompt_truncation)
        sample_mask = torch.tensor([float(c.distill_mask) for c in contexts])
    else:
        sample_mask = torch.ones(n)

    # 4. Old log-probs under the policy before the first update (IS weights, PPO ratios, rollout correction).
    n_passes = -(-max(sizes) // cfg.micro_batch_size)
    need_old = use_grpo or sd.is_clip is not None or cfg.rollout_correction_threshold is not None
    old_lp = _old_logprobs(model, s_batch, response_ids, response_mask, cfg.micro_batch_size, cfg.temperature,
                           cfg.fused_lm_head, n_passes) if need_old else None
    old_lp_sd = old_lp
    if need_old and use_sdpo and sd.is_clip is not None and sd.temperature != cfg.temperature:
        old_lp_sd = _old_logprobs(model, s_batch, response_ids, response_mask, cfg.micro_batch_size,
                                  sd.temperature, cfg.fused_lm_head, n_passes)
    rc_weights = None
    if cfg.rollout_correction_threshold is not None:
        rc_weights, rc_metrics = rollout_is_weights(old_lp, sampler_lp, response_mask,
                                                    cfg.rollout_correction_threshold)
        for k, v in rc_metrics.items():
            metrics[k].append(v)
            batch_keys.add(k)

    # 5. Mini-batch optimizer steps over the global sample order; micro-batch forward/backward with exact
    #    accumulation scaling under the global mini-batch's aggregation weights; gradients summed over ranks.
    mini = cfg.mini_batch_size or n_global
    rng = random.Random(seed)
    sd_mask = response_mask.float() * sample_mask[:, None]
    params = [p for p in model.parameters() if p.requires_grad]
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    model.train()
    n_steps = 0
    for _epoch in range(cfg.ppo_epochs):
        order = list(range(n_global))
        if cfg.ppo_epochs > 1 or mini < n_global:
            rng.shuffle(order)
        for start in range(0, n_global, mini):
            chosen = order[start:start + mini]
            mini_rows = torch.tensor(sorted(g - offset for g in chosen if offset <= g < offset + n),
                                     dtype=torch.long)
            # every rank runs as many micro-batches as the rank with the most rows in this mini-batch
            per_rank = [sum(1 for g in chosen if s0 <= g < s0 + sz) for s0, sz in zip(starts, sizes, strict=True)]
            n_micro = max(-(-c // cfg.micro_batch_size) for c in per_rank)
            denom = None
            if ctx.enabled:
                counts = [_agg_denominator(sd_mask[mini_rows], sd.loss_agg_mode),
                          _agg_denominator(response_mask[mini_rows], sd.loss_agg_mode)]
                denom = [float(x) for x in ctx.all_reduce(counts, "sum")]
            optimizer.zero_grad(set_to_none=True)
            chunks: list[torch.Tensor | None] = list(_split_rows(len(mini_rows), cfg.micro_batch_size))
            chunks += [None] * (n_micro - len(chunks))
            for local in chunks:
                if should_stop is not None and should_stop():
                    from sdpo.callbacks import StopRequested

                    raise StopRequested
                dummy = local is None  # zero-weight pass: same forward/backward/collectives, no contribution
                rows = torch.tensor([0]) if dummy else mini_rows[local]
                mb = _trim(_index(s_batch, rows)).to(device)
                ids = response_ids[rows].to(device)
                rmask = response_mask[rows].to(device)
                rcw = rc_weights[rows].to(device) if rc_weights is not None else None
                total = torch.zeros((), device=device)
                if cfg.fused_lm_head:
                    head_w = _plain_head_weight(model)  # refuses a LoRA-wrapped / biased head
                    s_hidden = response_hidden(model, mb)
                else:
                    s_logits = response_logits(model, mb)
                if use_sdpo:
                    tb = _trim(_index(t_batch, rows)).to(device)
                if use_sdpo and not mix_advantages:
                    scale = 0.0 if dummy else _acc_scale(sd_mask[mini_rows], local, sd.loss_agg_mode,
                                                         denom[0] if denom else None)
                    kw = dict(old_logprobs=old_lp_sd[rows].to(device) if sd.is_clip is not None else None,
                              sample_mask=sample_mask[rows].to(device), rollout_is_weights=rcw)
                    if cfg.fused_lm_head:
                        # the teacher's own head: an EMA teacher of a full model has its own (EMA'd) weights
                        t_hidden, t_head_w = teacher.hidden(tb)
                        l_sd, m_sd = sdpo_loss_from_hidden(s_hidden, t_hidden, head_w, ids, rmask, sd,
                                                           teacher_lm_head_weight=t_head_w, **kw)
                    else:
                        l_sd, m_sd = sdpo_loss(s_logits, teacher.logits(tb), ids, rmask, sd, **kw)
                    w = cfg.hybrid_weight if cfg.loss == "hybrid" else 1.0
                    total = total + w * scale * l_sd
                    if not dummy:
                        for k, v in m_sd.items():
                            metrics[k].append(v)
                if use_grpo:
                    if cfg.fused_lm_head:
                        lp = token_logprobs_from_hidden(s_hidden, head_w, ids, cfg.temperature)
                    else:
                        lp = token_logprobs(s_logits, ids, cfg.temperature)
                    scale = 0.0 if dummy else _acc_scale(response_mask[mini_rows].float(), local,
                                                         sd.loss_agg_mode, denom[1] if denom else None)
                    adv = advantages[rows].to(device)
                    w = (1.0 - cfg.hybrid_weight) if cfg.loss == "hybrid" else 1.0
                    if mix_advantages:
                        a_sd = _sdpo_token_advantages(teacher, tb, lp, s_hidden if cfg.fused_lm_head else s_logits,
                                                      head_w if cfg.fused_lm_head else None, ids, cfg)
                        a_sd = a_sd * sample_mask[rows].to(device)[:, None]
                        lam = 1.0 - cfg.hybrid_weight
                        adv, w = lam * adv[:, None] + (1.0 - lam) * a_sd, 1.0
                        if not dummy:
                            metrics["hybrid/sdpo_advantage_mean"].append(
                                float((a_sd * rmask).sum() / rmask.sum().clamp(min=1)))
                    l_pg, m_pg = grpo_loss(lp, old_lp[rows].to(device), adv, rmask,
                                           clip_ratio_low=cfg.clip_ratio_low, clip_ratio_high=cfg.clip_ratio_high,
                                           clip_ratio_c=cfg.clip_ratio_c, loss_agg_mode=sd.loss_agg_mode,
                                           loss_scale_factor=sd.loss_scale_factor, rollout_is_weights=rcw)
                    total = total + w * scale * l_pg
                    if not dummy:
                        for k, v in m_pg.items():
                            metrics[k].append(v)
                total.backward()
                metrics["loss"].append(float(total.detach()))
            # float32 masters (bf16 / fp16 full fine-tuning) take the gradients before they are reduced and clipped
            grads = step_tensors(optimizer, params)
            ctx.all_reduce_grads(grads)
            grad_norm = torch.nn.utils.clip_grad_norm_(grads, cfg.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                grad_norm = grad_norm.full_tensor()
            metrics["grad_norm"].append(float(grad_norm))
            if torch.isfinite(grad_norm):  # the same decision on every rank (reduced gradients)
                optimizer.step()
                n_steps += 1
            else:
                metrics["update/skipped_nonfinite"].append(1.0)
            optimizer.zero_grad(set_to_none=True)
    # "loss" is the sum of scaled micro-batch losses of each optimizer step; report it per optimizer step
    steps = cfg.ppo_epochs * len(range(0, n_global, mini))
    out = _reduce_metrics(metrics, batch_keys, n, max(steps, 1), ctx)
    out["update/optimizer_steps"] = float(n_steps)  # steps taken (a skipped one is not): the EMA teacher's cue
    return out
