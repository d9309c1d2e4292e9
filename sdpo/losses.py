"""SDPO and GRPO losses (arXiv 2601.20802, Sec. 2-3; reference lasgroup/SDPO), as pure tensor functions.

Shapes: B sequences, T response positions, V vocabulary entries, H hidden size. Logits are already aligned to
response positions: position ``t`` predicts ``response_ids[:, t]``.

Memory. The SDPO loss never materialises a full-vocabulary log-softmax of either side. Positions are
processed in chunks of rows; per chunk the student/teacher log-softmax, the top-k support, the
per-position divergence and *its gradient* with respect to the student logits are computed at once
(the loss is a fixed linear aggregation of per-token terms whose weights are known before the forward
pass, so the gradient can be formed eagerly, like fused linear-cross-entropy kernels). The only
[B, T, V] tensor this module allocates is the gradient of the student logits, which autograd needs anyway
(the student's softmax is written straight into it). Consequence: ``backward`` may run once per loss
(``retain_graph`` reuse raises a clear error).
The from-hidden variant goes further and never holds [B, T, V] at all: logits are formed per chunk from
``hidden @ lm_head_weight.T`` and their gradient is pushed straight into the hidden states and the weight.

Aggregation (``loss_agg_mode``), with ``mask = response_mask * sample_mask[:, None]``:

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

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sdpo.config import LOSS_AGG_MODES, SelfDistillationConfig

__all__ = [
    "aggregate_loss",
    "aggregation_weights",
    "group_advantages",
    "grpo_loss",
    "sdpo_loss",
    "sdpo_loss_from_hidden",
    "token_logprobs",
    "token_logprobs_from_hidden",
]

#: Bytes of one [rows, V] float32 chunk for the logits path (rows = CHUNK_BYTES // (4 V), at least 1).
CHUNK_BYTES = 32 * 2**20
#: Bytes of the two [rows, V] compute-dtype workspaces (logits, logit gradient) of ``sdpo_loss_from_hidden``
#: together: rows = HIDDEN_CHUNK_BYTES // (2 * 4 V), clamped to [1, HIDDEN_CHUNK_MAX_ROWS]. Larger chunks make
#: the lm-head GEMMs more efficient and the weight-gradient accumulation less frequent (one CPU core,
#: V = 151,936, H = 896: [128, H] x [H, V] ran at ~40 GFLOP/s, [256, H] x [H, V] at ~75, about the rate of the
#: [1024, H] GEMM of materialised logits); at that V this is ~220 rows, 256 MiB, half the fp32 [V, H] weight
#: gradient at H = 896 and independent of the number of tokens.
HIDDEN_CHUNK_BYTES = 256 * 2**20
HIDDEN_CHUNK_MAX_ROWS = 4096
#: Default number of positions per chunk of ``token_logprobs_from_hidden``.
HIDDEN_CHUNK_ROWS = 128
#: Largest temporary of the row-blocked full-width operations of the chunk kernel (entropy dot product,
#: teacher log-softmax): a logits-path chunk (CHUNK_BYTES) is one block, a from-hidden chunk a few. Smaller
#: blocks are faster on one quiet core (cache-resident) but issue many short parallel regions, which cost far
#: more on shared, loaded cores than they save.
_ROW_BLOCK_BYTES = CHUNK_BYTES
#: Upper clamp of the top-k log-mass before forming the tail bucket (reference value).
TAIL_LOG_MASS_MAX = -1e-7
#: Clamp of the log importance ratio (reference value).
LOG_RATIO_CLAMP = 20.0

# Rows of the per-token statistics tensor returned by the chunked kernels.
_DIV, _ISW, _CLIPPED, _ENT, _TOPK_MASS, _N_STATS = 0, 1, 2, 3, 4, 5


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------

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
            part, st = _sdpo_chunk(student[b, t0:t1], lambda b=b, t0=t0, t1=t1: teacher[b, t0:t1],
                                   ids[b, t0:t1], weight[b, t0:t1], _opt_rows(old, b, t0, t1),
                                   _opt_rows(rollout_w, b, t0, t1), plan, buf)
            if grad is not None and buf.data_ptr() != grad[b, t0:t1].data_ptr():
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


class _SdpoFromHidden(torch.autograd.Function):
    """Chunked SDPO on hidden states: logits = hidden @ weight.T per chunk, never [B, T, V].

    Only active positions (aggregation weight != 0) are processed, packed across sequences into chunks of
    ``rows``; two [rows, V] workspaces (logits, then teacher logits in the same buffer; the logit gradient)
    are allocated once and reused by every chunk.
    """

    @staticmethod
    def forward(ctx, s_hidden, t_hidden, weight_mat, t_weight, ids, agg_w, old, rollout_w, plan: _Plan,
                rows: int):
        B, T, H = s_hidden.shape
        V = weight_mat.shape[0]
        cd = _compute_dtype(s_hidden.dtype)
        dev = s_hidden.device
        want_h = plan.need_grad and ctx.needs_input_grad[0]
        want_w = plan.need_grad and ctx.needs_input_grad[2]
        g_h = torch.zeros_like(s_hidden) if want_h else None
        total = torch.zeros((), dtype=cd, device=dev)
        stats = torch.zeros(_N_STATS, B, T, dtype=cd, device=dev)
        pos_b, pos_t = torch.nonzero(agg_w != 0, as_tuple=True)
        n = pos_b.numel()
        # the first chunk writes the weight gradient (no zero-fill pass over [V, H]), later ones accumulate
        g_w = (torch.empty if n else torch.zeros)((V, H), dtype=cd, device=dev) if want_w else None
        rows = max(1, min(rows, n))
        ldt = torch.promote_types(weight_mat.dtype, t_weight.dtype)   # the dtype the logits are formed in
        w_s, w_t = weight_mat.to(ldt), t_weight.to(ldt)                # no copies when the dtypes agree
        logits_buf = torch.empty((rows, V), dtype=ldt, device=dev) if n else None
        grad_buf = torch.empty((rows, V), dtype=cd, device=dev) if plan.need_grad and n else None
        for r0 in range(0, n, rows):
            pb, pt = pos_b[r0:r0 + rows], pos_t[r0:r0 + rows]
            c = pb.numel()
            h = s_hidden[pb, pt]                 # [c, H] (a gather: a copy)
            ht = t_hidden[pb, pt].to(ldt)        # [c, H_t]
            lb = logits_buf[:c]
            buf = None if grad_buf is None else grad_buf[:c]
            torch.matmul(h.to(ldt), w_s.T, out=lb)
            # the teacher logits overwrite the student's once the kernel no longer needs them
            part, st = _sdpo_chunk(lb, lambda ht=ht, lb=lb: torch.matmul(ht, w_t.T, out=lb),
                                   ids[pb, pt], agg_w[pb, pt], None if old is None else old[pb, pt],
                                   None if rollout_w is None else rollout_w[pb, pt], plan, buf, owned=True)
            total += part
            stats[:, pb, pt] = st
            if buf is not None:
                if g_h is not None:
                    g_h[pb, pt] = buf.to(weight_mat.dtype) @ weight_mat
                if g_w is not None:
                    if r0 == 0:
                        torch.mm(buf.T, h.to(cd), out=g_w)
                    else:
                        g_w.addmm_(buf.T, h.to(cd))
        ctx.grads = (g_h, None if g_w is None else g_w.to(weight_mat.dtype))
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        if ctx.grads is None:
            raise RuntimeError("sdpo_loss_from_hidden: backward called twice (retain_graph is not supported)")
        g_h, g_w = ctx.grads
        ctx.grads = None
        g_h = None if g_h is None else _scaled(g_h, grad_loss)
        g_w = None if g_w is None else _scaled(g_w, grad_loss)
        return g_h, None, g_w, None, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------------
# Public SDPO entry points
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
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"response_ids[{b}, {t}] = {int(response_ids[b, t])} is outside the vocabulary "
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
    old = old_logprobs.detach().to(cd) if (cfg.is_clip is not None) else None
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

    Semantics, in order: both logits / cfg.temperature; top-k support = the student's top-k per position,
    true log-probs of both sides at it (full-vocabulary normalisation), plus a tail bucket per side
    (``distillation_add_tail``) or renormalised; full log-softmax when ``distillation_topk`` is None; the
    generalised JSD (``_divergence``) summed over the support; or in ``mode="token"`` the per-token
    (logp_s(y) - logp_t(y)).detach() * logp_s(y); times the clipped, detached IS ratio
    exp(clamp(logp_s(y) - old, -20, 20)).clamp(max=is_clip) and ``rollout_is_weights``; aggregated with
    ``cfg.loss_agg_mode`` under ``response_mask * sample_mask[:, None]`` (see the module docstring).

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


def sdpo_loss_from_hidden(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    lm_head_weight: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    cfg: SelfDistillationConfig,
    *,
    teacher_lm_head_weight: Tensor | None = None,
    old_logprobs: Tensor | None = None,
    sample_mask: Tensor | None = None,
    rollout_is_weights: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``sdpo_loss`` on logits ``hidden @ W.T`` without ever holding [B, T, V] logits.

    student_hidden: [B, T, H] final hidden states aligned to response positions; lm_head_weight: [V, H] the
    student's LM head (tied or not; no bias). teacher_hidden: [B, T, H_t], the teacher's (no gradient);
    teacher_lm_head_weight: [V, H_t], the teacher's own head (no gradient), e.g. an EMA teacher's; default
    ``lm_head_weight`` (a teacher sharing the student's head: live teacher, LoRA teachers). Gradients flow to
    ``student_hidden`` and ``lm_head_weight``. Same values and gradients as ``sdpo_loss(student_hidden @ W.T,
    teacher_hidden @ W_t.T, ...)`` up to floating-point summation order.
    chunk_size: positions per chunk (default: ``HIDDEN_CHUNK_BYTES // (8 V)``, at most
    ``HIDDEN_CHUNK_MAX_ROWS``); only active positions are processed, packed across sequences. Besides the
    returned gradients ([B, T, H] and the [V, H] weight gradient) it allocates two [chunk_size, V] buffers.
    """
    if student_hidden.dim() != 3 or teacher_hidden.dim() != 3 or \
            teacher_hidden.shape[:2] != student_hidden.shape[:2]:
        raise ValueError(f"student_hidden and teacher_hidden must be [B, T, H] and [B, T, H_t]; got "
                         f"{tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError(f"lm_head_weight must be [V, H] with H={student_hidden.shape[-1]}, "
                         f"got {tuple(lm_head_weight.shape)}")
    V = lm_head_weight.shape[0]
    if teacher_lm_head_weight is None:
        if teacher_hidden.shape[-1] != student_hidden.shape[-1]:
            raise ValueError(f"teacher_hidden has H_t={teacher_hidden.shape[-1]} != H={student_hidden.shape[-1]}; "
                             "pass the teacher's own teacher_lm_head_weight [V, H_t]")
        teacher_lm_head_weight = lm_head_weight
    elif (teacher_lm_head_weight.dim() != 2 or teacher_lm_head_weight.shape[0] != V
          or teacher_lm_head_weight.shape[1] != teacher_hidden.shape[-1]):
        raise ValueError(f"teacher_lm_head_weight must be [V, H_t] = [{V}, {teacher_hidden.shape[-1]}], "
                         f"got {tuple(teacher_lm_head_weight.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, T, _ = student_hidden.shape
    cd = _compute_dtype(student_hidden.dtype)
    mask = _check_inputs(B, T, V, response_ids, response_mask, cfg, old_logprobs, sample_mask,
                         rollout_is_weights, cd)
    need_grad = torch.is_grad_enabled() and (student_hidden.requires_grad or lm_head_weight.requires_grad)
    ids, agg_w, old, rw, plan = _prepare(response_ids, mask, cfg, cd, old_logprobs, rollout_is_weights, need_grad)
    rows = chunk_size or min(HIDDEN_CHUNK_MAX_ROWS, max(1, HIDDEN_CHUNK_BYTES // (8 * V)))
    loss, stats = _SdpoFromHidden.apply(student_hidden, teacher_hidden.detach(), lm_head_weight,
                                        teacher_lm_head_weight.detach(), ids, agg_w, old, rw, plan, rows)
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


class _TokenLogprobsFromHidden(torch.autograd.Function):
    """log softmax(hidden @ W.T / T)[ids], chunked; logits are recomputed per chunk in backward."""

    @staticmethod
    def forward(ctx, hidden, weight_mat, ids, temperature: float, rows: int):
        B, T, _ = hidden.shape
        cd = _compute_dtype(hidden.dtype)
        out = torch.empty((B, T), dtype=cd, device=hidden.device)
        for b in range(B):
            for t0 in range(0, T, rows):
                t1 = min(T, t0 + rows)
                out[b, t0:t1] = _sampled_logprobs(_scaled_logits(hidden[b, t0:t1] @ weight_mat.T, cd, temperature),
                                                  ids[b, t0:t1])
        ctx.save_for_backward(hidden, weight_mat, ids)
        ctx.temperature, ctx.rows = temperature, rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight_mat, ids = ctx.saved_tensors
        temp, rows = ctx.temperature, ctx.rows
        B, T, H = hidden.shape
        cd = _compute_dtype(hidden.dtype)
        g_h = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        g_w = torch.zeros(weight_mat.shape, dtype=cd, device=hidden.device) if ctx.needs_input_grad[1] else None
        for b in range(B):
            for t0 in range(0, T, rows):
                t1 = min(T, t0 + rows)
                h = hidden[b, t0:t1]
                g = grad_out[b, t0:t1, None].to(cd) / temp
                p = torch.softmax(_scaled_logits(h @ weight_mat.T, cd, temp), dim=-1)
                p.mul_(-g).scatter_add_(1, ids[b, t0:t1, None], g)
                if g_h is not None:
                    g_h[b, t0:t1] = p.to(weight_mat.dtype) @ weight_mat
                if g_w is not None:
                    g_w.addmm_(p.T, h.to(cd))
        return g_h, None if g_w is None else g_w.to(weight_mat.dtype), None, None, None


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


def token_logprobs_from_hidden(hidden: Tensor, lm_head_weight: Tensor, ids: Tensor, temperature: float = 1.0,
                               *, chunk_size: int = HIDDEN_CHUNK_ROWS) -> Tensor:
    """``token_logprobs(hidden @ lm_head_weight.T, ids, temperature)`` without holding [B, T, V] logits.

    hidden: [B, T, H]; lm_head_weight: [V, H]; ids: [B, T] -> [B, T]. Gradients flow to hidden and weight.
    """
    if hidden.dim() != 3 or tuple(ids.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"hidden must be [B, T, H] and ids [B, T]; got {tuple(hidden.shape)}, {tuple(ids.shape)}")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"lm_head_weight must be [V, H] with H={hidden.shape[-1]}, got {tuple(lm_head_weight.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _TokenLogprobsFromHidden.apply(hidden, lm_head_weight, ids.long(), float(temperature), chunk_size)


# --------------------------------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------------------------------

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
