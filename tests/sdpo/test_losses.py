"""SDPO / GRPO losses against the formula (``sdpo.losses.reference``, paper Sec. 3) in float64, and hand-computed
values."""

from __future__ import annotations

import math

import pytest
import torch

from sdpo.config import ConfigError, SelfDistillationConfig
from sdpo.losses import (
    aggregate_loss,
    group_advantages,
    grpo_loss,
    sdpo_loss,
    sdpo_loss_from_hidden,
    token_logprobs,
    token_logprobs_from_hidden,
)
from sdpo.losses.reference import aggregate_reference, sdpo_loss_reference

AGG_MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm",
             "seq-mean-token-mean-all"]
ALPHAS = [0.0, 0.3, 0.5, 1.0]
SUPPORTS = {"topk-tail": (5, True), "topk-renorm": (5, False), "full": (None, True)}


def make_batch(dtype=torch.float64, B=3, T=7, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3).to(dtype)
    t = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    rmask = torch.ones(B, T)
    rmask[1, 4:] = 0          # a padded sequence
    rmask[2, 1] = 0           # a hole
    with torch.no_grad():
        lp = torch.log_softmax(s.double() / 0.7, -1).gather(-1, ids[..., None]).squeeze(-1)
    old = (lp + torch.randn(B, T, generator=g, dtype=torch.float64) * 1.0).to(dtype)
    smask = torch.tensor([1.0, 1.0, 0.0][:B] + [1.0] * max(0, B - 3))
    rw = (torch.rand(B, T, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return s, t, ids, rmask, old, smask, rw


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def check_against_reference(cfg, dtype, *, use_sample_mask=True, use_rw=True, chunk_size=2, tol=1e-6):
    s, t, ids, rmask, old, smask, rw = make_batch(dtype)
    kwargs = dict(old_logprobs=old if cfg.is_clip is not None else None,
                  sample_mask=smask if use_sample_mask else None, rollout_is_weights=rw if use_rw else None)
    s1 = s.clone().requires_grad_()
    loss, metrics = sdpo_loss(s1, t, ids, rmask, cfg, chunk_size=chunk_size, **kwargs)
    loss.backward()
    s2 = s.double().clone().requires_grad_()
    ref = sdpo_loss_reference(s2, t.double(), ids, rmask, cfg,
                              old_logprobs=kwargs["old_logprobs"] if cfg.is_clip else None,
                              sample_mask=kwargs["sample_mask"], rollout_is_weights=None if not use_rw else rw.double())
    ref.backward()
    assert abs(loss.item() - ref.item()) <= tol * max(abs(ref.item()), 1e-12), (loss.item(), ref.item())
    assert rel_err(s1.grad, s2.grad) < tol
    assert math.isclose(metrics["sdpo/loss"], loss.item(), rel_tol=1e-12)
    return loss, metrics, s1.grad


# ------------------------------------------------------------------------------------------------
# Reference comparisons
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("is_clip", [None, 2.0])
@pytest.mark.parametrize("support", list(SUPPORTS))
@pytest.mark.parametrize("alpha", ALPHAS)
def test_logit_mode_matches_float64_reference(alpha, support, is_clip, agg):
    k, tail = SUPPORTS[support]
    cfg = SelfDistillationConfig(alpha=alpha, distillation_topk=k, distillation_add_tail=tail, is_clip=is_clip,
                                 temperature=0.7, loss_agg_mode=agg)
    loss, metrics, grad = check_against_reference(cfg, torch.float64)
    assert loss.item() > 0
    assert grad[2].abs().max() == 0  # sample_mask = 0 for sample 2
    assert grad[1, 4:].abs().max() == 0  # padding


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("is_clip", [None, 2.0])
def test_token_mode_matches_float64_reference(is_clip, agg):
    cfg = SelfDistillationConfig(mode="token", alpha=1.0, is_clip=is_clip, temperature=0.7, loss_agg_mode=agg)
    check_against_reference(cfg, torch.float64)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("support", list(SUPPORTS))
def test_float32_matches_float64_reference(alpha, support):
    k, tail = SUPPORTS[support]
    cfg = SelfDistillationConfig(alpha=alpha, distillation_topk=k, distillation_add_tail=tail, temperature=0.7)
    check_against_reference(cfg, torch.float32, tol=1e-4, chunk_size=None)


@pytest.mark.parametrize("use_sample_mask,use_rw", [(False, False), (True, False), (False, True)])
def test_optional_weights(use_sample_mask, use_rw):
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=5, is_clip=2.0, temperature=1.0)
    check_against_reference(cfg, torch.float64, use_sample_mask=use_sample_mask, use_rw=use_rw, chunk_size=3)


def test_rollout_weights_and_is_ratio_scale_the_loss():
    s, t, ids, rmask, old, _, _ = make_batch()
    cfg = SelfDistillationConfig(alpha=1.0, distillation_topk=5, is_clip=None)
    base, _ = sdpo_loss(s, t, ids, rmask, cfg)
    doubled, _ = sdpo_loss(s, t, ids, rmask, cfg, rollout_is_weights=torch.full(ids.shape, 2.0, dtype=s.dtype))
    assert torch.allclose(doubled, 2 * base, rtol=1e-12)
    # old_logprobs far below the current ones: every ratio clips at is_clip
    cfg_is = SelfDistillationConfig(alpha=1.0, distillation_topk=5, is_clip=1.5)
    clipped, m = sdpo_loss(s, t, ids, rmask, cfg_is, old_logprobs=torch.full(ids.shape, -1e4, dtype=s.dtype))
    assert torch.allclose(clipped, 1.5 * base, rtol=1e-12)
    assert m["sdpo/is_clip_fraction"] == 1.0
    assert m["sdpo/is_ratio_mean"] == pytest.approx(1.5)


def test_metrics_are_namespaced_floats():
    s, t, ids, rmask, old, smask, _ = make_batch()
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=5, is_clip=2.0, temperature=0.7)
    _, m = sdpo_loss(s, t, ids, rmask, cfg, old_logprobs=old, sample_mask=smask)
    assert set(m) >= {"sdpo/loss", "sdpo/kl_mean", "sdpo/is_ratio_mean", "sdpo/is_clip_fraction",
                      "sdpo/entropy_mean", "sdpo/topk_mass_mean", "sdpo/active_tokens"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    assert 0.0 < m["sdpo/is_clip_fraction"] < 1.0
    assert m["sdpo/active_tokens"] == float((rmask * smask[:, None]).sum())
    # entropy of the temperature-scaled student, averaged over active tokens
    mask = (rmask * smask[:, None]).bool()
    lp = torch.log_softmax(s / 0.7, -1)
    ent = -(lp.exp() * lp).sum(-1)[mask].mean()
    assert m["sdpo/entropy_mean"] == pytest.approx(float(ent), rel=1e-10)


# ------------------------------------------------------------------------------------------------
# Hand-computed cases (2-token vocabulary)
# ------------------------------------------------------------------------------------------------

def _two_token(alpha, k, tail=True, mode="logit"):
    s = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[[math.log(3.0), 0.0]]], dtype=torch.float64)   # p_t = (0.75, 0.25)
    cfg = SelfDistillationConfig(mode=mode, alpha=alpha, distillation_topk=k, distillation_add_tail=tail,
                                 is_clip=None)
    loss, _ = sdpo_loss(s, t, torch.tensor([[1]]), torch.ones(1, 1), cfg)
    loss.backward()
    return loss.item(), s.grad[0, 0]


