"""Defaults that fit the model: the config dataclasses' defaults are the paper's GPU settings (a solve of
n = 8 attempts of up to 4,096 tokens, budget 64); on a CPU, or with the built-in demo models, they would take
hours per round. ``fit_config`` fills the settings a user left unset with CPU-sized values when

* the model is a small one (under ``SMALL_MODEL_PARAMS`` parameters: the built-in tiny and toy models, which
  also rarely stop on their own), or
* it runs on a CPU: ``device: cpu``, or ``device: auto`` where no GPU is available (``cuda=False``; the caller
  says what it knows about the machine that will run the job, e.g. the live workers; unknown = this process).

Everything a user sets wins, and a real checkpoint on a GPU keeps the paper's values. The values actually used
are the normalized config stored on the job, which the UI form shows before submitting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdpo.ttt import SolveConfig

SMALL_MODEL_PARAMS = 50_000_000

# A round of the demo model on 2 CPU cores in seconds, not minutes; the multi-turn context keeps some history.
CPU_SOLVE: dict[str, Any] = {"budget": 16, "n": 4, "max_new_tokens": 384, "context_budget": 2048}
CPU_TRAIN: dict[str, Any] = {"n": 4, "train_batch_size": 2, "max_new_tokens": 256, "max_prompt_len": 1536,
                             "val_k": 2, "val_max_questions": 8}
# Room for the prompt a solve keeps in its context beside the response, when context_budget is derived from
# a max_new_tokens the user set (so that a longer response never fails on a context_budget the user never set).
PROMPT_ROOM = 2048


@dataclass(frozen=True)
class Sizing:
    """Which defaults a job gets and why (``reason`` is shown to users)."""

    profile: str  # "cpu" | "paper"
    reason: str
    defaults: dict[str, Any] = field(default_factory=dict)


def model_parameters(path: str | Path) -> int | None:
    """Parameter count of a causal LM estimated from its ``config.json`` (embeddings, attention, MLP); None when
    the file or the usual keys are missing."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    h, layers, vocab = cfg.get("hidden_size"), cfg.get("num_hidden_layers"), cfg.get("vocab_size")
    if not all(isinstance(x, int) and x > 0 for x in (h, layers, vocab)):
        return None
    inter = cfg.get("intermediate_size") if isinstance(cfg.get("intermediate_size"), int) else 4 * h
    heads = cfg.get("num_attention_heads") or 1
    kv = cfg.get("num_key_value_heads") or heads
    attention = 2 * h * h + 2 * h * (h * kv // heads)
    embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return embeddings + layers * (attention + 3 * h * inter)


def sizing(kind: str, *, model_path: str | Path | None, device: str = "auto", cuda: bool | None = None) -> Sizing:
    """The defaults for a ``kind`` ("solve" | "train") job on ``model_path`` (None: not known yet, e.g. the
    default model still to be built: the demo model) with the config's ``device``; ``cuda``: whether the machine
    that will run it has a GPU (None: ask torch here)."""
    cpu_values = CPU_SOLVE if kind == "solve" else CPU_TRAIN
    params = model_parameters(model_path) if model_path is not None else None
    if model_path is None or (params is not None and params < SMALL_MODEL_PARAMS):
        size = "" if params is None else f" ({params / 1e6:.1f} M parameters)"
        return Sizing("cpu", f"CPU-sized defaults: a small demo model{size}", dict(cpu_values))
    if device == "cpu":
        return Sizing("cpu", "CPU-sized defaults: device cpu", dict(cpu_values))
    if device == "auto":
        if cuda is None:
            cuda = torch.cuda.is_available()
        if not cuda:
            return Sizing("cpu", "CPU-sized defaults: no GPU to run on", dict(cpu_values))
    return Sizing("paper", "the paper's defaults (a GPU)", {})


def fit_config(kind: str, config: dict[str, Any], *, model_path: str | Path | None,
               cuda: bool | None = None) -> dict[str, Any]:
    """``config`` with the settings it leaves unset filled from ``sizing`` (what it sets wins). For a solve, a
    ``context_budget`` left unset grows with a ``max_new_tokens`` that needs more room (prompt + response), so a
    long response is never refused for a setting the user did not make."""
    device = config.get("device", "auto")
    fit = sizing(kind, model_path=model_path, device=device if isinstance(device, str) else "auto", cuda=cuda)
    out = {**fit.defaults, **config}
    if kind == "solve" and "context_budget" not in config and "max_new_tokens" in config:
        tokens = config["max_new_tokens"]
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            base = out.get("context_budget", SolveConfig.context_budget)
            out["context_budget"] = max(base, tokens + PROMPT_ROOM)
    return out


def cpu_threads(model_path: str | Path | None, device: str = "auto") -> int | None:
    """Torch threads for a job of the model at ``model_path`` on ``device``: 1 for a small model (under
    ``SMALL_MODEL_PARAMS``) that will run on the CPU, else None (keep torch's default). A small model's matrix
    products are too short to gain from more threads, and on shared, loaded cores extra threads wait for each
    other: the demo model's first attempt took 0.3 s with one thread and 2.9 s (up to 17.6 s) with two at load
    average 5-15 (bench/first_click.py)."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return None
    params = model_parameters(model_path) if model_path is not None else None
    return 1 if params is not None and params < SMALL_MODEL_PARAMS else None
