"""SDPO / GRPO training runs (paper Sec. 3-4) on any local HF checkpoint, full or LoRA.

``train(cfg, callbacks)`` is one loop that reads top to bottom in numbered steps; the update itself lives in
``sdpo.update.policy_update`` (shared with test-time self-distillation).

Under ``torchrun --nproc_per_node=N`` the same loop is data-parallel (:mod:`sdpo.distributed`): each rank
samples, scores and distils its own block of each step's questions; losses, gradients and metrics are reduced
over ranks; rank 0 alone writes metrics.jsonl, config.yaml and checkpoints, and every rank resumes from them.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from safetensors.torch import load_file, load_model
from tqdm import tqdm

from sdpo import envs
from sdpo.adapters import apply_adapter, is_lora, load_adapter_weights, save_weights
from sdpo.callbacks import Attempt, Callbacks, StopRequested, stop_poll, tensorboard_sink, wandb_sink
from sdpo.config import ConfigError, _choice, _number, apply_overrides, read_config_file
from sdpo.data import humaneval, lasgroup
from sdpo.data.tasks import Task
from sdpo.distributed import (
    SINGLE,
    STRATEGIES,
    DistContext,
    apply_fsdp,
    gather_full,
    init_from_env,
    shard,
    shard_like,
    shutdown,
    sync_generate,
)
from sdpo.envs.code import extract_code
from sdpo.models import chat_ids, default_model_path, load_model_and_tokenizer, resolve_device
from sdpo.precision import MasterWeightAdamW, checkpoint_weights, master_weights
from sdpo.rollout.base import SamplingParams
from sdpo.rollout.select import make_sampler
from sdpo.teacher import make_reference, make_teacher
from sdpo.update import ScoredBatch, UpdateConfig, make_optimizer, policy_update, uses_teacher

SCHEDULES = ("constant", "cosine")
DATASETS = ("humaneval",)


@dataclass
class TrainConfig(UpdateConfig):
    """A training run. Inherits the update settings (loss, lr, self_distillation, ...) from UpdateConfig and the
    policy and sampling settings (adapter, LoRA, n, max_new_tokens, temperature, top_p, top_k, seed, sampler,
    device, dtype, ...) from ``sdpo.config.PolicyConfig``.

    model_path: local HF checkpoint (None = ``sdpo.models.default_model_path()``, the tiny/toy model).
    dataset: "humaneval", or None with ``train_file`` (+ optional ``test_file``) in the lasgroup JSONL format.
    train_batch_size: questions per step; n (inherited): rollouts per question (a group).
    val_every / save_every: steps between validation / checkpoints (0 = only at the end).
    val_k: samples per validation question (val/avg@k = mean reward over them). Validation samples with its
        own settings, the reference's protocol by default: val_temperature 0.6, val_top_p 0.95, val_top_k None
        (user.yaml val_kwargs), every question of the test set (val_max_questions None; a number keeps the
        first that many), responses up to max_new_tokens.
    max_prompt_len: longest chat-templated prompt, in tokens; every train and validation row is checked when
        the data loads (before any step), naming the first row over it.
    distributed: "none" | "ddp" | "fsdp". Only matters under torchrun (WORLD_SIZE > 1), where "none" means
        "ddp"; one process ignores it. "fsdp" (FSDP2) runs on CPU (gloo) and CUDA (nccl); tested on CPU only,
        and not with fused_lm_head (see docs/scale-out.md).
    tensorboard / wandb: also log metrics to TensorBoard (``out_dir/tensorboard``) / a W&B run in project
        ``wandb_project``, when the package is installed (else a warning, and metrics.jsonl only).
    """

    model_path: str | None = None
    out_dir: str = "runs/train"
    dataset: str | None = None
    train_file: str | None = None
    test_file: str | None = None
    val_fraction: float = 0.2
    max_steps: int = 10
    train_batch_size: int = 4
    max_prompt_len: int = 2048
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    dense_reward: bool = False
    val_every: int = 0
    val_k: int = 4
    val_temperature: float = 0.6
    val_top_p: float = 0.95
    val_top_k: int | None = None
    val_max_questions: int | None = None
    save_every: int = 0
    resume_from: str | None = None
    distributed: str = "none"
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "sdpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset is not None:
            _choice("dataset", self.dataset, DATASETS)
            if self.train_file is not None:
                raise ConfigError("train_file", "set either dataset or train_file, not both")
        elif self.train_file is None:
            raise ConfigError("dataset", "no data: set dataset='humaneval' or train_file=PATH (lasgroup JSONL)")
        for name in ("train_file", "test_file"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ConfigError(name, f"file not found: {value}")
        if self.model_path is not None and not (Path(self.model_path) / "config.json").is_file():
            raise ConfigError("model_path", f"no Hugging Face checkpoint (config.json) at {self.model_path}")
        if self.resume_from is not None and not (Path(self.resume_from) / "trainer_state.pt").is_file():
            raise ConfigError("resume_from", f"no checkpoint (trainer_state.pt) at {self.resume_from}")
        _number("val_fraction", self.val_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        for name in ("max_steps", "train_batch_size", "max_prompt_len", "val_k"):
            _number(name, getattr(self, name), lo=1, integer=True)
        for name in ("warmup_steps", "val_every", "save_every"):
            _number(name, getattr(self, name), lo=0, integer=True)
        _number("val_temperature", self.val_temperature, lo=0.0)
        _number("val_top_p", self.val_top_p, lo=0.0, hi=1.0, lo_open=True)
        if self.val_top_k is not None:
            _number("val_top_k", self.val_top_k, lo=1, integer=True)
        if self.val_max_questions is not None:
            _number("val_max_questions", self.val_max_questions, lo=1, integer=True)
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("distributed", self.distributed, STRATEGIES)
        for name in ("progress", "tensorboard", "wandb"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"got {getattr(self, name)!r}; expected true or false")
        if not isinstance(self.wandb_project, str) or not self.wandb_project:
            raise ConfigError("wandb_project", f"got {self.wandb_project!r}; expected a project name")
        if self.distributed == "fsdp" and self.fused_lm_head:
            # the fused path runs the decoder and multiplies by the LM-head weight itself, outside the FSDP root
            # whose forward gathers the (sharded) embeddings / head / norm
            raise ConfigError("fused_lm_head", "fused_lm_head=true cannot run with distributed='fsdp' (the fused "
                              "path reads the LM-head weight outside the sharded forward); set fused_lm_head=false "
                              "or distributed='ddp'")
        if self.mini_batch_size is not None and self.mini_batch_size > self.train_batch_size * self.n:
            raise ConfigError("mini_batch_size", f"got {self.mini_batch_size}; must be <= train_batch_size * n "
                              f"= {self.train_batch_size * self.n} samples per step")


def load_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML run config, apply ``--set`` overrides, validate everything (no model is loaded). Values are
    read as users mean them (``sdpo.config.parse_value``: ``lr: 1e-5`` is a number)."""
    data = read_config_file(path) if path is not None else {}
    return TrainConfig.from_dict(apply_overrides(data, overrides or []))


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)
    stopped: bool = False


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------

