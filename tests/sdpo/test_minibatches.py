"""The plan of a policy update (sdpo.minibatches): which samples each rank runs in which optimizer step and
micro-batch, the dummy micro-batches that keep ranks in step, and the scales that make the accumulated
micro-batch gradients the (global) mini-batch gradient exactly, in every aggregation mode."""

from __future__ import annotations

import pytest
import torch

from sdpo.losses import aggregation_weights
from sdpo.minibatches import plan_update

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
         "seq-mean-token-mean-all"]


def _mask(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 7, generator=g, dtype=torch.float64) > 0.4).double()


def _plans(sizes, mask, mode, **kw):
    """Every rank's plan, globalised as policy_update does (the ranks' denominators summed)."""
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    plans = [plan_update(sizes, r, {"sdpo": mask[s:s + n]}, mode, **kw)
             for r, (s, n) in enumerate(zip(starts, sizes, strict=True))]
    if len(sizes) > 1:
        totals = torch.tensor([p.local_denominators() for p in plans]).sum(0).tolist()
        plans = [p.globalised(totals, mode) for p in plans]
    return starts, plans


@pytest.mark.parametrize("mode", MODES)
def test_global_acc_scale_gives_the_global_aggregation_weights(mode):
    """Sum over ranks and micro-batches of scale * (micro-batch weights) == global mini-batch weights (float64),
    including a rank whose rows are all masked and micro-batches of different counts per rank."""
    mask = _mask(9)
    mask[6:] = 0.0  # the last rank's rows are fully masked
    starts, plans = _plans([6, 3], mask, mode, micro_batch_size=2, mini_batch_size=None, ppo_epochs=1, seed=0)
    got = torch.zeros_like(mask)
    for start, plan in zip(starts, plans, strict=True):
        (step,) = plan.steps
        local = mask[start:start + len(step.rows)]
        for micro in step.micro:
            if not micro.dummy:
                got[start + micro.rows] += micro.scales["sdpo"] * aggregation_weights(local[micro.rows], mode,
                                                                                      torch.float64)
    torch.testing.assert_close(got, aggregation_weights(mask, mode, torch.float64), rtol=1e-12, atol=1e-15)
    # rank 1 has 3 rows in micro-batches of 2 where rank 0 has 6: one zero-weight dummy pads it to 3 passes
    assert [m.dummy for m in plans[1].steps[0].micro] == [False, False, True]
    assert plans[1].steps[0].micro[-1].scales == {"sdpo": 0.0}


@pytest.mark.parametrize("mode", MODES)
def test_mini_batches_and_epochs_cover_the_global_batch_once_per_epoch(mode):
    """Two ranks of 6 and 5 samples, mini-batches of 4, 2 epochs: every epoch's steps partition the 11 global
    samples; each rank's step runs as many micro-batches as the other (dummies last); within a step the
    micro-batches' scaled weights sum to the global mini-batch weights."""
    sizes, mask = [6, 5], _mask(11, seed=1)
    starts, plans = _plans(sizes, mask, mode, micro_batch_size=2, mini_batch_size=4, ppo_epochs=2, seed=3)
    assert [len(p.steps) for p in plans] == [6, 6]  # ceil(11 / 4) = 3 steps per epoch
    for epoch in range(2):
        seen = []
        for i in range(3 * epoch, 3 * epoch + 3):
            steps = [p.steps[i] for p in plans]
            rows = [start + s.rows for start, s in zip(starts, steps, strict=True)]
            seen += torch.cat(rows).tolist()
            assert len({len(s.micro) for s in steps}) == 1
            got, idx = torch.zeros_like(mask), torch.cat(rows)
            for start, s in zip(starts, steps, strict=True):
                flags = [m.dummy for m in s.micro]
                assert flags == sorted(flags)  # real micro-batches first, then the dummies
                real = [m.rows for m in s.micro if not m.dummy]
                assert torch.equal(torch.cat(real) if real else s.rows, s.rows)  # in order, each row once
                for m in s.micro:
                    if not m.dummy:
                        local = mask[start + s.rows]
                        pos = torch.searchsorted(s.rows, m.rows)
                        got[start + m.rows] += m.scales["sdpo"] * aggregation_weights(local[pos], mode,
                                                                                      torch.float64)
            want = torch.zeros_like(mask)
            want[idx] = aggregation_weights(mask[idx], mode, torch.float64)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
        assert sorted(seen) == list(range(11))
    # the second epoch is another shuffle of the same samples
    first = torch.cat([starts[0] + plans[0].steps[i].rows for i in range(3)]).tolist()
    second = torch.cat([starts[0] + plans[0].steps[i].rows for i in range(3, 6)]).tolist()
    assert sorted(first) == sorted(second) == list(range(6)) and any(
        not torch.equal(plans[0].steps[i].rows, plans[0].steps[i + 3].rows) for i in range(3))


def test_a_rank_without_rows_in_a_mini_batch_runs_dummies_only():
    """11 samples in mini-batches of 2 end with a 1-sample mini-batch: the rank without a row in it runs one
    zero-weight dummy micro-batch and contributes no denominator."""
    sizes, mask = [6, 5], _mask(11, seed=2)
    _, plans = _plans(sizes, mask, "token-mean", micro_batch_size=1, mini_batch_size=2, ppo_epochs=1, seed=5)
    last = [p.steps[-1] for p in plans]
    assert sorted(len(s.rows) for s in last) == [0, 1]
    empty = next(s for s in last if len(s.rows) == 0)
    assert [m.dummy for m in empty.micro] == [True] and empty.micro[0].scales == {"sdpo": 0.0}
    assert empty.denominators == {"sdpo": 0.0}


def test_one_process_on_policy_step_keeps_the_batch_order():
    """One epoch of one mini-batch is the on-policy step: no shuffle, micro-batches in batch order, and the old
    log-probs run in the same micro-batches; a smaller rank pads its old log-prob forwards with dummies."""
    mask = _mask(5)
    plan = plan_update([5], 0, {"grpo": mask}, "token-mean", micro_batch_size=2, mini_batch_size=None,
                       ppo_epochs=1, seed=9)
    (step,) = plan.steps
    assert step.rows.tolist() == [0, 1, 2, 3, 4]
    assert [m.rows.tolist() for m in step.micro] == [[0, 1], [2, 3], [4]]
    assert [r.tolist() for r in plan.old_logprob_micro] == [[0, 1], [2, 3], [4]]
    tokens = mask.sum(-1)
    assert [m.scales["grpo"] for m in step.micro] == pytest.approx(
        [float(tokens[0:2].sum() / tokens.sum()), float(tokens[2:4].sum() / tokens.sum()),
         float(tokens[4:].sum() / tokens.sum())], rel=1e-12)  # token-mean: each micro-batch's token share
    assert step.denominators == {"grpo": float(mask.sum())}
    small = plan_update([5, 1], 1, {"grpo": mask[:1]}, "token-mean", micro_batch_size=2, mini_batch_size=None,
                        ppo_epochs=1, seed=9)
    assert [r is None for r in small.old_logprob_micro] == [False, True, True]
