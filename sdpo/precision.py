"""float32 master weights for full fine-tuning of a bfloat16 / float16 model.

AdamW stepping bfloat16 weights directly loses almost every update at the learning rates RL fine-tuning uses:
a bfloat16 weight of magnitude w moves only when the step exceeds half its spacing (w * 2^-9), and an Adam step
is about lr (1e-6 in the paper's LiveCodeBench runs) while w is ~1e-2. Measured on the tiny model (3 steps at
lr 1e-6, full fine-tuning): 1.5% of the bfloat16 weights changed at all and their mean movement was 0.019x the
float32 run's. The reference (lasgroup/SDPO, verl FSDP) keeps the actor's weights in float32 and computes in
bfloat16 (FSDP mixed precision).

:class:`MasterWeightAdamW` keeps a float32 copy ("master") of every low-precision trainable parameter; AdamW and
its moments live on the masters; each step moves the model's gradients into the masters (in float32), steps
them, and writes the updated masters, rounded, back into the model. So the model is the compute copy and the
masters are the real weights: checkpoints store the masters (:func:`checkpoint_weights`) and the EMA teacher
moves towards them (:func:`master_weights`).

Why an explicit master copy rather than float32 parameters under ``torch.autocast``:

- memory: the same 16 bytes per trainable weight either way (bf16 weight 2 + bf16 grad 2 + fp32 master 4 +
  two fp32 Adam moments 8, against fp32 weight 4 + fp32 grad 4 + moments 8), but autocast also holds a bf16
  copy of each weight for the backward of every forward in flight, and a float32 model would make the
  full-model EMA teacher (its own 4 bytes per weight here) and every no-grad forward (teacher logits, old
  log-probs, HF sampling) cast the weights again;
- speed: the forward and backward run the very kernels of a plain bf16 model (no per-forward weight cast; a
  step's forwards are many: micro-batches of one sequence, teacher forwards, old log-probs), the vLLM and HF
  samplers receive bf16 weights as before; the extra work is one float32 copy of gradients and weights per
  optimizer step;
- one mechanism for one process, DDP and FSDP2: under FSDP the masters are float32 DTensor shards of the
  sharded parameters (element-wise, no communication).

LoRA adapters are created in float32 by peft (``autocast_adapter_dtype``) on a bf16 base, so a LoRA run needs
no masters and :func:`make_adamw` builds a plain AdamW for it. float16 has no loss scaling here: a step whose
gradient is not finite is skipped (``sdpo.update``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from sdpo.distributed import shard_like

LOW_PRECISION = (torch.bfloat16, torch.float16)


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW on float32 masters of ``named_params`` (name, parameter) pairs; see the module docstring.

    ``param_groups`` / ``state_dict()`` are those of the masters (same layout as a plain AdamW over the model's
    parameters: one state entry per parameter, in order). ``step()`` expects the gradients on the masters
    (:meth:`pull_grads`) and writes the stepped masters back into the model's parameters.
    """

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], **kwargs):
        named = list(named_params)
        self.names = [n for n, _ in named]
        self.model_params = [p for _, p in named]
        masters = [p.detach().to(torch.float32).clone().requires_grad_(True) for p in self.model_params]
        super().__init__(masters, **kwargs)

    @property
    def masters(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def pull_grads(self) -> list[Tensor]:
        """Move the model's gradients into the masters as float32 (the model's are freed); returns the masters."""
        masters = self.masters
        for p, m in zip(self.model_params, masters, strict=True):
            m.grad = None if p.grad is None else p.grad.to(torch.float32)
            p.grad = None
        return masters

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        self.push_weights()
        return loss

    @torch.no_grad()
    def push_weights(self) -> None:
        """Write the masters into the model's parameters (rounded to their dtype)."""
        for p, m in zip(self.model_params, self.masters, strict=True):
            p.copy_(m)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        for p in self.model_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def master_weights(self) -> dict[str, Tensor]:
        """The masters by parameter name (``model.named_parameters()`` names)."""
        return dict(zip(self.names, self.masters, strict=True))

    @torch.no_grad()
    def load_master_weights(self, weights: dict[str, Tensor]) -> None:
        """Set the masters from full tensors by name (a checkpoint's weights; re-sharded like their
        parameters under FSDP) and write them into the model. Names missing from ``weights`` keep their
        current master (e.g. a tied LM head saved once under the embedding's name)."""
        for name, m in zip(self.names, self.masters, strict=True):
            if name in weights:
                m.copy_(shard_like(weights[name].to(torch.float32), m))
        self.push_weights()


def make_adamw(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)):
    """AdamW over ``model``'s trainable parameters: on float32 masters (:class:`MasterWeightAdamW`) when any
    of them is bfloat16 / float16, else a plain ``torch.optim.AdamW`` (float32, float64, LoRA adapters)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if any(p.dtype in LOW_PRECISION for _, p in named):
        return MasterWeightAdamW(named, lr=lr, weight_decay=weight_decay, betas=betas)
    return torch.optim.AdamW([p for _, p in named], lr=lr, weight_decay=weight_decay, betas=betas)


def step_tensors(optimizer, model_params: list[Tensor]) -> list[Tensor]:
    """The tensors whose gradients this optimizer step uses (to all-reduce, clip and step): the float32
    masters, with the model's gradients moved into them, for :class:`MasterWeightAdamW`; else
    ``model_params`` themselves."""
    if isinstance(optimizer, MasterWeightAdamW):
        return optimizer.pull_grads()
    return model_params


def master_weights(optimizer) -> dict[str, Tensor] | None:
    """The float32 masters by parameter name, or None when the optimizer steps the model's own weights."""
    return optimizer.master_weights() if isinstance(optimizer, MasterWeightAdamW) else None


def checkpoint_weights(model: nn.Module, masters: dict[str, Tensor],
                       weights: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``weights`` (default ``model.state_dict()``) with every trainable weight replaced by its float32 master
    (tied names, e.g. an LM head tied to the embedding, share one master): what a checkpoint stores.

    masters: :func:`master_weights` of the optimizer (under FSDP gathered to full tensors by the caller, with
    ``weights`` the gathered model state)."""
    out = dict(model.state_dict() if weights is None else weights)
    first = {id(p): n for n, p in model.named_parameters()}
    for name, p in model.named_parameters(remove_duplicate=False):
        master = masters.get(first.get(id(p), name))
        if master is not None and name in out:
            out[name] = master
    return out