PS = (1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1)))
PT = (0.75, 0.25)


@pytest.mark.parametrize("k", [None, 1])  # top-1 + tail is the whole 2-token distribution
def test_two_token_reverse_kl_and_gradient(k):
    loss, grad = _two_token(1.0, k)
    kl = sum(p * math.log(p / q) for p, q in zip(PS, PT, strict=True))
    assert loss == pytest.approx(kl, rel=1e-12)
    # d KL(s||t) / d logit_i = p_i (log p_i - log q_i - KL)
    expected = [PS[i] * (math.log(PS[i] / PT[i]) - kl) for i in range(2)]
    assert grad.tolist() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("k", [None, 1])
def test_two_token_forward_kl_and_jsd(k):
    loss0, grad0 = _two_token(0.0, k)
    assert loss0 == pytest.approx(sum(q * math.log(q / p) for p, q in zip(PS, PT, strict=True)), rel=1e-12)
    # d KL(t||s) / d logit_i = p_i - q_i
    assert grad0.tolist() == pytest.approx([PS[0] - PT[0], PS[1] - PT[1]], rel=1e-10)
    loss5, _ = _two_token(0.5, k)
    m = [(p + q) / 2 for p, q in zip(PS, PT, strict=True)]
    jsd = 0.5 * sum(p * math.log(p / mi) for p, mi in zip(PS, m, strict=True)) + 0.5 * sum(
        q * math.log(q / mi) for q, mi in zip(PT, m, strict=True))
    assert loss5 == pytest.approx(jsd, rel=1e-12)


