"""The SDPO loss on [B, T, V] logits as a memory-lean chunked kernel, and per-token log-probs (paper Sec. 3).

The same values and gradients as the formula, ``sdpo.losses.reference.sdpo_loss_reference`` (the tests compare
them in float64), without its memory: the SDPO loss never materialises a full-vocabulary log-softmax of either
side. Positions are processed in chunks of rows; per chunk the student/teacher log-softmax, the top-k support,
the per-position divergence and *its gradient* with respect to the student logits are computed at once (the
loss is a fixed linear aggregation of per-token terms whose weights are known before the forward pass,
``sdpo.losses.aggregation``, so the gradient can be formed eagerly, like fused linear-cross-entropy kernels).
The only [B, T, V] tensor this module allocates is the gradient of the student logits, which autograd needs
anyway (the student's softmax is written straight into it). Consequence: ``backward`` may run once per loss
(``retain_graph`` reuse raises a clear error). ``sdpo.losses.hidden`` runs the same chunk kernel on logits
formed chunk by chunk from hidden states, never holding [B, T, V] at all.

Shapes: B sequences, T response positions, V vocabulary entries. Logits are already aligned to response
positions: position ``t`` predicts ``response_ids[:, t]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sdpo.config import LOSS_AGG_MODES, SelfDistillationConfig
from sdpo.losses.aggregation import aggregation_weights
from sdpo.losses.reference import LOG_RATIO_CLAMP, TAIL_LOG_MASS_MAX

#: Bytes of one [rows, V] float32 chunk for the logits path (rows = CHUNK_BYTES // (4 V), at least 1).
CHUNK_BYTES = 32 * 2**20
#: Largest temporary of the row-blocked full-width operations of the chunk kernel (entropy dot product,
#: teacher log-softmax): a logits-path chunk (CHUNK_BYTES) is one block, a from-hidden chunk a few. Smaller
#: blocks are faster on one quiet core (cache-resident) but issue many short parallel regions, which cost far
#: more on shared, loaded cores than they save.
_ROW_BLOCK_BYTES = CHUNK_BYTES

# Rows of the per-token statistics tensor returned by the chunked kernels.
_DIV, _ISW, _CLIPPED, _ENT, _TOPK_MASS, _N_STATS = 0, 1, 2, 3, 4, 5


# --------------------------------------------------------------------------------------------------
# Divergences on (log-)distributions, summed over the last dimension
# --------------------------------------------------------------------------------------------------

def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) = sum p (log p - log q) over the last dim (same convention as F.kl_div(log_target=True))."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _divergence(ls: Tensor, lt: Tensor, alpha: float) -> Tensor:
    """Generalised Jensen-Shannon divergence of student ``ls`` and teacher ``lt`` log-probs [..., K] -> [...].

    alpha == 0: KL(teacher || student); alpha == 1: KL(student || teacher); otherwise with
    M = log((1 - alpha) p_s + alpha p_t): (1 - alpha) KL(s || M) + alpha KL(t || M).
    """
    if alpha == 0.0:
        return _kl(lt, ls)
    if alpha == 1.0:
        return _kl(ls, lt)
    mix = torch.logaddexp(ls + math.log(1.0 - alpha), lt + math.log(alpha))
    return (1.0 - alpha) * _kl(ls, mix) + alpha * _kl(lt, mix)


def _with_tail(lp: Tensor) -> Tensor:
    """Append the bucket log(1 - sum exp(lp)) to top-k log-probs [..., k] -> [..., k + 1]."""
    log_mass = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=TAIL_LOG_MASS_MAX)
    return torch.cat([lp, torch.log(-torch.expm1(log_mass))], dim=-1)


def _renormalise(lp: Tensor) -> Tensor:
    return lp - torch.logsumexp(lp, dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# The chunk kernel shared by the logits and the from-hidden paths
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    mode: str
    topk: int | None
    add_tail: bool
    alpha: float
    temperature: float
    is_clip: float | None
    need_grad: bool


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _by_rows(fn: Callable[..., Tensor], *xs: Tensor) -> Tensor:
    """``fn(*xs)`` for a row-wise reduction fn: [c, V] -> [c], evaluated on blocks of rows so that its
    temporaries stay cache-sized (``_ROW_BLOCK_BYTES``) instead of [c, V]."""
    c, v = xs[0].shape
    step = max(1, _ROW_BLOCK_BYTES // max(1, v * xs[0].element_size()))
    if step >= c:
        return fn(*xs)
    out = torch.empty(c, dtype=xs[0].dtype, device=xs[0].device)
    for r0 in range(0, c, step):
        out[r0:r0 + step] = fn(*(x[r0:r0 + step] for x in xs))
    return out


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    return _by_rows(torch.linalg.vecdot, a, b)


def _teacher_logprobs(tx: Tensor, idx: Tensor | None, own: bool) -> Tensor:
    """log_softmax(tx) [c, V] at ``idx`` [c, k] (gathered), or everywhere when idx is None (then in place in
    ``tx`` when ``own``), on row blocks of at most ``_ROW_BLOCK_BYTES``: no [c, V] temporary beyond one block."""
    c, v = tx.shape
    step = max(1, _ROW_BLOCK_BYTES // max(1, v * tx.element_size()))
    if step >= c and not (own and idx is None):
        lp = torch.log_softmax(tx, dim=-1)
        return lp if idx is None else lp.gather(1, idx)
    out = (tx if own else torch.empty_like(tx)) if idx is None else \
        torch.empty(idx.shape, dtype=tx.dtype, device=tx.device)
    for r0 in range(0, c, step):
        lp = torch.log_softmax(tx[r0:r0 + step], dim=-1)
        out[r0:r0 + step] = lp if idx is None else lp.gather(1, idx[r0:r0 + step])
    return out


def _sdpo_chunk(
    s_logits: Tensor, teacher: Callable[[], Tensor], ids: Tensor, weight: Tensor, old: Tensor | None,
    rollout_w: Tensor | None, plan: _Plan, grad_out: Tensor | None, owned: bool = False,
) -> tuple[Tensor, Tensor]:
    """SDPO on one chunk of c positions.

    s_logits: [c, V] raw student logits (any float dtype); teacher(): the [c, V] teacher logits, called only
    once the student's logits are no longer needed (so it may write them into the same buffer); ids: [c]
    sampled tokens; weight: [c] aggregation weights (0 = masked); old / rollout_w: [c] or None. grad_out:
    [c, V] compute-dtype buffer receiving d(sum(weight * loss))/d(s_logits) when plan.need_grad.
    owned: s_logits and teacher()'s result are scratch buffers the kernel may overwrite (from-hidden path).
    Top-k and token mode, besides grad_out and the inputs: with owned buffers only temporaries of one row block
    (``_ROW_BLOCK_BYTES``); otherwise at most two [c, V] temporaries at a time (a temperature-scaled copy and
    the teacher's log-softmax). Full-vocabulary mode adds the [c, V] support tensors of the divergence.
    Returns (weighted loss sum, stats [_N_STATS, c]).
    """
    cd = _compute_dtype(s_logits.dtype)
    c = s_logits.shape[0]
    temp = plan.temperature
    x = s_logits.to(cd)
    own = owned or x.data_ptr() != s_logits.data_ptr()
    del s_logits  # when the caller passed a temporary this frees it as soon as x does
    if temp != 1.0:
        x = x.div_(temp) if own else x / temp
    # Student: one fused softmax, written straight into the gradient buffer when there is one. The
    # log-normaliser comes from the arg-max entry, lse = max(x) - log(max(p)), which is as accurate as
    # log_softmax (p_max >= 1/V never underflows) and saves a full exp pass; log-probs are x[idx] - lse.
    p = torch.softmax(x, dim=-1, out=grad_out) if grad_out is not None else torch.softmax(x, dim=-1)
    lse = x.amax(dim=-1) - torch.log(p.amax(dim=-1))
    entropy = lse - _rowdot(p, x)   # NaN where a logit is -inf (excluded from the metric)
    y = ids[:, None]
    full = plan.mode == "logit" and plan.topk is None
    idx = None
    if plan.mode == "token":
        sel_s = x.gather(1, y) - lse[:, None]
    elif plan.topk is not None:
        top = torch.topk(x, plan.topk, dim=-1, sorted=False)
        idx = torch.cat([top.indices, y], dim=1)
        sel_s = torch.cat([top.values, x.gather(1, y)], dim=1) - lse[:, None]
    else:
        sel_s = x - lse[:, None]
    del x
    tx = teacher()
    t_raw = tx
    tx = tx.to(cd)
    own_t = owned or tx.data_ptr() != t_raw.data_ptr()
    del t_raw
    if temp != 1.0:
        tx = tx.div_(temp) if own_t else tx / temp
    sel_t = _teacher_logprobs(tx, None if full else (y if idx is None else idx), own_t)
    del tx

    stats = torch.zeros(_N_STATS, c, dtype=cd, device=ids.device)
    with torch.enable_grad():
        leaf = sel_s.detach().requires_grad_(plan.need_grad)
        lp_y = leaf.gather(1, y).squeeze(1) if full else leaf[:, -1]
        lt_y = sel_t.gather(1, y).squeeze(1) if full else sel_t[:, -1]
        if plan.mode == "token":
            div = (lp_y - lt_y).detach()
            per_token = div * lp_y
        else:
            if full:
                ls_d, lt_d = leaf, sel_t
            else:
                ls_k, lt_k = leaf[:, :-1], sel_t[:, :-1]
                stats[_TOPK_MASS] = torch.logsumexp(ls_k.detach(), dim=-1).exp()
                prep = _with_tail if plan.add_tail else _renormalise
                ls_d, lt_d = prep(ls_k), prep(lt_k)
            per_token = _divergence(ls_d, lt_d, plan.alpha)
            div = per_token.detach()
        stats[_DIV] = div
        if plan.is_clip is not None:
            assert old is not None  # _prepare keeps old_logprobs whenever is_clip is set
            ratio = torch.exp((lp_y.detach() - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
            stats[_CLIPPED] = (ratio > plan.is_clip).to(cd)
            ratio = ratio.clamp(max=plan.is_clip)
            per_token = per_token * ratio
            stats[_ISW] = ratio
        else:
            stats[_ISW] = 1.0
            stats[_CLIPPED] = 0.0
        if rollout_w is not None:
            per_token = per_token * rollout_w
        total = (torch.where(weight != 0, per_token, torch.zeros_like(per_token)) * weight).sum()
        g = torch.autograd.grad(total, leaf)[0] if plan.need_grad else None
    del sel_s, sel_t
    stats[_ENT] = entropy
    if g is not None:
        # d/dx of sum_j g_j logp_j(x / T) = (g - (sum_j g_j) softmax) / T, scattered when g is on a subset.
        g = g / temp
        p.mul_(-g.sum(-1, keepdim=True))
        if full:
            p.add_(g)
        else:
            p.scatter_add_(1, idx if idx is not None else y, g)
    return total.detach(), stats


def _row_blocks(active: Tensor, B: int, T: int, rows: int):
    """Yield (b, t0, t1, any_active) for blocks of at most ``rows`` positions of each sequence."""
    act = active.detach().to("cpu", torch.bool)
    for b in range(B):
        for t0 in range(0, T, rows):
            t1 = min(T, t0 + rows)
            yield b, t0, t1, bool(act[b, t0:t1].any())


def _opt_rows(x: Tensor | None, b: int, t0: int, t1: int) -> Tensor | None:
    return None if x is None else x[b, t0:t1]


class _SdpoFromLogits(torch.autograd.Function):
    """Chunked SDPO on [B, T, V] logits; the student-logit gradient is formed during the forward pass."""

    @staticmethod
    def forward(ctx, student, teacher, ids, weight, old, rollout_w, plan: _Plan, rows: int):
        B, T, V = student.shape
        cd = _compute_dtype(student.dtype)
        grad = torch.empty((B, T, V), dtype=student.dtype, device=student.device) if plan.need_grad else None
        total = torch.zeros((), dtype=cd, device=student.device)
        stats = torch.zeros(_N_STATS, B, T, dtype=cd, device=student.device)
        for b, t0, t1, any_active in _row_blocks(weight != 0, B, T, rows):
            if not any_active:
                if grad is not None:
                    grad[b, t0:t1].zero_()
                continue
            buf = None
            if grad is not None:
                buf = grad[b, t0:t1] if grad.dtype == cd else torch.empty((t1 - t0, V), dtype=cd,
                                                                          device=student.device)
            # (the type: ignore: mypy cannot type a lambda with default arguments)
            part, st = _sdpo_chunk(student[b, t0:t1], lambda b=b, t0=t0, t1=t1: teacher[b, t0:t1],  # type: ignore[misc]
                                   ids[b, t0:t1], weight[b, t0:t1], _opt_rows(old, b, t0, t1),
                                   _opt_rows(rollout_w, b, t0, t1), plan, buf)
            if grad is not None and buf is not None and buf.data_ptr() != grad[b, t0:t1].data_ptr():
                grad[b, t0:t1].copy_(buf)
            total += part
            stats[:, b, t0:t1] = st
        ctx.grad = grad
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("sdpo_loss: backward called twice or on a loss computed without grad; "
                               "recompute the loss (retain_graph is not supported)")
        ctx.grad = None  # hand the buffer over so autograd can store it as .grad without a copy
        return _scaled(grad, grad_loss), None, None, None, None, None, None, None


def _scaled(grad: Tensor, grad_loss: Tensor) -> Tensor:
    if grad_loss.device.type == "cpu" and float(grad_loss) == 1.0:
        return grad
    return grad.mul_(grad_loss.to(grad.dtype))


# --------------------------------------------------------------------------------------------------
# Checks, plan and metrics shared by the logits and the from-hidden paths
# --------------------------------------------------------------------------------------------------

def _check_inputs(
    B: int, T: int, V: int, response_ids: Tensor, response_mask: Tensor, cfg: SelfDistillationConfig,
    old_logprobs: Tensor | None, sample_mask: Tensor | None, rollout_is_weights: Tensor | None,
    cd: torch.dtype,
) -> Tensor:
    """Validate the inputs; return the combined mask ``response_mask * sample_mask[:, None]`` [B, T] in ``cd``."""
    if not isinstance(cfg, SelfDistillationConfig):
        raise TypeError(f"cfg must be a SelfDistillationConfig, got {type(cfg).__name__}")
    if cfg.mode == "token" and cfg.alpha != 1.0:
        raise ValueError(f"mode='token' supports only alpha=1.0 (reverse KL), got alpha={cfg.alpha!r}; "
                         "use mode='logit' for other values")
    if cfg.mode not in ("logit", "token"):
        raise ValueError(f"mode={cfg.mode!r}; allowed values are 'logit', 'token'")
    if cfg.loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={cfg.loss_agg_mode!r}; allowed values are {', '.join(LOSS_AGG_MODES)}")
    if cfg.mode == "logit" and cfg.distillation_topk is not None and cfg.distillation_topk > V:
        raise ValueError(f"distillation_topk={cfg.distillation_topk} exceeds the vocabulary size {V}; "
                         "use a smaller k or None for full-vocabulary distillation")
    for name, t, shape in (("response_ids", response_ids, (B, T)), ("response_mask", response_mask, (B, T)),
                           ("old_logprobs", old_logprobs, (B, T)), ("sample_mask", sample_mask, (B,)),
                           ("rollout_is_weights", rollout_is_weights, (B, T))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if response_ids.is_floating_point() or response_ids.is_complex() or response_ids.dtype == torch.bool:
        raise ValueError(f"response_ids must be an integer tensor, got dtype {response_ids.dtype}")
    if cfg.is_clip is not None and old_logprobs is None:
        raise ValueError(f"cfg.is_clip={cfg.is_clip!r} needs old_logprobs (the sampler's log-probs of "
                         "response_ids); pass them or set is_clip=None")
    mask = response_mask.to(cd)
    if sample_mask is not None:
        mask = mask * sample_mask.to(device=mask.device, dtype=cd)[:, None]
    # token ids must index the vocabulary wherever they count (masked positions may hold padding ids)
    bad = (mask != 0) & ((response_ids < 0) | (response_ids >= V))
    if bool(bad.any()):
        row, pos = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"response_ids[{row}, {pos}] = {int(response_ids[row, pos])} is outside the vocabulary "
                         f"[0, {V}) at an active position ({int(bad.sum())} such positions); mask such "
                         "positions out (response_mask = 0) or fix the token ids / vocabulary size")
    return mask


def _prepare(
    response_ids: Tensor, mask: Tensor, cfg: SelfDistillationConfig, cd: torch.dtype,
    old_logprobs: Tensor | None, rollout_is_weights: Tensor | None, need_grad: bool,
):
    """mask: the combined mask from ``_check_inputs``. Ids at masked positions become 0 (never gathered
    with a padding id)."""
    ids = torch.where(mask != 0, response_ids, torch.zeros_like(response_ids)).long()
    agg_w = aggregation_weights(mask, cfg.loss_agg_mode, cd, cfg.loss_scale_factor)
    old = old_logprobs.detach().to(cd) if (cfg.is_clip is not None and old_logprobs is not None) else None
    rw = rollout_is_weights.detach().to(cd) if rollout_is_weights is not None else None
    plan = _Plan(mode=cfg.mode, topk=cfg.distillation_topk if cfg.mode == "logit" else None,
                 add_tail=cfg.distillation_add_tail, alpha=float(cfg.alpha),
                 temperature=float(cfg.temperature), is_clip=cfg.is_clip, need_grad=need_grad)
    return ids, agg_w, old, rw, plan


def _metrics(loss: Tensor, stats: Tensor, mask: Tensor, cfg: SelfDistillationConfig) -> dict[str, float]:
    active = mask != 0
    n = int(active.sum())

    def mean(row: int) -> float:
        ok = active & torch.isfinite(stats[row])
        k = int(ok.sum())
        return float(torch.where(ok, stats[row], torch.zeros_like(stats[row])).sum() / k) if k else 0.0

    out = {
        "sdpo/loss": float(loss.detach()),
        "sdpo/kl_mean": mean(_DIV),
        "sdpo/entropy_mean": mean(_ENT),
        "sdpo/active_tokens": float(n),
    }
    if cfg.is_clip is not None:
        out["sdpo/is_ratio_mean"] = mean(_ISW)
        out["sdpo/is_clip_fraction"] = mean(_CLIPPED)
    if cfg.mode == "logit" and cfg.distillation_topk is not None:
        out["sdpo/topk_mass_mean"] = mean(_TOPK_MASS)
    return out


# --------------------------------------------------------------------------------------------------
# The SDPO loss on logits
# --------------------------------------------------------------------------------------------------

def sdpo_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    cfg: SelfDistillationConfig,
    *,
    old_logprobs: Tensor | None = None,
    sample_mask: Tensor | None = None,
    rollout_is_weights: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Self-distillation loss of SDPO (paper Sec. 3; reference lasgroup/SDPO ``compute_self_distillation_loss``).

    student_logits: [B, T, V], position t predicts response_ids[:, t]; teacher_logits: [B, T, V] (never
    receives a gradient); response_ids: [B, T] int; response_mask: [B, T] 0/1; old_logprobs: [B, T] sampler
    log-probs of response_ids (required when ``cfg.is_clip`` is set); sample_mask: [B] (0 for samples without
    a teacher context); rollout_is_weights: [B, T] extra per-token weights (detached).
    chunk_size: positions per chunk (default: ``CHUNK_BYTES // (4 V)``).

    The value and gradient of the formula ``sdpo.losses.reference.sdpo_loss_reference``. Semantics, in order:
    both logits / cfg.temperature; top-k support = the student's top-k per position,
    true log-probs of both sides at it (full-vocabulary normalisation), plus a tail bucket per side
    (``distillation_add_tail``) or renormalised; full log-softmax when ``distillation_topk`` is None; the
    generalised JSD (``_divergence``) summed over the support; or in ``mode="token"`` the per-token
    (logp_s(y) - logp_t(y)).detach() * logp_s(y); times the clipped, detached IS ratio
    exp(clamp(logp_s(y) - old, -20, 20)).clamp(max=is_clip) and ``rollout_is_weights``; aggregated with
    ``cfg.loss_agg_mode`` under ``response_mask * sample_mask[:, None]`` (``sdpo.losses.aggregation``).

    Returns (scalar loss, metrics): ``sdpo/loss``, ``sdpo/kl_mean`` (mean per-token divergence on the
    support; in token mode logp_s(y) - logp_t(y)), ``sdpo/entropy_mean`` (student, full vocabulary),
    ``sdpo/active_tokens``, and when applicable ``sdpo/is_ratio_mean`` (clipped ratio),
    ``sdpo/is_clip_fraction`` and ``sdpo/topk_mass_mean`` (student probability inside the top-k).
    The gradient is computed during the forward pass; calling backward twice is not supported.
    """
    if student_logits.dim() != 3 or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"student_logits and teacher_logits must both be [B, T, V]; got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    B, T, V = student_logits.shape
    cd = _compute_dtype(student_logits.dtype)
    mask = _check_inputs(B, T, V, response_ids, response_mask, cfg, old_logprobs, sample_mask,
                         rollout_is_weights, cd)
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    ids, agg_w, old, rw, plan = _prepare(response_ids, mask, cfg, cd, old_logprobs, rollout_is_weights, need_grad)
    rows = chunk_size or max(1, CHUNK_BYTES // (4 * V))
    loss, stats = _SdpoFromLogits.apply(student_logits, teacher_logits.detach(), ids, agg_w, old, rw,
                                        plan, rows)
    return loss, _metrics(loss, stats, mask, cfg)


# --------------------------------------------------------------------------------------------------
# Per-token log-probs (GRPO ratio, IS weights, old log-probs)
# --------------------------------------------------------------------------------------------------

class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / T)[ids], chunked; the softmax is recomputed per chunk in backward."""

    @staticmethod
    def forward(ctx, logits, ids, temperature: float, rows: int):
        B, T, V = logits.shape
        cd = _compute_dtype(logits.dtype)
        out = torch.empty((B, T), dtype=cd, device=logits.device)
        for b in range(B):
            for t0 in range(0, T, rows):
                t1 = min(T, t0 + rows)
                out[b, t0:t1] = _sampled_logprobs(_scaled_logits(logits[b, t0:t1], cd, temperature),
                                                  ids[b, t0:t1])
        ctx.save_for_backward(logits, ids)
        ctx.temperature, ctx.rows = temperature, rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, ids = ctx.saved_tensors
        temp, rows = ctx.temperature, ctx.rows
        B, T, V = logits.shape
        cd = _compute_dtype(logits.dtype)
        grad = torch.empty((B, T, V), dtype=logits.dtype, device=logits.device)
        for b in range(B):
            for t0 in range(0, T, rows):
                t1 = min(T, t0 + rows)
                g = grad_out[b, t0:t1, None].to(cd) / temp
                p = torch.softmax(_scaled_logits(logits[b, t0:t1], cd, temp), dim=-1)
                grad[b, t0:t1] = p.mul_(-g).scatter_add_(1, ids[b, t0:t1, None], g)
        return grad, None, None, None


def _sampled_logprobs(x: Tensor, ids: Tensor) -> Tensor:
    """log softmax(x)[ids] for x [c, V], ids [c], with the same operations as the SDPO kernel
    (``x[ids] - (max(x) - log(max(softmax(x))))``), so that the old log-probs of the policy before an update and
    the SDPO kernel's log-probs of the same logits agree bit for bit (importance ratio exactly 1 on the first
    step), not only up to rounding."""
    lse = x.amax(dim=-1) - torch.log(torch.softmax(x, dim=-1).amax(dim=-1))
    return x.gather(1, ids[:, None]).squeeze(1) - lse


def _scaled_logits(x: Tensor, cd: torch.dtype, temperature: float) -> Tensor:
    x = x.to(cd)
    return x / temperature if temperature != 1.0 else x


def token_logprobs(logits: Tensor, ids: Tensor, temperature: float = 1.0, *,
                   chunk_size: int | None = None) -> Tensor:
    """Log-probs of ``ids`` [B, T] under softmax(logits / temperature), logits [B, T, V] -> [B, T].

    Chunked over positions: no full log-softmax is held; backward recomputes the softmax per chunk and
    allocates only the [B, T, V] gradient. Output dtype: float32 (float64 for float64 logits).
    """
    if logits.dim() != 3 or tuple(ids.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"logits must be [B, T, V] and ids [B, T]; got {tuple(logits.shape)}, {tuple(ids.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    rows = chunk_size or max(1, CHUNK_BYTES // (4 * logits.shape[-1]))
    return _TokenLogprobs.apply(logits, ids.long(), float(temperature), rows)
