"""SRPO, SC-SDPO, SDPG and the reference-policy KL (sdpo.losses.family) against the papers' formulas
(sdpo.losses.reference) in float64, and hand-computed values of their weights and schedules."""

from __future__ import annotations

import math

import pytest
import torch

from sdpo.config import SelfDistillationConfig
from sdpo.losses import (
    aggregate_loss,
    group_advantages,
    pass_rates,
    reference_kl_loss,
    sc_sdpo_loss,
    sc_sdpo_weights,
    sdpg_beta,
    sdpg_loss,
    srpo_entropy_weights,
    srpo_loss,
    srpo_routes,
    token_entropy,
    token_entropy_from_hidden,
    token_logprobs,
)
from sdpo.losses.family import reference_kl_terms, term_share
from sdpo.losses.reference import sc_sdpo_loss_reference, sdpg_loss_reference, srpo_loss_reference
from tests.sdpo.test_losses import AGG_MODES, make_batch, rel_err

# 6 samples in two groups of 3: group 0 has one success (sample 0), group 1 none; samples 1, 3, 4 have a
# teacher context (sample 5 has none), sample 0 too (another success would be its demonstration)
REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
GROUPS = [0, 0, 0, 1, 1, 1]
AVAILABLE = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)


def batch6(seed=0, V=40, T=6):
    s, t, ids, rmask, old, _, rw = make_batch(torch.float64, B=6, T=T, V=V, seed=seed)
    return s, t, ids, rmask, old, rw


# ------------------------------------------------------------------------------------------ SRPO


def test_srpo_routes_only_failed_samples_with_a_teacher_to_sdpo():
    """Sec. 3.1: z_SDPO = (1 − c) m; everything else (successes, failures without teacher information) is GRPO's."""
    assert srpo_routes(REWARDS, AVAILABLE).tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert srpo_routes(torch.tensor([0.7, 0.4]), torch.tensor([1, 1]), success_threshold=0.5).tolist() == [0.0, 1.0]


def test_srpo_entropy_weights_hand_computed():
    """w̃ = exp(−β H), normalised to mean 1 over the SDPO tokens: entropies 0, ln 2, ln 4 at β = 1 give
    w̃ = 1, 1/2, 1/4, mean 7/12, w = 12/7, 6/7, 3/7; a token outside Ω_sdpo gets 0 and does not count."""
    h = torch.tensor([[0.0, math.log(2.0)], [math.log(4.0), 0.3]], dtype=torch.float64)
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    w, norm = srpo_entropy_weights(h, m, beta=1.0)
    assert norm == pytest.approx(7 / 12, rel=1e-15)
    assert w.flatten().tolist() == pytest.approx([12 / 7, 6 / 7, 3 / 7, 0.0], rel=1e-14)
    # β = 2 sharpens: w̃ = 1, 1/4, 1/16
    w2, _ = srpo_entropy_weights(h, m, beta=2.0)
    assert w2[0, 0] / w2[0, 1] == pytest.approx(4.0, rel=1e-14)
    # a normaliser over a larger set (the whole batch) is used as given
    w3, n3 = srpo_entropy_weights(h, m, beta=1.0, normaliser=0.5)
    assert n3 == 0.5 and w3[0, 0] == pytest.approx(2.0)
    z, nz = srpo_entropy_weights(h, torch.zeros_like(m))
    assert nz == 0.0 and z.abs().max() == 0


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("support", ["topk-tail", "full"])
@pytest.mark.parametrize("is_clip", [None, 2.0])
def test_srpo_matches_float64_reference(agg, support, is_clip):
    s, t, ids, rmask, old, _ = batch6()
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=5 if support == "topk-tail" else None,
                                 is_clip=is_clip, temperature=0.8, loss_agg_mode=agg)
    adv = group_advantages(REWARDS, GROUPS)
    route = srpo_routes(REWARDS, AVAILABLE)
    x = s.clone().requires_grad_()
    loss, m = srpo_loss(x, t, ids, rmask, route, adv, old, cfg, entropy_beta=1.3, temperature=0.8,
                        clip_ratio_high=0.28)
    loss.backward()
    y = s.clone().requires_grad_()
    ref = srpo_loss_reference(y, t, ids, rmask, REWARDS, AVAILABLE, adv, old, cfg, entropy_beta=1.3,
                              temperature=0.8, clip_high=0.28)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    assert rel_err(x.grad, y.grad) < 1e-9
    assert m["srpo/route_sdpo_fraction"] == pytest.approx(0.5) and m["srpo/route_grpo_fraction"] == pytest.approx(0.5)
    assert 0 < m["srpo/entropy_weight_mean"] <= m["srpo/entropy_weight_max"]
    # every sample contributes: the GRPO rows (0, 2, 5; sample 0 has A > 0) and the SDPO rows
    assert all(float(x.grad[i].abs().max()) > 0 for i in (0, 1, 2, 3))


