"""The fused-from-hidden path (``fused_lm_head``): the SDPO loss and per-token log-probs of logits
``hidden @ lm_head_weight.T`` formed chunk by chunk, never holding [B, T, V] logits; gradients go straight into
the hidden states and the weight. Same values and gradients as ``sdpo.losses.chunked`` on the materialised
logits (the same chunk kernel runs on each chunk).

Shapes: B sequences, T response positions, H hidden size, V vocabulary entries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdpo.config import SelfDistillationConfig
from sdpo.losses.chunked import (
    _N_STATS,
    _check_inputs,
    _compute_dtype,
    _metrics,
    _Plan,
    _prepare,
    _sampled_logprobs,
    _scaled,
    _scaled_logits,
    _sdpo_chunk,
)

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
            assert logits_buf is not None  # allocated whenever there are positions (n > 0)
            lb = logits_buf[:c]
            buf = None if grad_buf is None else grad_buf[:c]
            torch.matmul(h.to(ldt), w_s.T, out=lb)
            # the teacher logits overwrite the student's once the kernel no longer needs them
            # (the type: ignore: mypy cannot type a lambda with default arguments)
            part, st = _sdpo_chunk(lb, lambda ht=ht, lb=lb: torch.matmul(ht, w_t.T, out=lb),  # type: ignore[misc]
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
