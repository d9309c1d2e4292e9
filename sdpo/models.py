"""Loading any local Hugging Face causal-LM checkpoint: the one entry point every component uses."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers.utils import logging as _hf_logging

from sdpo.config import ConfigError
from sdpo.tiny import make_tiny_model

_hf_logging.disable_progress_bar()

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """'auto' / None -> float32 on CPU, bfloat16 on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        dev = torch.device(device) if device is not None else None
        return torch.bfloat16 if dev is not None and dev.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: got {dtype!r}; allowed values are 'auto', {', '.join(map(repr, _DTYPES))}")
    return _DTYPES[dtype]


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a ConfigError naming ``device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


def load_tokenizer(path: str | Path):
    """Load a local tokenizer. ``tokenizer.json`` checkpoints (ours, Qwen, Llama) load with
    ``PreTrainedTokenizerFast`` so no remote code or hub lookup is ever attempted."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # (seconds to import)

    path = Path(path)
    if (path / "tokenizer.json").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"model_path: tokenizer at {path} has no chat template; SDPO needs chat-formatted prompts")
    return tok


def load_model_and_tokenizer(path: str | Path, *, dtype: str | torch.dtype | None = "auto",
                             device: str | torch.device | None = None):
    """Load a local HF causal LM and its tokenizer.

    Raises FileNotFoundError with the path when the directory or its config is missing (we never download).
    """
    from transformers import AutoModelForCausalLM  # (seconds to import)

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"model_path: no Hugging Face checkpoint at {path} (config.json missing). Build the tiny model with "
            f"`sdpo make-tiny-model --out {path}` or point to a local checkpoint directory."
        )
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=resolve_dtype(dtype, device), local_files_only=True
    )
    model.to(device)
    model.eval()
    tokenizer = load_tokenizer(path)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def chat_ids(tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a chat prompt (thinking disabled where the template supports the switch)."""
    out = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, enable_thinking=False,
    )
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def data_dir() -> Path:
    """``SDPO_DATA_DIR`` (default ``var/`` in the working directory): where built models live."""
    return Path(os.environ.get("SDPO_DATA_DIR") or "var")


def demo_model_path() -> Path:
    """The demo model committed with the repository (``sdpo/toy/demo_model``, see ``sdpo.toy.demo``)."""
    return Path(__file__).resolve().parent / "toy" / "demo_model"


def default_model_path() -> Path:
    """The model used when none is configured: ``SDPO_MODEL`` if set; else a toy model the user built with
    ``sdpo make-toy-model --out <data dir>/models/toy``; else the committed demo model (``demo_model_path``,
    no build); else (a copy of the code without it) the tiny model, built on first use (seconds, no
    download)."""
    if os.environ.get("SDPO_MODEL"):
        return Path(os.environ["SDPO_MODEL"])
    toy = data_dir() / "models" / "toy"
    if (toy / "config.json").exists():
        return toy
    demo = demo_model_path()
    if (demo / "config.json").exists():
        return demo
    tiny = data_dir() / "models" / "tiny"
    if not (tiny / "config.json").exists():
        make_tiny_model(tiny, seed=0)
    return tiny