def test_srpo_with_batch_weights_equals_the_whole_batch_in_halves():
    """The entropy weights normalised over the whole batch and handed to each half give the halves' losses that,
    scaled by their share of the tokens, add up to the whole batch's loss and gradient (token-mean)."""
    s, t, ids, rmask, old, _ = batch6(seed=2)
    cfg = SelfDistillationConfig(alpha=1.0, distillation_topk=5, is_clip=None, loss_agg_mode="token-mean")
    adv, route = group_advantages(REWARDS, GROUPS), srpo_routes(REWARDS, AVAILABLE)
    sel = rmask * route[:, None]
    w, _ = srpo_entropy_weights(token_entropy(t, sel), sel)
    x = s.clone().requires_grad_()
    whole, _ = srpo_loss(x, t, ids, rmask, route, adv, old, cfg, entropy_weights=w)
    whole.backward()
    y = s.clone().requires_grad_()
    total = 0.0
    for rows in (torch.arange(0, 3), torch.arange(3, 6)):
        part, _ = srpo_loss(y[rows], t[rows], ids[rows], rmask[rows], route[rows], adv[rows], old[rows], cfg,
                            entropy_weights=w[rows])
        share = float(rmask[rows].double().sum() / rmask.double().sum())
        (share * part).backward()
        total += share * part.item()
    assert total == pytest.approx(whole.item(), rel=1e-12)
    assert rel_err(y.grad, x.grad) < 1e-12


def test_srpo_fused_from_hidden_equals_logits():
    g = torch.Generator().manual_seed(5)
    B, T, H, V = 6, 5, 12, 40
    hs = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    ht = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    _, _, ids, rmask, old, _ = batch6(V=V, T=T)
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=5, is_clip=2.0)
    adv, route = group_advantages(REWARDS, GROUPS), srpo_routes(REWARDS, AVAILABLE)
    h1, w1 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    lf, mf = srpo_loss(h1, ht, ids, rmask, route, adv, old, cfg, head_weight=w1)
    lf.backward()
    h2, w2 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    lu, mu = srpo_loss(h2 @ w2.T, (ht @ w2.T).detach(), ids, rmask, route, adv, old, cfg)
    lu.backward()
    assert lf.item() == pytest.approx(lu.item(), rel=1e-10)
    assert rel_err(h1.grad, h2.grad) < 1e-10 and rel_err(w1.grad, w2.grad) < 1e-10
    assert mf["srpo/entropy_weight_max"] == pytest.approx(mu["srpo/entropy_weight_max"], rel=1e-10)


# --------------------------------------------------------------------------------------- SC-SDPO