def test_two_token_renormalised_top1_is_zero():
    loss, grad = _two_token(0.5, 1, tail=False)  # both sides renormalise to the single entry (1.0)
    assert loss == pytest.approx(0.0, abs=1e-15)
    assert grad.abs().max() < 1e-15


def test_two_token_token_mode():
    loss, grad = _two_token(1.0, None, mode="token")   # y = 1
    d = math.log(PS[1]) - math.log(PT[1])
    assert loss == pytest.approx(d * math.log(PS[1]), rel=1e-12)
    # d/dlogit of d.detach() * log p_s(y) = d (onehot(y) - p_s)
    assert grad.tolist() == pytest.approx([d * (0 - PS[0]), d * (1 - PS[1])], rel=1e-10)


def test_tail_bucket_when_topk_holds_all_mass():
    # k = V: the top-k mass is 1, the clamp keeps the tail finite at log(-expm1(-1e-7))
    s = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    cfg = SelfDistillationConfig(alpha=1.0, distillation_topk=4, is_clip=None)
    loss, _ = sdpo_loss(s, s.detach().clone(), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), cfg)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item()) < 1e-12
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_tail_clamp_on_one_side(alpha):
    # The teacher puts ~1e-9 on the student's 4th token: its top-3 log-mass (-7e-10) is clamped to -1e-7,
    # so its tail bucket is log(1e-7), not log(7e-10); the student's tail is unclamped.
    s = torch.tensor([[[0.0, 0.0, 0.0, -2.0]]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[[0.0, 0.0, 0.0, -20.0]]], dtype=torch.float64)
    cfg = SelfDistillationConfig(alpha=alpha, distillation_topk=3, is_clip=None)
    ids, mask = torch.tensor([[0]]), torch.ones(1, 1)
    loss, _ = sdpo_loss(s, t, ids, mask, cfg)
    loss.backward()
    p_tail_s = math.exp(-2) / (3 + math.exp(-2))
    ls = [math.log((1 - p_tail_s) / 3)] * 3 + [math.log(p_tail_s)]
    lt = [-math.log(3 + math.exp(-20))] * 3 + [math.log(-math.expm1(-1e-7))]
    if alpha == 1.0:
        expected = sum(math.exp(a) * (a - b) for a, b in zip(ls, lt, strict=True))
    elif alpha == 0.0:
        expected = sum(math.exp(b) * (b - a) for a, b in zip(ls, lt, strict=True))
    else:
        mix = [math.log(0.5 * math.exp(a) + 0.5 * math.exp(b)) for a, b in zip(ls, lt, strict=True)]
        expected = 0.5 * sum(math.exp(a) * (a - m) for a, m in zip(ls, mix, strict=True)) + 0.5 * sum(
            math.exp(b) * (b - m) for b, m in zip(lt, mix, strict=True))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    y = s.detach().clone().requires_grad_()
    sdpo_loss_reference(y, t, ids, mask, cfg).backward()
    assert rel_err(s.grad, y.grad) < 1e-9


