"""Train the toy-world model from scratch on CPU: ``sdpo make-toy-model --out DIR``.

Steps:
1. build the pretraining corpus (:mod:`sdpo.toy.corpus`: direct / "Correct solution" / feedback contexts);
2. train a byte-level BPE tokenizer on it (the machinery of :func:`sdpo.tiny.train_tokenizer`);
3. encode every example with the chat template (loss on the assistant tokens only);
4. train a Qwen2-style causal LM with AdamW and a warmup + cosine schedule over a fixed number of steps;
5. save a normal Hugging Face checkpoint (``save_pretrained`` + tokenizer), ``sdpo_model.json`` (kind "toy")
   and ``toy_training.json`` (the config, the step count and the loss curve).

Deterministic given ``seed`` on one machine (with the other settings fixed; 1 and 2 ``threads`` give identical
weights on CPU, tested), not across CPUs: float kernels differ between processors, so a rebuild elsewhere gives
other weights and can be a much weaker model (docs/toyworld.md, "Determinism"). The step count and the schedule
never depend on the machine's speed (default ``DEFAULT_STEPS``). ``minutes`` is only an optional safety cap:
when it is hit the loop stops early, the run is reported (``stopped_by_time`` in ``toy_training.json`` and in
the log) and the weights then depend on how fast the machine was, i.e. determinism is lost for that run.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sdpo.config import ConfigError, _number
from sdpo.models import load_tokenizer
from sdpo.tiny import train_tokenizer
from sdpo.toy.corpus import DEFAULT_MIX, KINDS, build_corpus, encode, tokenizer_texts

DEFAULT_STEPS = 1200  # ~19 min at 2 threads on this 2-core machine (docs/toyworld.md)


@dataclass
class ToyModelConfig:
    """Settings of ``make_toy_model``.

    steps: number of optimizer steps; it alone fixes the schedule (warmup + cosine), so the run is deterministic.
    minutes: optional wall-clock cap of the optimisation loop (None: no cap). Hitting it stops the run early
        (reported as ``stopped_by_time``); such a checkpoint depends on the machine's speed, not only the seed.
    n_examples: size of the pretraining corpus (cycled through in epochs).
    threads: CPU threads for training. The weights do not depend on it (tested for 1 vs 2 threads).
    mix: weights of the direct / solution / feedback / copy examples in the corpus (``sdpo.toy.corpus.KINDS``).
    init_from: continue training a toy checkpoint (its weights, tokenizer and architecture; the architecture
        fields here are then ignored). The corpus is drawn with a seed offset by the steps the checkpoint
        already made, so a continuation sees new examples; the schedule restarts (warmup + cosine).
    """

    seed: int = 0
    steps: int | None = DEFAULT_STEPS
    minutes: float | None = None
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 1024
    n_examples: int = 40_000
    mix: tuple[float, ...] = DEFAULT_MIX
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    threads: int = 2
    log_every: int = 25
    init_from: str | None = None

    def __post_init__(self) -> None:
        _number("seed", self.seed, lo=0, integer=True)
        if self.minutes is not None:
            _number("minutes", self.minutes, lo=0.0, lo_open=True)
        if self.steps is None:  # callers that pass "no --steps" get the fixed default, never a timed budget
            self.steps = DEFAULT_STEPS
        _number("steps", self.steps, lo=1, integer=True)
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "n_examples", "batch_size",
                     "threads", "log_every"):
            _number(name, getattr(self, name), lo=1, integer=True)
        _number("vocab_size", self.vocab_size, lo=300, integer=True)
        _number("warmup_steps", self.warmup_steps, lo=0, integer=True)
        if self.hidden_size % self.num_heads:
            raise ConfigError("hidden_size", f"got {self.hidden_size}; must be a multiple of num_heads "
                                             f"({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("num_kv_heads", f"got {self.num_kv_heads}; must divide num_heads ({self.num_heads})")
        self.mix = tuple(self.mix)
        if len(self.mix) != len(KINDS) or any(not isinstance(w, (int, float)) or w < 0 for w in self.mix) or not sum(
                self.mix):
            raise ConfigError("mix", f"got {self.mix!r}; expected {len(KINDS)} non-negative weights {KINDS} with a "
                                     "positive sum")
        _number("lr", self.lr, lo=0.0, lo_open=True)
        _number("min_lr_ratio", self.min_lr_ratio, lo=0.0, hi=1.0)
        _number("weight_decay", self.weight_decay, lo=0.0)
        _number("grad_clip", self.grad_clip, lo=0.0, lo_open=True)
        if self.init_from is not None:
            if not (Path(self.init_from) / "toy_training.json").is_file():
                raise ConfigError("init_from", f"got {self.init_from!r}; not a toy checkpoint (no "
                                               "toy_training.json); build one with `sdpo make-toy-model`")
            self.init_from = str(self.init_from)


@dataclass
class TrainStats:
    """``steps`` of this run; ``total_steps`` including the runs it continued (``init_from``)."""

    steps: int = 0
    total_steps: int = 0
    planned_steps: int = 0
    seconds: float = 0.0
    tokens: int = 0
    loss_tokens: int = 0
    n_params: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    stopped_by_time: bool = False


def lr_at(step: int, total: int, cfg: ToyModelConfig) -> float:
    """Linear warmup over ``warmup_steps`` then cosine decay to ``min_lr_ratio * lr`` at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _batches(lengths: list[int], batch_size: int, rng: random.Random):
    """Endless batches of indices: shuffle, sort chunks of 32 batches by length (little padding), shuffle."""
    n = len(lengths)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        chunk = batch_size * 32
        for start in range(0, n, chunk):
            part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
            bs = [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
            rng.shuffle(bs)
            yield from bs


def _collate(items: list[tuple[list[int], list[int]]], pad_id: int):
    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, (x, y) in enumerate(items):
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
        mask[r, : len(x)] = 1
    return ids, labels, mask


def make_toy_model(out_dir: str | Path, cfg: ToyModelConfig | None = None,
                   log: Callable[[str], None] = print) -> Path:
    """Build the corpus and tokenizer, train the model, save it to ``out_dir`` (see module docs)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM  # (seconds to import)

    cfg = cfg or ToyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        # 1-3. corpus, tokenizer, encoding
        t0 = time.monotonic()
        prev_steps = 0
        if cfg.init_from is not None:
            prev = json.loads((Path(cfg.init_from) / "toy_training.json").read_text())
            prev_steps = int(prev.get("total_steps", prev["steps"]))
        examples = build_corpus(cfg.n_examples, seed=cfg.seed + prev_steps, mix=cfg.mix)
        if cfg.init_from is not None:
            tokenizer = load_tokenizer(cfg.init_from)
        else:
            tokenizer = train_tokenizer(cfg.vocab_size, corpus=tokenizer_texts(examples))
        data = [encode(tokenizer, ex) for ex in examples]
        log(f"corpus: {len(data)} examples, {sum(len(x) for x, _ in data)} tokens, vocab {len(tokenizer)} "
            f"({time.monotonic() - t0:.1f}s)")

        # 4. model and optimisation
        torch.manual_seed(cfg.seed + prev_steps)
        if cfg.init_from is not None:
            model = Qwen2ForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32, local_files_only=True)
        else:
            model = Qwen2ForCausalLM(Qwen2Config(
                vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                intermediate_size=cfg.hidden_size * 8 // 3, num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=None,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            ))
        model.train()
        stats = TrainStats(n_params=sum(p.numel() for p in model.parameters()))
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
        total = cfg.steps
        assert total is not None  # ToyModelConfig fills in the default
        log(f"model: {stats.n_params / 1e6:.2f}M parameters"
            + (f" (continuing {cfg.init_from} after {prev_steps} steps)" if prev_steps else "") + f"; {total} steps"
            + (f", capped at {cfg.minutes:g} minutes" if cfg.minutes is not None else ""))
        batches = _batches([len(x) for x, _ in data], cfg.batch_size, random.Random(cfg.seed + prev_steps))
        start = time.monotonic()
        window: list[float] = []
        step = 0
        while step < total:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            ids, labels, mask = _collate([data[i] for i in next(batches)], tokenizer.pad_token_id)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            window.append(loss.item())
            stats.tokens += int(mask.sum())
            stats.loss_tokens += int((labels[:, 1:] != -100).sum())
            elapsed = time.monotonic() - start
            if step % cfg.log_every == 0 or step == total:
                mean = sum(window) / len(window)
                stats.losses.append((step, round(mean, 4)))
                window = []
                log(f"step {step}/{total} loss {mean:.4f} lr {lr_at(step - 1, total, cfg):.2e} "
                    f"{stats.tokens / elapsed:.0f} tok/s {elapsed / 60:.1f} min")
            if cfg.minutes is not None and step < total and elapsed > cfg.minutes * 60:
                stats.stopped_by_time = True
                log(f"stopped by the --minutes cap ({cfg.minutes:g} min) at step {step} of {total}: this "
                    "checkpoint depends on the machine's speed (not deterministic given the seed)")
                break
        stats.steps, stats.planned_steps, stats.total_steps = step, total, prev_steps + step
        stats.seconds = round(time.monotonic() - start, 1)

        # 5. save
        model.eval()
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "sdpo_model.json").write_text(json.dumps({"kind": "toy", "seed": cfg.seed, "steps": prev_steps + step}) + "\n")
        (out / "toy_training.json").write_text(json.dumps({"config": asdict(cfg), **asdict(stats)}, indent=1))
        log(f"saved {out} ({step} steps, {stats.seconds / 60:.1f} min, final loss "
            f"{stats.losses[-1][1] if stats.losses else float('nan')})"
            + (f"; STOPPED EARLY by the {cfg.minutes:g}-minute cap" if stats.stopped_by_time else ""))
        return out
    finally:
        torch.set_num_threads(old_threads)