def test_sc_sdpo_weights_hand_computed():
    """p̂ = 1/4, 1/2, 1 and 0 for four groups of 4; s = √(3)/4, 1/2, 0, 0. The batch's distilled questions are
    the first three (the fourth has no teacher context), so the normaliser is (√3/4 + 1/2 + 0) / 3 and the
    weights average 1 over them."""
    rewards = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float64)
    groups = [g for g in range(4) for _ in range(4)]
    distilled = torch.tensor([0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    assert pass_rates(rewards, groups).tolist() == [0.25] * 4 + [0.5] * 4 + [1.0] * 4 + [0.0] * 4
    w, norm = sc_sdpo_weights(rewards, groups, distilled)
    s = [math.sqrt(3) / 4, 0.5, 0.0, 0.0]
    assert norm == pytest.approx((s[0] + s[1]) / 3, rel=1e-15)
    assert w.tolist() == pytest.approx([x / norm for x in s for _ in range(4)], rel=1e-14)
    assert sum(w[[0, 4, 8]].tolist()) / 3 == pytest.approx(1.0, rel=1e-14)
    # a larger batch's normaliser (other ranks) is used as given; nothing distilled: all zero
    assert sc_sdpo_weights(rewards, groups, distilled, normaliser=0.5)[0][0] == pytest.approx(2 * s[0])
    z, nz = sc_sdpo_weights(rewards, groups, torch.zeros(16))
    assert nz == 0.0 and z.abs().max() == 0
    # a threshold below 1 counts partial rewards as passes
    assert pass_rates(torch.tensor([0.6, 0.4]), [0, 0], success_threshold=0.5).tolist() == [0.5, 0.5]


@pytest.mark.parametrize("agg", AGG_MODES)
def test_sc_sdpo_matches_float64_reference(agg):
    s, t, ids, rmask, old, _ = batch6(seed=3)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # p̂ = 2/3, 1/3
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=5, is_clip=2.0, temperature=0.7, loss_agg_mode=agg)
    w, _ = sc_sdpo_weights(rewards, GROUPS, AVAILABLE)
    x = s.clone().requires_grad_()
    loss, m = sc_sdpo_loss(x, t, ids, rmask, cfg, w, old_logprobs=old, sample_mask=AVAILABLE)
    loss.backward()
    y = s.clone().requires_grad_()
    ref = sc_sdpo_loss_reference(y, t, ids, rmask, rewards, GROUPS, AVAILABLE, cfg, old_logprobs=old)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    assert rel_err(x.grad, y.grad) < 1e-9
    assert m["sc_sdpo/weight_mean"] == pytest.approx(1.0, rel=1e-12)  # both questions have equal s: weights 1
    assert m["sc_sdpo/zero_weight_fraction"] == 0.0


def test_sc_sdpo_drops_questions_outside_the_sweet_spot():
    """A question every rollout solves (or none does) has weight 0: its samples leave no gradient, while SDPO
    would still distil them."""
    s, t, ids, rmask, _, _ = batch6(seed=4)
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # p̂ = 1, 1/3
    cfg = SelfDistillationConfig(alpha=1.0, distillation_topk=5, is_clip=None)
    w, _ = sc_sdpo_weights(rewards, GROUPS, AVAILABLE)
    x = s.clone().requires_grad_()
    loss, m = sc_sdpo_loss(x, t, ids, rmask, cfg, w, sample_mask=AVAILABLE)
    loss.backward()
    assert x.grad[:3].abs().max() == 0 and x.grad[3:5].abs().max() > 0
    assert m["sc_sdpo/zero_weight_fraction"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------- SDPG


def test_sdpg_beta_schedule():
    """Sec. 3.5.2: β(k) = β_base min(1, k/T_warm) min(1, (T − k)/T_decay); the paper's T_warm 50, T_decay 350
    over T = 400."""
    assert sdpg_beta(1e-3, 25, 400, 50, 350) == pytest.approx(0.5e-3)
    assert sdpg_beta(1e-3, 50, 400, 50, 350) == pytest.approx(1e-3)
    assert sdpg_beta(1e-3, 225, 400, 50, 350) == pytest.approx(1e-3 * 175 / 350)
    assert sdpg_beta(1e-3, 400, 400, 50, 350) == 0.0
    assert sdpg_beta(2.0, 3, 10, 0, 0) == 2.0 and sdpg_beta(2.0, None, None, 50, 350) == 2.0
    assert sdpg_beta(1.0, 4, 10, 8, 8) == pytest.approx(0.5 * 6 / 8)  # overlapping windows: below β_base


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("estimator", ["urkl", "ufkl", "k3"])
def test_sdpg_matches_float64_reference(agg, estimator):
    s, t, ids, rmask, old, _ = batch6(seed=6)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    ref_lp = token_logprobs(s + torch.randn(s.shape, generator=g, dtype=torch.float64) * 0.3, ids, 0.9)
    # a top-k distillation config: SDPG distils the full vocabulary with the reverse KL whatever it says
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=5, is_clip=2.0, temperature=0.9, loss_agg_mode=agg)
    adv = group_advantages(rewards, GROUPS)
    gate = (adv > 0).double() * AVAILABLE
    x = s.clone().requires_grad_()
    loss, m = sdpg_loss(x, t, ids, rmask, adv, old, cfg, opd_mask=gate, beta=0.7, ref_logprobs=ref_lp,
                        kl_coef=0.3, kl_estimator=estimator, temperature=0.9)
    loss.backward()
    y = s.clone().requires_grad_()
    ref = sdpg_loss_reference(y, t, ids, rmask, rewards, GROUPS, AVAILABLE, old, ref_lp, cfg, beta=0.7,
                              kl_coef=0.3, kl_estimator=estimator, temperature=0.9)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)  # group_advantages is float64 with eps in float
    assert rel_err(x.grad, y.grad) < 1e-6
    assert m["sdpg/gate_fraction"] == pytest.approx(float(gate.mean()))
    assert m["sdpg/beta"] == 0.7 and "sdpg/ref_kl" in m