# ------------------------------------------------------------------------------------------------
# Masks and errors
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("mode", ["logit", "token"])
def test_all_zero_mask_gives_connected_zero_loss(agg, mode):
    s, t, ids, _, old, _, _ = make_batch()
    s = s.clone().requires_grad_()
    cfg = SelfDistillationConfig(mode=mode, alpha=1.0, distillation_topk=5, is_clip=2.0, loss_agg_mode=agg)
    loss, m = sdpo_loss(s, t, ids, torch.zeros(ids.shape), cfg, old_logprobs=old)
    assert loss.requires_grad and loss.item() == 0.0
    loss.backward()
    assert s.grad is not None and s.grad.abs().max() == 0
    assert m["sdpo/active_tokens"] == 0.0 and m["sdpo/kl_mean"] == 0.0
    # the same through the sample mask
    s.grad = None
    loss, _ = sdpo_loss(s, t, ids, torch.ones(ids.shape), cfg, old_logprobs=old, sample_mask=torch.zeros(3))
    loss.backward()
    assert loss.item() == 0.0 and s.grad.abs().max() == 0


def test_masked_positions_may_hold_padding_ids():
    s, t, ids, rmask, _, _, _ = make_batch()
    ids = ids.clone()
    ids[1, 4:] = -100   # padding id outside the vocabulary, masked
    loss, _ = sdpo_loss(s, t, ids, rmask, SelfDistillationConfig(distillation_topk=5, is_clip=None))
    assert torch.isfinite(loss)


def test_token_mode_rejects_alpha_other_than_one():
    with pytest.raises(ConfigError, match="alpha"):
        SelfDistillationConfig(mode="token", alpha=0.5)
    cfg = SelfDistillationConfig(mode="token", alpha=1.0, is_clip=None)
    cfg.alpha = 0.5   # mutated after validation: the loss checks again
    s, t, ids, rmask, _, _, _ = make_batch()
    with pytest.raises(ValueError, match="alpha"):
        sdpo_loss(s, t, ids, rmask, cfg)


def test_is_clip_requires_old_logprobs():
    s, t, ids, rmask, _, _, _ = make_batch()
    with pytest.raises(ValueError, match="old_logprobs"):
        sdpo_loss(s, t, ids, rmask, SelfDistillationConfig(distillation_topk=5, is_clip=2.0))


def test_shape_and_topk_errors():
    s, t, ids, rmask, _, _, _ = make_batch()
    cfg = SelfDistillationConfig(distillation_topk=5, is_clip=None)
    with pytest.raises(ValueError, match="response_mask"):
        sdpo_loss(s, t, ids, rmask[:, :3], cfg)
    with pytest.raises(ValueError, match="distillation_topk"):
        sdpo_loss(s, t, ids, rmask, SelfDistillationConfig(is_clip=None, distillation_topk=51))


def test_chunking_does_not_change_results():
    s, t, ids, rmask, old, smask, rw = make_batch(torch.float32, B=3, T=9, V=300)
    cfg = SelfDistillationConfig(alpha=0.5, is_clip=2.0)
    grads, losses = [], []
    for chunk in (1, 4, None):
        x = s.clone().requires_grad_()
        loss, _ = sdpo_loss(x, t, ids, rmask, cfg, old_logprobs=old, sample_mask=smask, rollout_is_weights=rw,
                            chunk_size=chunk)
        loss.backward()
        losses.append(loss.item())
        grads.append(x.grad)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0] == pytest.approx(losses[2], rel=1e-6)
    assert rel_err(grads[0], grads[2]) < 1e-6 and rel_err(grads[1], grads[2]) < 1e-6


@pytest.mark.parametrize("support", ["topk-tail", "full"])
def test_row_blocked_kernel_matches_the_reference(monkeypatch, support):
    """The chunk kernel's full-width operations run on row blocks when a chunk is larger than
    _ROW_BLOCK_BYTES (at V = 151,936 every from-hidden chunk): force blocks of 2 rows on both paths."""
    import sdpo.losses.chunked

    monkeypatch.setattr(sdpo.losses.chunked, "_ROW_BLOCK_BYTES", 2 * 50 * 8)
    topk, tail = SUPPORTS[support]
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=topk, distillation_add_tail=tail, is_clip=2.0,
                                 temperature=0.7)
    check_against_reference(cfg, torch.float64, chunk_size=5, tol=1e-10)
    g = torch.Generator().manual_seed(5)
    hs = torch.randn(3, 7, 16, generator=g, dtype=torch.float64)
    ht = torch.randn(3, 7, 16, generator=g, dtype=torch.float64)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64) * 0.5
    _, _, ids, rmask, old, smask, rw = make_batch(torch.float64, B=3, T=7, V=50)
    kw = dict(old_logprobs=old, sample_mask=smask, rollout_is_weights=rw)
    h1, w1 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    loss_f, _ = sdpo_loss_from_hidden(h1, ht, w1, ids, rmask, cfg, chunk_size=5, **kw)
    loss_f.backward()
    h2 = hs.clone().requires_grad_()
    w2 = w.clone().requires_grad_()
    ref = sdpo_loss_reference(h2 @ w2.T, ht @ w.T, ids, rmask, cfg, old_logprobs=old, sample_mask=smask,
                              rollout_is_weights=rw)
    ref.backward()
    assert loss_f.item() == pytest.approx(ref.item(), rel=1e-10)
    assert rel_err(h1.grad, h2.grad) < 1e-10 and rel_err(w1.grad, w2.grad) < 1e-10


