"""Full fine-tuning or LoRA (peft): wrapping a loaded model, saving and restoring the trained weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_adapter(model, adapter: str, *, r: int = 16, alpha: int = 32, dropout: float = 0.0,
                  target_modules: list[str] | tuple[str, ...] | None = None):
    """Return the trainable model: ``model`` itself (full) or a peft ``PeftModel`` with a LoRA adapter
    named "default" (base weights frozen; the base with the adapter disabled is the trust-region reference)."""
    if adapter == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if adapter != "lora":
        raise ValueError(f"adapter: got {adapter!r}; allowed values are 'full', 'lora'")
    from peft import LoraConfig, get_peft_model  # peft takes seconds to import: only LoRA runs load it

    if isinstance(target_modules, str):  # one name, not its characters
        target_modules = [target_modules]
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in (target_modules or DEFAULT_LORA_TARGETS) if t in names]
    if not targets:
        raise ValueError(f"lora_target_modules: none of {list(target_modules or DEFAULT_LORA_TARGETS)} exist in "
                         f"this model; module names include {sorted(names)[:20]}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, config)


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def save_weights(model, tokenizer, out_dir: str | Path, *,
                 state_dict: dict[str, torch.Tensor] | None = None) -> tuple[Path, str]:
    """Save the trained weights: the LoRA adapter ("default" only) under ``adapter/``, or the whole model
    (safetensors) + tokenizer under ``model/``. Returns (path, kind). state_dict: full model only, the tensors
    to write instead of the model's own (the float32 masters of ``sdpo.precision``)."""
    out_dir = Path(out_dir)
    if is_lora(model):
        path = out_dir / "adapter"
        model.save_pretrained(path, selected_adapters=["default"])
        return path, "lora"
    path = out_dir / "model"
    model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(path)
    return path, "full"


def load_adapter_weights(model, adapter_dir: str | Path) -> None:
    """Load saved LoRA weights into the "default" adapter of a peft model built with the same config."""
    from peft import set_peft_model_state_dict  # (LoRA runs only)
    adapter_dir = Path(adapter_dir)
    f = adapter_dir / "adapter_model.safetensors"
    if not f.exists():
        raise FileNotFoundError(f"resume_from: no LoRA adapter at {f}")
    state = load_file(str(f), device=str(next(model.parameters()).device))
    result = set_peft_model_state_dict(model, state, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"resume_from: adapter at {adapter_dir} does not match this model ({unexpected[:3]} ...)")
