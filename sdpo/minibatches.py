"""The plan of one policy update: its optimizer steps (mini-batches), their micro-batches and the scales that make
the accumulated micro-batch gradients the mini-batch loss's gradient exactly, in every ``loss_agg_mode`` and on
any number of data-parallel ranks (paper Sec. 3; reference lasgroup/SDPO ``dp_actor.update_policy``).

The batch is in global sample order, ranks holding contiguous blocks of it (``sizes[r]`` samples on rank r).
Each of ``ppo_epochs`` epochs splits a (seeded) shuffle of the global order into mini-batches of
``mini_batch_size`` samples, one optimizer step each; each rank runs its samples of a mini-batch in micro-batches
of ``micro_batch_size``, padded with dummy micro-batches (zero weight) up to the count of the rank with the most,
so that every rank runs the same forwards, backwards and collectives.

The losses normalise per micro-batch (``sdpo.losses.aggregation``); a micro-batch's scale is its share of the
mini-batch's aggregation weights over its own. Over ranks the mini-batch's normaliser (``agg_denominator``) is a
sum of the ranks' parts: :meth:`UpdatePlan.globalised` rescales every micro-batch to the global mini-batch once
the ranks' ``local_denominators`` are summed, so that the sum over ranks of the local gradients is the global
mini-batch gradient. Everything here is a pure function of the sizes, the masks and the settings.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from sdpo.losses import aggregation_weights


@dataclass(frozen=True)
class MicroBatch:
    """One forward/backward on this rank.

    rows: [b] indices into this rank's batch, or None for a dummy pass (row 0 with weight 0: the same forward,
        backward and collectives as the other ranks, no contribution).
    scales: per loss term (a key of the plan's masks), the factor of its micro-batch loss; 0 for a dummy.
    """

    rows: Tensor | None
    scales: dict[str, float]

    @property
    def dummy(self) -> bool:
        return self.rows is None


@dataclass(frozen=True)
class Step:
    """One optimizer step: this rank's samples of a mini-batch (``rows``, sorted) and their micro-batches.

    denominators: per loss term, ``agg_denominator`` of this rank's part of the mini-batch (additive over ranks).
    """

    rows: Tensor
    micro: list[MicroBatch]
    denominators: dict[str, float]


@dataclass(frozen=True)
class UpdatePlan:
    """The optimizer steps of one update on one rank, in order (epoch by epoch), and the micro-batches of the old
    log-probs' forwards (``None``: a dummy pass; as many on every rank)."""

    steps: list[Step]
    old_logprob_micro: list[Tensor | None]

    def local_denominators(self) -> list[float]:
        """Every step's denominators in one flat list (step by step, terms in key order): what the ranks sum."""
        return [s.denominators[k] for s in self.steps for k in sorted(s.denominators)]

    def globalised(self, totals: Sequence[float] | Tensor, loss_agg_mode: str) -> UpdatePlan:
        """This plan with every scale under the global mini-batch's aggregation weights; ``totals``: the sum over
        ranks of ``local_denominators()``. seq-mean-token-sum-norm divides by a constant and needs no rescale."""
        if loss_agg_mode == "seq-mean-token-sum-norm":
            return self
        totals = [float(x) for x in totals]
        steps, i = [], 0
        for step in self.steps:
            factor = {}
            for k in sorted(step.denominators):
                factor[k] = max(step.denominators[k], 1.0) / max(totals[i], 1.0)
                i += 1
            micro = [replace(m, scales={k: v * factor[k] for k, v in m.scales.items()})
                     for m in step.micro]
            steps.append(replace(step, micro=micro))
        return replace(self, steps=steps)


def agg_denominator(mask: Tensor, loss_agg_mode: str) -> float:
    """The batch-dependent normaliser of ``aggregation_weights(mask, mode)`` before clamping, additive over
    data-parallel ranks: the token count (token-mean), the active-sequence count (seq-mean-token-sum,
    seq-mean-token-mean), the sequence count (seq-mean-token-mean-all); 0 for seq-mean-token-sum-norm, whose
    normaliser is a constant (loss_scale_factor, else the global padded width)."""
    if loss_agg_mode == "token-mean":
        return float(mask.float().sum())
    if loss_agg_mode == "seq-mean-token-sum-norm":
        return 0.0
    if loss_agg_mode == "seq-mean-token-mean-all":
        return float(mask.shape[0])
    return float((mask.float().sum(-1) > 0).sum())


def accumulation_scale(mask_mini: Tensor, local: Tensor, loss_agg_mode: str) -> float:
    """Gradient-accumulation scale of the micro-batch ``local`` (positions in the mini-batch ``mask_mini``
    [m, T]): its share of the mini-batch's aggregation weights over its own (0 when it has no weight)."""
    w_mini = aggregation_weights(mask_mini, loss_agg_mode, torch.float64)[local].sum()
    w_micro = aggregation_weights(mask_mini[local], loss_agg_mode, torch.float64).sum()
    if float(w_micro) == 0.0:
        return 0.0
    return float(w_mini / w_micro)


def split_rows(n: int, size: int) -> list[Tensor]:
    """``arange(n)`` in consecutive chunks of at most ``size``."""
    return [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]


def plan_update(sizes: Sequence[int], rank: int, masks: Mapping[str, Tensor], loss_agg_mode: str, *,
                micro_batch_size: int, mini_batch_size: int | None, ppo_epochs: int, seed: int) -> UpdatePlan:
    """The plan of one update on rank ``rank`` of ranks holding ``sizes`` samples each (one process: ``[n]``).

    masks: per loss term, this rank's aggregation mask [sizes[rank], T] (e.g. the SDPO mask response_mask *
    sample_mask, and GRPO's response_mask). mini_batch_size: samples per optimizer step (None = the whole global
    batch). The global order is shuffled (``random.Random(seed)``, the same on every rank) unless there is a
    single on-policy step (one epoch, one mini-batch). Scales are local (``globalised`` makes them global).
    """
    n_global, n = sum(sizes), sizes[rank]
    offset = sum(sizes[:rank])
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    mini = mini_batch_size or n_global
    rng = random.Random(seed)
    steps = []
    for _epoch in range(ppo_epochs):
        order = list(range(n_global))
        if ppo_epochs > 1 or mini < n_global:
            rng.shuffle(order)
        for start in range(0, n_global, mini):
            chosen = order[start:start + mini]
            rows = torch.tensor(sorted(g - offset for g in chosen if offset <= g < offset + n), dtype=torch.long)
            per_rank = [sum(1 for g in chosen if s0 <= g < s0 + sz) for s0, sz in zip(starts, sizes, strict=True)]
            n_micro = max(-(-c // micro_batch_size) for c in per_rank)
            local_parts = split_rows(len(rows), micro_batch_size)
            micro = [MicroBatch(rows[local], {k: accumulation_scale(m[rows], local, loss_agg_mode)
                                              for k, m in masks.items()}) for local in local_parts]
            micro += [MicroBatch(None, dict.fromkeys(masks, 0.0)) for _ in range(n_micro - len(micro))]
            steps.append(Step(rows, micro, {k: agg_denominator(m[rows], loss_agg_mode) for k, m in masks.items()}))
    old_passes: list[Tensor | None] = list(split_rows(n, micro_batch_size))
    old_passes += [None] * (-(-max(sizes) // micro_batch_size) - len(old_passes))
    return UpdatePlan(steps, old_passes)