def load_data(cfg: TrainConfig) -> tuple[list[Task], list[Task]]:
    """Train and validation tasks for ``cfg`` (errors name file, line and field)."""
    if cfg.dataset == "humaneval":
        return lasgroup.split_tasks(humaneval.load_tasks(), cfg.val_fraction, cfg.seed)
    assert cfg.train_file is not None  # TrainConfig: without a dataset there is a train_file
    train = lasgroup.load_jsonl(cfg.train_file)
    if not train:
        raise ConfigError("train_file", f"{cfg.train_file} holds no rows")
    test = lasgroup.load_jsonl(cfg.test_file) if cfg.test_file else []
    return train, test


def check_prompt_lengths(tokenizer, tasks: list[Task], max_prompt_len: int, where: str) -> None:
    """Raise ConfigError naming ``max_prompt_len`` and the first row whose chat-templated prompt is longer
    (checked when the data loads, so that no step runs before a too-long row would stop the run)."""
    for task in tasks:
        n = len(chat_ids(tokenizer, task.messages))
        if n > max_prompt_len:
            raise ConfigError("max_prompt_len", f"got {max_prompt_len}; the prompt of row {task.id!r} in {where} "
                              f"has {n} tokens; raise max_prompt_len or remove the row")


class TaskStream:
    """Endless seeded pass over the training questions; ``position`` (questions consumed) is the resume state."""

    def __init__(self, tasks: list[Task], seed: int, position: int = 0):
        self.tasks, self.seed, self.position = tasks, seed, position

    def next(self, k: int) -> list[Task]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, len(self.tasks))
            order = list(range(len(self.tasks)))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            out.append(self.tasks[order[i]])
            self.position += 1
        return out