def test_loss_scaling_and_composition_in_autograd():
    s, t, ids, rmask, _, _, _ = make_batch()
    cfg = SelfDistillationConfig(alpha=0.3, distillation_topk=5, is_clip=None)
    x = s.clone().requires_grad_()
    loss, _ = sdpo_loss(x, t, ids, rmask, cfg)
    (3.0 * loss + (x ** 2).sum() * 0.0).backward()
    y = s.clone().requires_grad_()
    sdpo_loss_reference(y, t, ids, rmask, cfg).mul(3.0).backward()
    assert rel_err(x.grad, y.grad) < 1e-10


def test_bfloat16_logits_run_and_return_bfloat16_gradients():
    s, t, ids, rmask, _, _, _ = make_batch()
    x = s.to(torch.bfloat16).requires_grad_()
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=5, is_clip=None)
    loss, _ = sdpo_loss(x, t.to(torch.bfloat16), ids, rmask, cfg)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    ref = sdpo_loss_reference(x.detach().double(), t.to(torch.bfloat16).double(), ids, rmask, cfg)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)


# ------------------------------------------------------------------------------------------------
# Fused from-hidden path and token log-probs
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg_kwargs", [
    dict(alpha=0.5, distillation_topk=5, is_clip=2.0, temperature=0.7),
    dict(alpha=1.0, distillation_topk=None, is_clip=None),
    dict(alpha=0.0, distillation_topk=5, distillation_add_tail=False, is_clip=2.0,
         loss_agg_mode="seq-mean-token-mean"),
    dict(mode="token", alpha=1.0, is_clip=2.0),
])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("chunk", [4, None])
def test_fused_from_hidden_equals_unfused(cfg_kwargs, dtype, tol, chunk):
    g = torch.Generator().manual_seed(1)
    B, T, H, V = 3, 7, 16, 50
    hs = torch.randn(B, T, H, generator=g, dtype=torch.float64).to(dtype)
    ht = torch.randn(B, T, H, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    _, _, ids, rmask, old, smask, rw = make_batch(dtype, B=B, T=T, V=V)
    cfg = SelfDistillationConfig(**cfg_kwargs)
    kw = dict(old_logprobs=old, sample_mask=smask, rollout_is_weights=rw)

    h1, w1 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    loss_f, m_f = sdpo_loss_from_hidden(h1, ht, w1, ids, rmask, cfg, chunk_size=chunk, **kw)
    loss_f.backward()
    h2, w2 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    loss_u, m_u = sdpo_loss(h2 @ w2.T, ht @ w2.T.detach(), ids, rmask, cfg, **kw)
    loss_u.backward()
    assert loss_f.item() == pytest.approx(loss_u.item(), rel=tol)
    assert rel_err(h1.grad, h2.grad) < tol
    assert rel_err(w1.grad, w2.grad) < tol
    assert m_f.keys() == m_u.keys()
    assert all(m_f[k] == pytest.approx(m_u[k], rel=tol, abs=1e-12) for k in m_f)


@pytest.mark.parametrize("chunk", [1, 5, None])
def test_fused_from_hidden_with_the_teacher_s_own_head(chunk):
    """An EMA teacher of a full model has its own LM head W_t (and could have its own width H_t): the teacher
    logits are teacher_hidden @ W_t.T, never the student's head. float64 reference: sdpo_loss on materialised
    logits."""
    g = torch.Generator().manual_seed(3)
    B, T, H, Ht, V = 3, 7, 16, 12, 50
    hs = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    ht = torch.randn(B, T, Ht, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    wt = (torch.randn(V, Ht, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    _, _, ids, rmask, old, smask, rw = make_batch(torch.float64, B=B, T=T, V=V)
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=5, is_clip=2.0)
    kw = dict(old_logprobs=old, sample_mask=smask, rollout_is_weights=rw)

    h1, w1 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    loss_f, m_f = sdpo_loss_from_hidden(h1, ht, w1, ids, rmask, cfg, teacher_lm_head_weight=wt, chunk_size=chunk,
                                        **kw)
    loss_f.backward()
    h2, w2 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    loss_u, m_u = sdpo_loss(h2 @ w2.T, (ht @ wt.T).detach(), ids, rmask, cfg, **kw)
    loss_u.backward()
    assert loss_f.item() == pytest.approx(loss_u.item(), rel=1e-10)
    assert rel_err(h1.grad, h2.grad) < 1e-10 and rel_err(w1.grad, w2.grad) < 1e-10
    assert all(m_f[k] == pytest.approx(m_u[k], rel=1e-10, abs=1e-12) for k in m_f)
    assert wt.grad is None
    with pytest.raises(ValueError, match="teacher_lm_head_weight"):
        sdpo_loss_from_hidden(hs, ht, w, ids, rmask, cfg, teacher_lm_head_weight=wt[:, :5], **kw)
    with pytest.raises(ValueError, match="teacher_lm_head_weight"):
        sdpo_loss_from_hidden(hs, ht, w, ids, rmask, cfg, **kw)   # H_t != H needs the teacher's head


def test_out_of_vocabulary_ids_at_active_positions_raise_a_value_error():
    s, t, ids, rmask, _, smask, _ = make_batch(V=50)
    cfg = SelfDistillationConfig(distillation_topk=5, is_clip=None)
    hs, w = torch.randn(3, 7, 8, dtype=torch.float64), torch.randn(50, 8, dtype=torch.float64)
    for bad in (50, 1000, -1):
        x = ids.clone()
        x[0, 2] = bad   # an active position
        with pytest.raises(ValueError, match=rf"response_ids\[0, 2\] = {bad} .*vocabulary \[0, 50\)"):
            sdpo_loss(s, t, x, rmask, cfg)
        with pytest.raises(ValueError, match="response_ids"):
            sdpo_loss_from_hidden(hs, hs, w, x, rmask, cfg)
    # inactive positions (response_mask 0, or a sample_mask-ed sample) may hold anything
    x = ids.clone()
    x[1, 5] = 10**6        # response_mask[1, 4:] == 0
    x[2, 3] = -100         # sample 2 has sample_mask 0
    for fn, a, b in ((sdpo_loss, s, t), (sdpo_loss_from_hidden, hs, hs)):
        args = (a, b, w) if fn is sdpo_loss_from_hidden else (a, b)
        loss, _ = fn(*args, x, rmask, cfg, sample_mask=smask)
        assert torch.isfinite(loss)


def test_fused_teacher_hidden_gets_no_gradient():
    hs = torch.randn(1, 4, 8, requires_grad=True)
    ht = torch.randn(1, 4, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    loss, _ = sdpo_loss_from_hidden(hs, ht, w, torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4),
                                    SelfDistillationConfig(is_clip=None, distillation_topk=3))
    loss.backward()
    assert ht.grad is None and hs.grad is not None and w.grad is not None


@pytest.mark.parametrize("mode,topk", [("logit", 7), ("logit", None), ("token", None)])
def test_old_logprobs_of_the_same_logits_give_an_importance_ratio_of_exactly_one(mode, topk):
    """token_logprobs (the policy's old log-probs) and the SDPO kernel compute log p(y) with the same operations,
    so on the first step the IS ratio is 1 bit for bit, not only up to rounding."""
    g = torch.Generator().manual_seed(4)
    B, T, V = 8, 64, 2048    # float32 log_softmax and the kernel's formula differ in the last bit at ~1/4 of these
    s = torch.randn(B, T, V, generator=g) * 0.3
    t = torch.randn(B, T, V, generator=g) * 0.3
    ids = torch.randint(0, V, (B, T), generator=g)
    # is_clip = 1: any ratio above 1, even by one ulp, counts as clipped (the mean would hide it in rounding)
    cfg = SelfDistillationConfig(mode=mode, alpha=1.0, distillation_topk=topk, is_clip=1.0, temperature=0.7)
    old = token_logprobs(s, ids, 0.7)
    _, m = sdpo_loss(s.clone().requires_grad_(), t, ids, torch.ones(B, T), cfg, old_logprobs=old)
    assert m["sdpo/is_clip_fraction"] == 0.0 and m["sdpo/is_ratio_mean"] == 1.0
    # and the value is log_softmax's up to rounding
    ref = torch.log_softmax(s.double() / 0.7, -1).gather(-1, ids[..., None]).squeeze(-1)
    assert rel_err(old, ref) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_match_log_softmax(temperature):
    s, _, ids, _, _, _, _ = make_batch()
    x = s.clone().requires_grad_()
    lp = token_logprobs(x, ids, temperature, chunk_size=2)
    weights = torch.randn(ids.shape, dtype=torch.float64)
    (lp * weights).sum().backward()
    y = s.clone().requires_grad_()
    ref = torch.log_softmax(y / temperature, -1).gather(-1, ids[..., None]).squeeze(-1)
    (ref * weights).sum().backward()
    assert rel_err(lp, ref) < 1e-12 and rel_err(x.grad, y.grad) < 1e-12

    g = torch.Generator().manual_seed(2)
    h = torch.randn(3, 7, 16, dtype=torch.float64, generator=g)
    w = torch.randn(50, 16, dtype=torch.float64, generator=g)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    lp_f = token_logprobs_from_hidden(h1, w1, ids, temperature, chunk_size=3)
    (lp_f * weights).sum().backward()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    lp_u = torch.log_softmax((h2 @ w2.T) / temperature, -1).gather(-1, ids[..., None]).squeeze(-1)
    (lp_u * weights).sum().backward()
    assert rel_err(lp_f, lp_u) < 1e-12
    assert rel_err(h1.grad, h2.grad) < 1e-10 and rel_err(w1.grad, w2.grad) < 1e-10


# ------------------------------------------------------------------------------------------------
# GRPO
# ------------------------------------------------------------------------------------------------

def test_grpo_loss_hand_computed():
    # (advantage, ratio) -> per-token loss, gradient d loss / d logprob (before the 1/5 token mean)
    # (+1, 1.5): max(-1.5, -1.2) = -1.2, clipped -> grad 0
    # (+1, 0.5): max(-0.5, -0.8) = -0.5, grad -A r = -0.5
    # (-1, 1.5): max(1.5, 1.2) = 1.5; dual clip min(1.5, 3) = 1.5, grad 1.5
    # (-1, 5.0): max(5, 1.2) = 5; dual clip min(5, 3) = 3 -> grad 0
    # (-1, 0.5): max(0.5, 0.8) = 0.8 clipped -> grad 0
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    ratio = torch.tensor([[1.5, 0.5, 1.5, 5.0, 0.5]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5]], dtype=torch.float64)
    lp = (old + ratio.log()).requires_grad_()
    loss, m = grpo_loss(lp, old, adv, torch.ones(1, 5))
    loss.backward()
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 3.0 + 0.8) / 5, rel=1e-12)
    assert lp.grad[0].tolist() == pytest.approx([0.0, -0.5 / 5, 1.5 / 5, 0.0, 0.0], abs=1e-12)
    assert m["grpo/clip_fraction"] == pytest.approx(2 / 5)
    assert m["grpo/clip_fraction_lower"] == pytest.approx(1 / 5)
    assert m["grpo/approx_kl"] == pytest.approx(float(-ratio.log().mean()), rel=1e-12)


