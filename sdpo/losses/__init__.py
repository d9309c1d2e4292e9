"""SDPO and GRPO losses (arXiv 2601.20802, Sec. 2-3; reference lasgroup/SDPO), as pure tensor functions.

- ``reference``: the SDPO loss written as the formula (``sdpo_loss_reference``), the specification and the
  tests' oracle; full tensors, for float64 checks on small inputs.
- ``aggregation``: how per-token losses become one loss (``loss_agg_mode``).
- ``chunked``: ``sdpo_loss``, the same loss as a memory-lean chunked kernel on [B, T, V] logits, and
  ``token_logprobs``.
- ``hidden``: ``sdpo_loss_from_hidden`` / ``token_logprobs_from_hidden``, the fused LM-head path that never
  holds [B, T, V] logits.
- ``grpo``: ``group_advantages`` and ``grpo_loss``.
- ``family``: SRPO (``srpo_loss``), SC-SDPO (``sc_sdpo_loss``), SDPG (``sdpg_loss``) and the KL penalty to the
  initial policy (``reference_kl_loss``), built on the kernels above; ``reference`` also writes them as formulas.

Shapes: B sequences, T response positions, V vocabulary entries, H hidden size. Logits are aligned to response
positions: position ``t`` predicts ``response_ids[:, t]``.
"""

from sdpo.losses.aggregation import aggregate_loss, aggregation_weights
from sdpo.losses.chunked import sdpo_loss, token_logprobs
from sdpo.losses.family import (
    KL_ESTIMATORS,
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
)
from sdpo.losses.grpo import group_advantages, grpo_loss
from sdpo.losses.hidden import sdpo_loss_from_hidden, token_logprobs_from_hidden
from sdpo.losses.reference import aggregate_reference, sdpo_loss_reference

__all__ = [
    "KL_ESTIMATORS",
    "aggregate_loss",
    "aggregate_reference",
    "aggregation_weights",
    "group_advantages",
    "grpo_loss",
    "pass_rates",
    "reference_kl_loss",
    "sc_sdpo_loss",
    "sc_sdpo_weights",
    "sdpg_beta",
    "sdpg_loss",
    "sdpo_loss",
    "sdpo_loss_from_hidden",
    "sdpo_loss_reference",
    "srpo_entropy_weights",
    "srpo_loss",
    "srpo_routes",
    "token_entropy",
    "token_entropy_from_hidden",
    "token_logprobs",
    "token_logprobs_from_hidden",
]
