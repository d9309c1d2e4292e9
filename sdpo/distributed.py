"""Data-parallel training across processes with ``torch.distributed`` (launched by ``torchrun``).

``sdpo train`` runs unchanged under ``torchrun --nproc_per_node=N``: :func:`init_from_env` reads the
``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` variables torchrun sets and opens the process group (``gloo`` on
CPU, ``nccl`` on CUDA), for ``ddp`` and ``fsdp`` alike. A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) gets :data:`SINGLE`, whose
collectives are no-ops, so the single-process code path is the distributed one with ``world_size == 1``.

How a step is split (see ``docs/scale-out.md``):

- Questions are sharded in contiguous blocks (:func:`shard`); a question's whole group of rollouts stays on one
  rank, so group advantages and successful-sibling reprompts are local and exact.
- Losses are normalised by the *global* aggregation weights of each mini-batch (``sdpo.update._acc_scale``
  with all-reduced token / sequence counts), so the sum over ranks of the local gradients is the gradient of
  the global mini-batch loss. Gradients are summed across ranks (:meth:`DistContext.all_reduce_grads`),
  i.e. DDP semantics with SUM instead of DDP's mean.
- Every rank runs the same number of forward/backward passes and collectives: ranks with fewer micro-batches
  run zero-weight dummy micro-batches, and an all-masked micro-batch still goes through forward/backward.
- ``fsdp`` (FSDP2, :func:`apply_fsdp`) shards the weights instead of replicating them; its forward and backward
  are collectives, so equal pass counts matter there, and so does every generate call (:func:`sync_generate`).
  Checkpoints gather full tensors (:func:`gather_full`) and resumes re-shard them (:func:`shard_like`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

import torch

from sdpo.config import ConfigError
from sdpo.forward import unwrap

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

T = TypeVar("T")
STRATEGIES = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group. ``strategy``: "none" (one process), "ddp" or "fsdp"."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a single process) ---------------------------------------------------------

    def _dev(self) -> torch.device:
        """Device collectives run on: the current CUDA device under nccl, else CPU."""
        if self.enabled and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce(self, values: Sequence[float] | torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Element-wise sum / max / min of a float64 vector over ranks (a CPU tensor is returned)."""
        t = torch.as_tensor(values, dtype=torch.float64).flatten().clone()
        if not self.enabled:
            return t
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
               "min": torch.distributed.ReduceOp.MIN}
        t = t.to(self._dev())
        torch.distributed.all_reduce(t, op=ops[op])
        return t.cpu()

    def all_gather_object(self, obj: T) -> list[T]:
        """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Sum ``.grad`` over ranks in one flat buffer per dtype (a missing grad counts as zeros).

        Not used under FSDP, whose backward already reduce-scatters (sums) the gradients."""
        if not self.enabled or self.strategy == "fsdp":
            return
        by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's trainable parameters to every rank (e.g. randomly initialised LoRA weights).
        Under FSDP call it before :func:`apply_fsdp` (each rank then keeps its shard of the same weights)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for p in module.parameters():
                if p.requires_grad:
                    torch.distributed.broadcast(p.data, src=0)

    def max_divergence(self, tensors: Sequence[torch.Tensor]) -> float:
        """Largest element-wise spread (max - min over ranks) of ``tensors``; 0.0 when the replicas agree."""
        if not self.enabled or not tensors:
            return 0.0
        flat = torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors])
        hi, lo = self.all_reduce(flat, "max"), self.all_reduce(flat, "min")
        return float((hi - lo).abs().max())


SINGLE = DistContext()


def env_world() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from the torchrun environment; (1, 0, 0) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return world, rank, local


def resolve_strategy(requested: str, world_size: int) -> str:
    """The strategy a run uses: "none" for one process whatever was asked; with several processes "none"
    becomes "ddp" (so ``torchrun ... sdpo train`` needs no config change) and "ddp"/"fsdp" stay."""
    if requested not in STRATEGIES:
        raise ConfigError("distributed", f"got {requested!r}; allowed values are "
                          + ", ".join(repr(s) for s in STRATEGIES))
    if world_size <= 1:
        return "none"
    return "ddp" if requested == "none" else requested


