"""Rollout-correction weights against a float64 reference written element by element."""

import math

import pytest
import torch

from sdpo.config import ConfigError
from sdpo.rollout.correction import SAFETY_BOUND, rollout_is_weights


def reference(trainer, sampler, mask, threshold):
    """Plain-Python float64 version of the rule: w = min(exp(clamp(lt - ls, -20, 20)), c) on valid tokens."""
    weights, ratios, log_ratios = [], [], []
    for row_t, row_s, row_m in zip(trainer, sampler, mask, strict=True):
        out = []
        for lt, ls, m in zip(row_t, row_s, row_m, strict=True):
            if not m:
                out.append(0.0)
                continue
            lr = lt - ls
            r = math.exp(max(-SAFETY_BOUND, min(SAFETY_BOUND, lr)))
            ratios.append(r)
            log_ratios.append(lr)
            out.append(min(r, threshold))
        weights.append(out)
    n = len(ratios)
    metrics = {
        "rollout_corr/is_mean": sum(ratios) / n,
        "rollout_corr/is_max": max(ratios),
        "rollout_corr/is_min": min(ratios),
        "rollout_corr/is_fraction_high": sum(r > threshold for r in ratios) / n,
        "rollout_corr/is_fraction_low": sum(r < 1 / threshold for r in ratios) / n,
        "rollout_corr/kl": sum(-lr for lr in log_ratios) / n,
        "rollout_corr/k3_kl": sum(r - lr - 1 for r, lr in zip(ratios, log_ratios, strict=True)) / n,
        "rollout_corr/chi2_token": sum(r * r for r in ratios) / n - 1,
        "rollout_corr/tokens": n,
    }
    return weights, metrics


def random_case(seed, b=4, t=7, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    sampler = -torch.rand(b, t, generator=g, dtype=torch.float64) * 5
    trainer = sampler + torch.randn(b, t, generator=g, dtype=torch.float64) * spread
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return trainer, sampler, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [2.0, 1.25, 5.0])
def test_matches_float64_reference(seed, threshold):
    trainer, sampler, mask = random_case(seed)
    weights, metrics = rollout_is_weights(trainer, sampler, mask, threshold=threshold)
    ref_w, ref_m = reference(trainer.tolist(), sampler.tolist(), mask.tolist(), threshold)
    assert weights.dtype == torch.float64
    torch.testing.assert_close(weights, torch.tensor(ref_w, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert metrics.keys() == ref_m.keys()
    for key, value in ref_m.items():
        assert metrics[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_hand_computed_values():
    # ratios: e^{ln 3} = 3 -> truncated to 2; e^0 = 1; e^{-ln 4} = 0.25; padding -> 0
    trainer = torch.tensor([[math.log(3.0), -1.0, -math.log(4.0), 123.0]])
    sampler = torch.tensor([[0.0, -1.0, 0.0, float("-inf")]])
    mask = torch.tensor([[1, 1, 1, 0]])
    weights, metrics = rollout_is_weights(trainer, sampler, mask, threshold=2.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0, 0.25, 0.0]]))
    assert metrics["rollout_corr/is_mean"] == pytest.approx((3 + 1 + 0.25) / 3, rel=1e-6)
    assert metrics["rollout_corr/is_fraction_high"] == pytest.approx(1 / 3)
    assert metrics["rollout_corr/is_fraction_low"] == pytest.approx(1 / 3)
    assert metrics["rollout_corr/tokens"] == 3
    assert all(math.isfinite(v) for v in metrics.values())


def test_identical_policies_give_unit_weights_and_zero_kl():
    trainer, _, mask = random_case(3)
    weights, metrics = rollout_is_weights(trainer, trainer.clone(), mask)
    torch.testing.assert_close(weights, mask.to(torch.float64))
    assert metrics["rollout_corr/kl"] == 0.0
    assert metrics["rollout_corr/k3_kl"] == 0.0
    assert metrics["rollout_corr/chi2_token"] == pytest.approx(0.0, abs=1e-12)


def test_safety_bound_keeps_extreme_ratios_finite():
    trainer = torch.tensor([[0.0, -200.0]], dtype=torch.float32)
    sampler = torch.tensor([[-200.0, 0.0]], dtype=torch.float32)
    weights, metrics = rollout_is_weights(trainer, sampler, torch.ones(1, 2), threshold=2.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, math.exp(-SAFETY_BOUND)]]))
    assert metrics["rollout_corr/is_max"] == pytest.approx(math.exp(SAFETY_BOUND), rel=1e-5)
    assert all(math.isfinite(v) for v in metrics.values())


def test_weights_are_detached_and_upcast_from_bfloat16():
    trainer = torch.tensor([[-1.0, -2.0]], dtype=torch.bfloat16, requires_grad=True)
    sampler = torch.tensor([[-1.5, -1.0]], dtype=torch.bfloat16)
    weights, _ = rollout_is_weights(trainer, sampler, torch.tensor([[True, True]]))
    assert weights.dtype == torch.float32
    assert not weights.requires_grad
    torch.testing.assert_close(weights, torch.tensor([[math.exp(0.5), math.exp(-1.0)]]), rtol=1e-6, atol=0)


def test_fully_masked_batch_returns_zero_weights():
    trainer, sampler, _ = random_case(4)
    weights, metrics = rollout_is_weights(trainer, sampler, torch.zeros_like(trainer, dtype=torch.bool))
    assert torch.count_nonzero(weights) == 0
    assert metrics == {"rollout_corr/tokens": 0}


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("inf"), float("nan"), True, "2"])
def test_rejects_bad_threshold(threshold):
    trainer, sampler, mask = random_case(0)
    with pytest.raises(ConfigError, match="rollout_correction_threshold"):
        rollout_is_weights(trainer, sampler, mask, threshold=threshold)


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        rollout_is_weights(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