def test_grpo_loss_masks_aggregation_and_weights():
    g = torch.Generator().manual_seed(3)
    lp = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    old = lp.detach() + 0.1 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    rmask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    smask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    rw = torch.rand(3, 4, generator=g, dtype=torch.float64)
    ratio = torch.exp(lp - old)
    a = adv[:, None]
    per = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.3))
    per = torch.where(a < 0, torch.minimum(per, -a * 3.0), per) * rw
    for agg in AGG_MODES:
        loss, _ = grpo_loss(lp, old, adv, rmask, clip_ratio_high=0.3, loss_agg_mode=agg, sample_mask=smask,
                            rollout_is_weights=rw)
        ref = aggregate_reference(per, rmask * smask[:, None], agg)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        grpo_loss(lp, old, adv, rmask, clip_ratio_c=1.0)


def test_reference_weighting_counts_undistilled_sequences_as_zero():
    """Sequences of lengths 1, 9 and 1 with per-token losses 1, 2 and 3, the first two distilled: the global
    token-mean over distilled tokens is (1 + 9 * 2) / 10 = 1.9; the reference's per-sequence token-mean averaged
    over all three sequences is (1 + 2 + 0) / 3 = 1.0."""
    per = torch.tensor([[1.0] + [0.0] * 8, [2.0] * 9, [3.0] + [0.0] * 8], dtype=torch.float64)
    lengths = torch.tensor([[1] + [0] * 8, [1] * 9, [1] + [0] * 8], dtype=torch.float64)
    mask = lengths * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)[:, None]
    assert aggregate_loss(per, mask, "token-mean").item() == pytest.approx(1.9, rel=1e-15)
    assert aggregate_loss(per, mask, "seq-mean-token-mean-all").item() == pytest.approx(1.0, rel=1e-15)
    assert aggregate_loss(per, mask, "seq-mean-token-mean").item() == pytest.approx(1.5, rel=1e-15)


