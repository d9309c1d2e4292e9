"""A tiny local causal LM for tests and the default demo: Qwen2 architecture, ~2 M parameters, and a
byte-level BPE tokenizer trained here on text that ships with Python (no download)."""

from __future__ import annotations

import argparse  # argparse, collections, functools, heapq, textwrap: their source is the tokenizer's corpus
import collections
import functools
import heapq
import inspect
import json
import textwrap
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, like Qwen. ``enable_thinking`` is accepted and ignored (the tiny model never thinks).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def _corpus() -> list[str]:
    """Deterministic training text: source of a few stdlib modules plus chat-shaped snippets."""
    texts = [inspect.getsource(m) for m in (collections, functools, heapq, textwrap, argparse, json.decoder)]
    texts += [
        "<|im_start|>user\nWrite a function that returns the sum of a list.<|im_end|>\n"
        "<|im_start|>assistant\n```python\ndef solve(xs):\n    return sum(xs)\n```<|im_end|>\n",
        "Correct solution:\n\nThe following is feedback from your unsuccessful earlier attempt:\n\n"
        "Correctly solve the original question. Input Output Expected Runtime Error Time Limit Exceeded",
        "import sys\nn = int(input())\nprint(n * 2)\nfor line in sys.stdin:\n    print(line.strip()[::-1])\n",
    ]
    return texts


def train_tokenizer(vocab_size: int = 2048, corpus: Iterable[str] | None = None):
    """Byte-level BPE tokenizer with the ChatML template, trained on ``corpus`` (default: ``_corpus()``)."""
    from transformers import PreTrainedTokenizerFast  # (seconds to import)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus() if corpus is None else corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def make_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 192, num_layers: int = 4,
                    vocab_size: int = 2048) -> Path:
    """Build and save the tiny model + tokenizer to ``out_dir``. Deterministic given ``seed``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM  # (seconds to import)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=16384, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "sdpo_model.json").write_text(json.dumps({"kind": "tiny", "seed": seed}) + "\n")
    return out