def test_sdpg_gate_keeps_the_opd_term_off_failed_and_uninformative_samples():
    """m_i = 1[A_i > 0]: with β large only the positively advantaged samples' distributions are pulled to the
    teacher; with the KL term off and all rewards equal, A = 0 and the loss has no gradient at all."""
    s, t, ids, rmask, old, _ = batch6(seed=7)
    cfg = SelfDistillationConfig(is_clip=None)
    flat = torch.zeros(6, dtype=torch.float64)
    x = s.clone().requires_grad_()
    loss, m = sdpg_loss(x, t, ids, rmask, group_advantages(flat, GROUPS), old, cfg,
                        opd_mask=(group_advantages(flat, GROUPS) > 0).double(), beta=5.0)
    loss.backward()
    assert x.grad.abs().max() == 0 and m["sdpg/gate_fraction"] == 0.0


def test_sdpg_opd_term_is_the_exact_full_vocabulary_reverse_kl():
    """β·L_OPD alone (A = 0 so L_out vanishes, every sample gated in): token-mean of Σ_a p log(p/q)."""
    s, t, ids, rmask, old, _ = batch6(seed=8)
    cfg = SelfDistillationConfig(distillation_topk=3, alpha=0.0, is_clip=None)
    loss, _ = sdpg_loss(s, t, ids, rmask, torch.zeros(6, dtype=torch.float64), old, cfg,
                        opd_mask=torch.ones(6, dtype=torch.float64), beta=2.0)
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    kl = (ls.exp() * (ls - lt)).sum(-1)
    assert loss.item() == pytest.approx(2.0 * float((kl * rmask).sum() / rmask.sum()), rel=1e-12)


# ------------------------------------------------------------------------------ reference-policy KL


def test_reference_kl_estimators_hand_computed():
    """r = π_θ/π_ref = e^{0.5}: urkl ½·0.25, ufkl e^{−0.5} + 0.5, k3 e^{−0.5} + 0.5 − 1 (≥ 0, = 0 at r = 1);
    ufkl and k3 differ by 1 and have the same gradient."""
    lp = torch.tensor([[0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.zeros(1, 2, dtype=torch.float64)
    assert reference_kl_terms(lp, ref, "urkl")[0].tolist() == pytest.approx([0.125, 0.0])
    assert reference_kl_terms(lp, ref, "ufkl")[0].tolist() == pytest.approx([math.exp(-0.5) + 0.5, 1.0])
    assert reference_kl_terms(lp, ref, "k3")[0].tolist() == pytest.approx([math.exp(-0.5) - 0.5, 0.0])
    g = [torch.autograd.grad(reference_kl_terms(lp, ref, e).sum(), lp)[0] for e in ("k3", "ufkl")]
    assert torch.equal(g[0], g[1])
    loss, m = reference_kl_loss(lp, ref, torch.ones(1, 2), estimator="k3")
    assert loss.item() == pytest.approx((math.exp(-0.5) - 0.5) / 2)
    assert m["ref_kl/log_ratio_mean"] == pytest.approx(0.25)
    # off-policy: each token's term is weighted by the detached ratio to the sampling policy
    old = torch.tensor([[0.5 - math.log(2.0), 0.0]], dtype=torch.float64)
    weighted, _ = reference_kl_loss(lp, ref, torch.ones(1, 2), estimator="urkl", old_logprobs=old)
    assert weighted.item() == pytest.approx(2 * 0.125 / 2)
    with pytest.raises(ValueError, match="kl_estimator"):
        reference_kl_terms(lp, ref, "k2")


# ------------------------------------------------------------------------------------- pieces


def test_token_entropy_matches_the_full_softmax():
    s, _, _, rmask, _, _ = batch6(seed=9)
    ent = token_entropy(s, rmask, temperature=0.7, chunk_size=2)
    lp = torch.log_softmax(s / 0.7, -1)
    ref = -(lp.exp() * lp).sum(-1) * rmask
    assert rel_err(ent, ref) < 1e-12
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(6, 6, 8, generator=g, dtype=torch.float64), torch.randn(40, 8, generator=g, dtype=torch.float64)
    ent_h = token_entropy_from_hidden(h, w, rmask, 0.7, chunk_size=5)
    assert rel_err(ent_h, token_entropy(h @ w.T, rmask, 0.7)) < 1e-12


@pytest.mark.parametrize("agg", AGG_MODES)
def test_term_share_turns_a_subset_loss_into_its_share_of_the_whole(agg):
    g = torch.Generator().manual_seed(2)
    per = torch.randn(6, 6, generator=g, dtype=torch.float64)
    _, _, _, rmask, _, _ = batch6()
    rows = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    whole = aggregate_loss(per * rows[:, None], rmask, agg, 8)
    part = aggregate_loss(per, rmask * rows[:, None], agg, 8)
    assert term_share(rmask, rows, agg, 8) * part.item() == pytest.approx(whole.item(), rel=1e-12)
    assert term_share(rmask, torch.zeros(6, dtype=torch.float64), agg) == 0.0