def test_seq_mean_token_sum_norm_divides_by_a_constant():
    """The divisor is loss_scale_factor (the run's max response length), not the batch's longest response."""
    per = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert aggregate_loss(per, mask, "seq-mean-token-sum-norm").item() == pytest.approx(6 / 3, rel=1e-15)
    assert aggregate_loss(per, mask, "seq-mean-token-sum-norm", 8).item() == pytest.approx(6 / 8, rel=1e-15)
    assert aggregate_loss(per[:, :2], mask[:, :2], "seq-mean-token-sum-norm", 8).item() == pytest.approx(
        6 / 8, rel=1e-15)  # the same batch padded narrower: the same loss
    s, t, ids, rmask, _, _, _ = make_batch()
    cfg = SelfDistillationConfig(distillation_topk=5, is_clip=None, loss_agg_mode="seq-mean-token-sum-norm")
    wide, _ = sdpo_loss(s, t, ids, rmask, cfg)
    scaled, _ = sdpo_loss(s, t, ids, rmask, SelfDistillationConfig(**{**cfg.to_dict(), "loss_scale_factor": 64}))
    assert scaled.item() == pytest.approx(wide.item() * ids.shape[1] / 64, rel=1e-12)
    lp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = grpo_loss(lp, lp.detach(), torch.tensor([1.0, -1.0], dtype=torch.float64), mask,
                        loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=8)
    assert loss.item() == pytest.approx((-1 - 1 + 1) / 8, rel=1e-15)


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.3, 0.3])
    groups = ["a", "a", "a", "b", "c", "c"]
    adv = group_advantages(rewards, groups)
    std_a = math.sqrt(1 / 3)  # unbiased std of (1, 0, 1)
    expected = [(1 / 3) / (std_a + 1e-6), (-2 / 3) / (std_a + 1e-6), (1 / 3) / (std_a + 1e-6), 0.0, 0.0, 0.0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert group_advantages(rewards, groups, norm_by_std=False).tolist() == pytest.approx(
        [1 / 3, -2 / 3, 1 / 3, 0.0, 0.0, 0.0], abs=1e-7)
    # tensor group ids, integer rewards, interleaved groups
    adv_t = group_advantages(torch.tensor([2, 0, 4, 4]), torch.tensor([7, 3, 7, 3]), norm_by_std=False)
    assert adv_t.dtype == torch.float32 and adv_t.tolist() == [-1.0, -2.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(rewards, groups[:3])