# ---------------------------------------------------------------------------------------------------
# Pieces the loop calls
# ---------------------------------------------------------------------------------------------------

def _set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_policy(cfg: TrainConfig):
    """Load model + tokenizer and apply the adapter; returns (model, tokenizer, model_path)."""
    path = cfg.model_path or str(default_model_path())
    device = resolve_device(cfg.device)
    model, tokenizer = load_model_and_tokenizer(path, dtype=cfg.dtype, device=device)
    model = apply_adapter(model, cfg.adapter, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_target_modules)
    return model, tokenizer, path


def score_rollouts(tasks: list[Task], rollouts, n: int, *, sparse: bool, code_feedback: str = "all_tests"):
    """Reward + feedback for rollout ``i`` of question ``i // n``; code_feedback: ``UpdateConfig.code_feedback``."""
    per_rollout = [tasks[r.prompt_index] for r in rollouts]
    return envs.score_many(per_rollout, [r.text for r in rollouts], [r.truncated for r in rollouts],
                           sparse=sparse, code_feedback=code_feedback)


def validate(sampler, tasks: list[Task], cfg: TrainConfig, step: int,
             dist: DistContext = SINGLE) -> dict[str, float]:
    """val/avg@k: mean reward over k samples of each validation question (all its tests); val/pass@k.

    Data-parallel: each rank samples its block of the questions; sums are reduced over ranks."""
    tasks = tasks[: cfg.val_max_questions] if cfg.val_max_questions else tasks
    if not tasks:
        return {}
    local = shard(tasks, dist)
    sums = [0.0, 0.0, 0.0, 0.0]  # reward sum, solved questions, response tokens, questions
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.val_temperature,
                            top_p=cfg.val_top_p, top_k=cfg.val_top_k,
                            seed=cfg.seed * 7919 + step + 1_000_003 * dist.rank)
    rollouts = sync_generate(sampler, [t.messages for t in local], cfg.val_k, params, dist)  # fsdp: all ranks
    if local:
        full = [t if t.hidden_tests is None else _with_tests(t, t.hidden_tests) for t in local]
        scores = score_rollouts(full, rollouts, cfg.val_k, sparse=True, code_feedback="first_failure")
        rewards = [s.reward for s in scores]
        solved = [max(rewards[i * cfg.val_k:(i + 1) * cfg.val_k]) for i in range(len(local))]
        sums = [sum(rewards), sum(1.0 for s in solved if s >= 1.0),
                float(sum(len(r.response_ids) for r in rollouts)), float(len(local))]
    reward_sum, solved_sum, tokens, questions = (float(x) for x in dist.all_reduce(sums, "sum"))
    samples = questions * cfg.val_k
    return {f"val/avg@{cfg.val_k}": reward_sum / samples,
            f"val/pass@{cfg.val_k}": solved_sum / questions,
            "val/response_length_mean": tokens / samples}