def init_from_env(requested: str = "none", *, device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Open the process group torchrun describes (idempotent); :data:`SINGLE` outside torchrun.

    device: "auto" | "cpu" | "cuda" (the run's device setting): nccl with CUDA, gloo on CPU. Under CUDA each
    process binds to GPU ``LOCAL_RANK``. Both ``ddp`` and ``fsdp`` run on either backend (the tests run fsdp
    with gloo on CPU)."""
    world, rank, local = env_world()
    strategy = resolve_strategy(requested, world)
    if strategy == "none":
        return SINGLE
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                             timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local, strategy=strategy)


def shutdown(ctx: DistContext) -> None:
    """Close the process group opened by :func:`init_from_env` (no-op for a single process)."""
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of rank ``rank``'s contiguous block of ``n`` items; sizes differ by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's contiguous block of ``items`` (all of them in a single process)."""
    start, end = shard_bounds(len(items), ctx.rank, ctx.world_size)
    return list(items[start:end])


def _is_dtensor(t: Any) -> TypeGuard[DTensor]:
    from torch.distributed.tensor import DTensor  # FSDP/DTensor modules: only FSDP runs import them

    return isinstance(t, DTensor)


def apply_fsdp(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2 (``fully_shard`` on each decoder layer, then the root).

    The root is the transformers model itself, also under a peft wrapper: peft's forward and ``generate`` both
    call it, so its hooks gather the embeddings / (tied) LM head / final norm for every forward. Gradients
    are summed, not averaged, across ranks (``set_gradient_divide_factor(1.0)`` and a plain SUM reduce-scatter,
    ``set_force_sum_reduction_for_comms``, on every sharded module: the losses are already globally normalised). Every module is marked ``_is_fsdp_managed_module`` so that
    transformers' ``generate`` keeps the ranks in step (``synced_gpus``: a rank that has finished keeps running
    forwards until all have; fully_shard itself marks the modules it manages, and this marks the peft wrapper
    too). Call it after loading weights and after :meth:`DistContext.broadcast_parameters`.
    Tested on CPU with gloo and 2 processes (tests/sdpo/test_fsdp.py); not on GPUs (nccl).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard  # (FSDP runs only)

    if ctx.strategy != "fsdp":
        return model
    root = unwrap(model)  # the module whose __call__ both the training forward and generate go through
    layers = None
    for mod in root.modules():
        if hasattr(mod, "layers") and isinstance(mod.layers, torch.nn.ModuleList):
            layers = mod.layers
            break
    for layer in layers or []:
        fully_shard(layer)
    # the root too is resharded after every forward (FSDP2's default keeps it gathered until the backward,
    # which a no-grad forward -- generate, a frozen teacher copy -- never runs, leaving it unsharded)
    fully_shard(root, reshard_after_forward=True)
    for mod in model.modules():
        if isinstance(mod, FSDPModule):
            mod.set_gradient_divide_factor(1.0)
            mod.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    # transformers' generate then keeps the ranks in step (synced_gpus). fully_shard marks the modules it
    # manages itself; this also covers the wrapper above the root (peft) and any module left outside.
    for mod in model.modules():
        mod._is_fsdp_managed_module = True  # type: ignore[assignment]  # a flag, not a tensor or module
    return model


def gather_full(obj: T) -> T:
    """``obj`` (nested dicts / lists / tuples) with every DTensor replaced by its full tensor on CPU.

    A collective per DTensor: every rank must call it on the same structure (a state dict of the same sharded
    module / optimizer), in the same order. Plain tensors and other values are returned as they are."""
    if _is_dtensor(obj):
        return obj.full_tensor().cpu()  # type: ignore[return-value]  # T is the DTensor's full tensor
    if isinstance(obj, dict):
        return type(obj)((k, gather_full(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_full(v) for v in obj)
    return obj


def shard_like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``full`` laid out like the DTensor ``ref`` (no communication: every rank holds
    ``full``; its dtype is kept); ``full`` itself when ``ref`` is a plain tensor."""
    if not _is_dtensor(ref):
        return full
    from torch.distributed.tensor import distribute_tensor  # (FSDP runs only)

    return distribute_tensor(full.to(device=ref.device), ref.device_mesh, ref.placements,
                             src_data_rank=None)


def sync_generate(sampler: Any, prompts: list, n: int, params: Any, ctx: DistContext) -> list:
    """``sampler.generate(prompts, n, params)`` with the same number of ``generate`` calls on every rank.

    Under FSDP every forward is a collective: transformers' ``synced_gpus`` keeps the decoding steps of one
    call in step, but a rank with fewer chunks (fewer questions, or none) must still join the others' extra
    calls, so it runs throw-away one-sequence generations (results dropped) up to the largest chunk count.
    Other strategies call the sampler directly."""
    if ctx.strategy != "fsdp" or not ctx.enabled:
        return sampler.generate(prompts, n, params) if prompts else []
    batch = max(1, int(getattr(sampler, "batch_size", 1)))
    mine = -(-len(prompts) * n // batch)
    most = int(ctx.all_reduce([float(mine)], "max")[0])
    out = sampler.generate(prompts, n, params) if prompts else []
    filler = [{"role": "user", "content": "."}]
    for _ in range(most - mine):
        sampler.generate([filler], 1, params)
    return out