def _with_tests(task: Task, tests) -> Task:
    return replace(task, tests=tests)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def gather_checkpoint_state(model, optimizer, teacher, ctx: DistContext, reference=None) -> dict[str, Any] | None:
    """Under FSDP, the full (unsharded) model weights, optimizer state and teacher state, on rank 0 (CPU);
    None otherwise (the replicas are whole already). Every rank must call it: each gather is a collective.

    Model: ``get_model_state_dict(full_state_dict=True, cpu_offload=True)``. Optimizer and teacher: their own
    ``state_dict()`` with each DTensor gathered to its full tensor, which is the one-process layout (the
    optimizer's state keyed by parameter index, as ``optimizer.state_dict()``), so a 1-process run loads it."""
    if ctx.strategy != "fsdp" or not ctx.enabled:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # (FSDP only)

    weights = cast(dict[str, torch.Tensor],  # full_state_dict: plain tensors, no DTensors
                   get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
    if ctx.is_main:  # tied weights (embeddings / LM head) are one tensor again, as in model.state_dict()
        first: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in first and first[id(p)] in weights and name in weights:
                weights[name] = weights[first[id(p)]]
            first.setdefault(id(p), name)
    masters = master_weights(optimizer)
    if masters is not None:  # the float32 masters are the real weights (gathered on every rank: collectives)
        masters = gather_full(masters)
        if ctx.is_main:
            weights = checkpoint_weights(model, masters, weights)
    opt = gather_full(optimizer.state_dict())
    teacher_state = gather_full(teacher.state_dict()) if teacher is not None else None
    reference_state = gather_full(reference.state_dict()) if reference is not None else None
    return {"model": weights, "optimizer": opt, "teacher": teacher_state,
            "reference": reference_state} if ctx.is_main else None


def _save_gathered_weights(model, tokenizer, out_dir: Path, weights: dict[str, torch.Tensor]) -> tuple[Path, str]:
    """``sdpo.adapters.save_weights``'s layout (adapter/ or model/) written from a gathered full state dict."""
    if is_lora(model):
        path = out_dir / "adapter"
        model.save_pretrained(path, selected_adapters=["default"], state_dict=weights)
        return path, "lora"
    path = out_dir / "model"
    model.save_pretrained(path, safe_serialization=True, state_dict=weights)
    tokenizer.save_pretrained(path)
    return path, "full"


def save_checkpoint(out_dir: Path, step: int, model, tokenizer, optimizer, scheduler, teacher,
                    stream: TaskStream, cfg: TrainConfig, rng_ranks: list[dict[str, Any]] | None = None,
                    gathered: dict[str, Any] | None = None, reference=None) -> tuple[Path, str]:
    """``out_dir/checkpoints/step_N/``: weights (adapter/ or model/), trainer_state.pt (optimizer, scheduler,
    teacher state, RNG states, step, data position), config.yaml. Written to a temp dir, then renamed.

    A full fine-tune with float32 masters (``sdpo.precision``) stores the masters as the model's weights
    (float32 tensors; ``load_model_and_tokenizer(..., dtype="bfloat16")`` gives the compute-dtype model), so
    the saved model is the real update and a resume continues exactly.

    rng_ranks: every data-parallel rank's RNG state (rank order), written by rank 0 alone (weights, optimizer
    and teacher are identical replicas on every rank). gathered: under FSDP, :func:`gather_checkpoint_state`'s
    full states, written instead of the (sharded) live ones; the layout is the same either way. reference: the
    KL penalty's frozen initial policy when it is a copy of its own (not the base teacher, not a LoRA base)."""
    final = out_dir / "checkpoints" / f"step_{step}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if gathered is not None:
        _, kind = _save_gathered_weights(model, tokenizer, tmp, gathered["model"])
        opt_state, teacher_state = gathered["optimizer"], gathered["teacher"]
        reference_state = gathered.get("reference")
    else:
        masters = master_weights(optimizer)
        _, kind = save_weights(model, tokenizer, tmp,
                               state_dict=None if masters is None else checkpoint_weights(model, masters))
        opt_state = optimizer.state_dict()
        teacher_state = teacher.state_dict() if teacher is not None else None
        reference_state = reference.state_dict() if reference is not None else None
    torch.save({
        "step": step, "position": stream.position, "optimizer": opt_state,
        "scheduler": scheduler.state_dict(), "teacher": teacher_state, "reference": reference_state,
        "rng": _rng_state(), "rng_ranks": rng_ranks,
        "adapter": kind,
    }, tmp / "trainer_state.pt")
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final, kind


def load_checkpoint(path: Path, model, optimizer, scheduler, teacher, rank: int = 0) -> dict[str, Any]:
    """Restore a checkpoint into this process; ``rank`` picks its RNG state when the checkpoint holds one per
    data-parallel rank (any other world size gets rank 0's). For unsharded models; ``train()`` under FSDP
    uses the same pieces around :func:`sdpo.distributed.apply_fsdp` (:func:`load_model_state` first)."""
    state = load_model_state(path, model)
    if teacher is not None and state["teacher"] is not None:
        teacher.load_state_dict(state["teacher"])
    load_training_state(state, optimizer, scheduler, rank)
    return state


def load_model_state(path: Path, model) -> dict[str, Any]:
    """Read ``path/trainer_state.pt`` and load the checkpoint's weights into the (unsharded) ``model``; returns
    the trainer state. Every rank reads the same full checkpoint, whatever world size wrote it."""
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    if (state["adapter"] == "lora") != is_lora(model):
        raise ConfigError("resume_from", f"checkpoint {path} is {state['adapter']!r}, this run's adapter differs")
    if is_lora(model):
        load_adapter_weights(model, path / "adapter")
    else:
        _load_full_weights(model, path / "model" / "model.safetensors")
        state["weights_file"] = path / "model" / "model.safetensors"  # float32 masters (load_training_state)
    return state


def load_training_state(state: dict[str, Any], optimizer, scheduler, rank: int = 0) -> None:
    """Optimizer (full tensors, re-sharded like their parameters when those are FSDP shards), scheduler and
    this rank's RNG state from a checkpoint's trainer state. An optimizer with float32 masters gets them from
    the checkpoint's weights file (float32 since masters are saved; a bfloat16 file gives bfloat16 values)."""
    if isinstance(optimizer, MasterWeightAdamW) and state.get("weights_file") is not None:
        optimizer.load_master_weights(load_file(str(state["weights_file"])))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    opt = state["optimizer"]
    per_param = {}
    for i, entry in opt["state"].items():
        p = params[int(i)]
        per_param[i] = {k: shard_like(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape else v
                        for k, v in entry.items()}
    optimizer.load_state_dict({**opt, "state": per_param})
    scheduler.load_state_dict(state["scheduler"])
    ranks = state.get("rng_ranks") or []
    rng = ranks[rank] if rank < len(ranks) else state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def shard_teacher(teacher, ctx: DistContext) -> None:
    """Under FSDP, shard the teacher's own weights like the student (call after ``apply_fsdp(student)``):
    a full-model EMA copy or trust-region reference is sharded with :func:`apply_fsdp`, so its forward is a
    sharded forward and the EMA step (element-wise) runs on the local shards against the student's shards;
    a float32 EMA master is re-sharded too. LoRA teachers live in the (already sharded) student; live needs
    nothing."""
    if teacher is None or ctx.strategy != "fsdp" or not ctx.enabled:
        return
    own = getattr(teacher, "ref", None) if teacher.kind in ("trust-region", "base", "reference") else None
    if teacher.kind == "ema" and not teacher.is_peft:
        own = teacher.model
    if own is not None:
        apply_fsdp(own, ctx)
    if teacher.kind == "ema" and teacher.master is not None:
        params = teacher._teacher_params()
        teacher.master = {k: shard_like(v, params[k]).float() for k, v in teacher.master.items()}


def _load_full_weights(model, weights: Path) -> None:
    """Load a full-model checkpoint strictly: every parameter of ``model`` (tied aliases excepted) must be in
    the file and every tensor of the file must be one of them, else ConfigError(resume_from) naming them."""
    if not weights.is_file():
        raise ConfigError("resume_from", f"no full-model weights at {weights}")
    missing, unexpected = load_model(model, str(weights), strict=False)
    if missing or unexpected:
        def names(keys) -> str:
            keys = sorted(keys)
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        parts = ([f"missing from the checkpoint: {names(missing)}"] if missing else []) + (
            [f"not in this model: {names(unexpected)}"] if unexpected else [])
        raise ConfigError("resume_from", f"checkpoint {weights} does not match this run's model ({'; '.join(parts)})"
                          "; resume with the model_path and adapter the checkpoint was trained with")


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the rows of metrics.jsonl up to ``last_step`` (the step resumed from; 0 for a fresh start), so that
    a run resumed into its own directory does not log the replayed steps twice. Torn lines are dropped."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            keep.append(line + "\n")
    path.write_text("".join(keep))


class _Sinks:
    """metrics.jsonl (always; rows after ``start_step`` from an earlier run in this directory are dropped), a
    tqdm bar, TensorBoard and W&B when asked for and installed."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, start_step: int):
        _truncate_metrics(out_dir / "metrics.jsonl", start_step)
        self.file = (out_dir / "metrics.jsonl").open("a")
        self.bar = None
        if cfg.progress:
            self.bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train", dynamic_ncols=True)
        self.sinks = [tensorboard_sink(cfg.tensorboard, str(out_dir / "tensorboard")),
                      wandb_sink(cfg.wandb, project=cfg.wandb_project, run_dir=str(out_dir), config=cfg.to_dict())]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("reward/mean", "loss") if k in metrics})
        for sink in self.sinks:
            sink.log(step, metrics)

    def close(self) -> None:
        self.file.close()
        if self.bar is not None:
            self.bar.close()
        for sink in self.sinks:
            sink.close()


def check_world(cfg: TrainConfig, ctx: DistContext) -> str:
    """Settings that depend on the process group (known only under torchrun); returns the sampler kind to build.

    Raises ConfigError when each rank would get no question, and for ``sampler: vllm`` with several processes
    (ranks generate with HF; ``auto`` picks it). ``fsdp`` is allowed with any world size and backend."""
    if cfg.train_batch_size < ctx.world_size:
        raise ConfigError("train_batch_size", f"got {cfg.train_batch_size}; must be >= the number of processes "
                          f"({ctx.world_size}): each rank needs at least one question per step")
    if not ctx.enabled:
        return cfg.sampler
    if cfg.sampler == "vllm":
        raise ConfigError("sampler", "got 'vllm' in a multi-process (torchrun) run; use 'hf' or 'auto' "
                          "(auto picks hf there)")
    return "hf"


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, callbacks: Callbacks | None = None) -> TrainResult:
    """Run (or resume) a training run. Under torchrun every rank calls this; callbacks fire on rank 0."""
    callbacks = callbacks or Callbacks()
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ctx = init_from_env(cfg.distributed, device=cfg.device)
    sampler_kind = check_world(cfg, ctx)
    out_dir = Path(cfg.out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    ctx.barrier()
    _set_seed(cfg.seed)

    # 0. Setup: data, policy (+ adapter; identical replicas on every rank), teacher, optimizer, sampler;
    #    resume if asked.
    train_tasks, val_tasks = load_data(cfg)
    model, tokenizer, _ = build_policy(cfg)
    check_prompt_lengths(tokenizer, train_tasks, cfg.max_prompt_len, cfg.train_file or f"{cfg.dataset} (train)")
    check_prompt_lengths(tokenizer, val_tasks, cfg.max_prompt_len,
                         cfg.test_file or f"{cfg.dataset or cfg.train_file} (validation)")
    #    Checkpoint weights and teacher state are loaded into the whole model (every rank reads the full
    #    checkpoint); under fsdp the student and the teacher's own weights are sharded after that, and the
    #    optimizer (built on the shards) gets its state re-sharded.
    ctx.broadcast_parameters(model)
    state = load_model_state(Path(cfg.resume_from), model) if cfg.resume_from else None
    if ctx.enabled:
        _set_seed(cfg.seed + ctx.rank)
    teacher = make_teacher(cfg.self_distillation, model) if uses_teacher(cfg.loss) else None
    if state is not None and teacher is not None and state["teacher"] is not None:
        teacher.load_state_dict(state["teacher"])
    #    The initial policy of a KL penalty: the base teacher itself, the LoRA base, or a frozen copy (restored
    #    from the checkpoint on resume, so that it stays the run's initial policy).
    reference = make_reference(model, teacher) if cfg.kl_coef else None
    own_reference = reference is not None and reference is not teacher
    if state is not None and reference is not None and own_reference and state.get("reference") is not None:
        reference.load_state_dict(state["reference"])
    model = apply_fsdp(model, ctx)
    shard_teacher(teacher, ctx)
    if own_reference:
        shard_teacher(reference, ctx)
    optimizer, scheduler = make_optimizer(model, cfg, warmup_steps=cfg.warmup_steps, total_steps=cfg.max_steps,
                                          schedule=cfg.lr_schedule)
    stream = TaskStream(train_tasks, cfg.seed)
    start = 0
    if state is not None:
        load_training_state(state, optimizer, scheduler, rank=ctx.rank)
        start, stream.position = state["step"], state["position"]
    sinks = _Sinks(out_dir, cfg, start) if ctx.is_main else None
    result = TrainResult(out_dir=str(out_dir), steps=start)
    sampler = None
    # One process also stops inside a step (while sampling, before an update's micro-batch); ranks of a
    # torchrun job stop together at step boundaries only (a rank alone must not skip a collective).
    poll = stop_poll(callbacks) if not ctx.enabled else None
    try:
        sampler = make_sampler(sampler_kind, model, tokenizer, batch_size=cfg.sampler_batch_size, should_stop=poll,
                               max_prompt_len=cfg.max_prompt_len, adapter=cfg.adapter,
                               gpu_memory_utilization=cfg.gpu_memory_utilization,
                               max_model_len=cfg.max_prompt_len + cfg.max_new_tokens)
        for step in range(start + 1, cfg.max_steps + 1):
            if ctx.all_reduce([float(callbacks.stop_requested())], "max")[0] > 0:  # every rank stops together
                result.stopped = True
                break
            t0 = time.perf_counter()

            # 1. Sample n rollouts for each of this rank's questions (every rank draws the same global
            #    train_batch_size questions and keeps its contiguous block; whole groups stay on one rank).
            step_tasks = stream.next(cfg.train_batch_size)
            tasks = shard(step_tasks, ctx)
            params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                    top_p=cfg.top_p, top_k=cfg.top_k,
                                    seed=cfg.seed * 100_003 + step + 1_000_003 * ctx.rank)
            rollouts = sync_generate(sampler, [t.messages for t in tasks], cfg.n, params, ctx)
            t_sample = time.perf_counter()

            # 2. Reward + feedback from each question's environment (on the rank that holds the rollouts).
            scores = score_rollouts(tasks, rollouts, cfg.n, sparse=not cfg.dense_reward,
                                    code_feedback=cfg.code_feedback)
            t_score = time.perf_counter()
            attempts = [
                Attempt(round=step, index=i, response=r.text,
                        code=extract_code(r.text) if tasks[r.prompt_index].kind == "code" else None, reward=s.reward,
                        passed=s.passed, total=s.total, feedback=s.feedback, tokens=len(r.response_ids),
                        seconds=0.0, task_id=tasks[r.prompt_index].id)
                for i, (r, s) in enumerate(zip(rollouts, scores, strict=True))]
            if ctx.enabled:
                gathered = [a for part in ctx.all_gather_object(attempts) for a in part]
                attempts = [replace(a, index=i) for i, a in enumerate(gathered)]
            if ctx.is_main:
                callbacks.attempts(attempts)

            # 3-6. Advantages, teacher contexts + teacher logits, losses, optimizer steps (sdpo.update).
            batch = ScoredBatch(prompts=[tasks[r.prompt_index].messages for r in rollouts], rollouts=rollouts,
                                rewards=[s.reward for s in scores], feedback=[s.feedback for s in scores],
                                group_ids=[r.prompt_index for r in rollouts])
            lr = optimizer.param_groups[0]["lr"]  # the rate of this step's updates (logged below)
            update_metrics = policy_update(model, optimizer, teacher, tokenizer, batch, cfg, seed=cfg.seed + step,
                                           dist=ctx, should_stop=poll, reference=reference,
                                           progress=(step, cfg.max_steps))
            scheduler.step()

            # 7. Teacher update, once per step and only after a real optimizer step (EMA; no-op for live /
            #    trust-region), towards the float32 masters when kept. Deterministic from the replicas'
            #    identical weights, so the teachers stay identical across ranks too.
            if teacher is not None and update_metrics["update/optimizer_steps"] > 0:
                teacher.update(model, master_weights(optimizer))
            sampler.update_weights(model)
            t_update = time.perf_counter()

            # 8. Metrics (sums over ranks; perf/* are rank 0's wall times, tokens over all ranks).
            rewards = batch.rewards
            thr = cfg.self_distillation.success_reward_threshold
            n_tokens, n_correct, n_trunc, n_roll, reward_sum = (float(x) for x in ctx.all_reduce([
                sum(len(r.response_ids) for r in rollouts), sum(1.0 for x in rewards if x >= thr),
                sum(r.truncated for r in rollouts), len(rollouts), sum(rewards)], "sum"))
            metrics = {
                "reward/mean": reward_sum / n_roll,
                "reward/acc": n_correct / n_roll,
                "response/length_mean": n_tokens / n_roll,
                "response/truncated_fraction": n_trunc / n_roll,
                **update_metrics,
                "lr": lr,
                "perf/sample_s": t_sample - t0, "perf/score_s": t_score - t_sample,
                "perf/update_s": t_update - t_score, "perf/step_s": t_update - t0,
                "perf/tokens_per_s": n_tokens / max(t_update - t0, 1e-9),
            }

            # 9. Validation every val_every steps (and at the end); checkpoint every save_every steps.
            last = step == cfg.max_steps
            if val_tasks and ((cfg.val_every and step % cfg.val_every == 0) or last):
                metrics.update(validate(sampler, val_tasks, cfg, step, ctx))
            result.steps, result.last_metrics = step, metrics
            if sinks is not None:  # the main rank's (it alone logs and calls back)
                sinks.log(step, metrics)
                callbacks.metrics(step, metrics)
            if (cfg.save_every and step % cfg.save_every == 0) or last:
                rng_ranks = ctx.all_gather_object(_rng_state()) if ctx.enabled else None
                full_state = gather_checkpoint_state(model, optimizer, teacher, ctx,
                                                     reference if own_reference else None)  # fsdp: every rank
                path = out_dir / "checkpoints" / f"step_{step}"
                if ctx.is_main:
                    path, kind = save_checkpoint(out_dir, step, model, tokenizer, optimizer, scheduler, teacher,
                                                 stream, cfg, rng_ranks, full_state,
                                                 reference=reference if own_reference else None)
                    callbacks.checkpoint(step, str(path), kind)
                result.checkpoints.append(str(path))
                ctx.barrier()  # no rank moves on (or exits) before the checkpoint is on disk
    except StopRequested:  # one process, asked to stop inside a step: that step is not logged or saved
        result.stopped = True
    finally:
        if sampler is not None:  # frees a vLLM engine's GPU memory and work dir (no-op for HF)
            sampler.close()
        if sinks is not None:
            sinks.close()
        if owns_group:
            shutdown(ctx)
    return result
