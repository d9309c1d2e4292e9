"""float32 master weights for bfloat16 full fine-tuning (sdpo.precision): a bf16 run moves its weights like the
float32 run at the paper's lr 1e-6, checkpoints store the masters, the EMA teacher follows the masters, LoRA
adapters stay float32 without masters."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sdpo.adapters import apply_adapter
from sdpo.config import SelfDistillationConfig
from sdpo.models import load_model_and_tokenizer
from sdpo.precision import MasterWeightAdamW, make_adamw, master_weights
from sdpo.teacher import EmaTeacher
from sdpo.trainer import TrainConfig, train

TASKS = [
    {"prompt": "Read an integer n and print n*2.", "kind": "code",
     "tests": json.dumps({"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"], "testtype": "stdin"})},
    {"prompt": "Read a line and print it reversed.", "kind": "code",
     "tests": json.dumps({"inputs": ["abc\n"], "outputs": ["cba\n"], "testtype": "stdin"})},
]


def _movement(tiny_model_path, tmp_path, dtype: str) -> torch.Tensor:
    """Saved weights minus initial weights (in the run's dtype), float64, after 3 steps at lr 1e-6."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    cfg = TrainConfig(model_path=str(tiny_model_path), train_file=str(data), out_dir=str(tmp_path / dtype),
                      adapter="full", dtype=dtype, lr=1e-6, max_steps=3, train_batch_size=2, n=4,
                      max_new_tokens=16, micro_batch_size=4, progress=False, seed=0, device="cpu",
                      self_distillation=SelfDistillationConfig(distillation_topk=10))
    train(cfg)
    saved = load_file(str(tmp_path / dtype / "checkpoints/step_3/model/model.safetensors"))
    init = load_file(str(tiny_model_path / "model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float32}  # the masters, also for the bf16 run
    return torch.cat([(v.double() - init[k].to(getattr(torch, dtype)).double()).flatten()
                      for k, v in sorted(saved.items())])


def test_bf16_full_fine_tuning_moves_the_weights_like_float32(tiny_model_path, tmp_path):
    """Measured before float32 masters: 1.5% of the bf16 weights changed and the mean movement was 0.019x the
    float32 run's; with masters: 99.99% changed, ratio 1.004."""
    fp32 = _movement(tiny_model_path, tmp_path, "float32")
    bf16 = _movement(tiny_model_path, tmp_path, "bfloat16")
    ratio = float(bf16.abs().mean() / fp32.abs().mean())
    assert 0.5 < ratio < 2.0, ratio
    assert float((bf16 != 0).double().mean()) > 0.9
    # the update direction agrees too (bf16 compute, same data and seeds)
    cos = float(torch.nn.functional.cosine_similarity(bf16, fp32, dim=0))
    assert cos > 0.5, cos


def test_masters_are_stepped_and_written_back_rounded(tiny_model_path):
    model, _ = load_model_and_tokenizer(tiny_model_path, dtype="bfloat16")
    opt = make_adamw(apply_adapter(model, "full"), lr=1e-6, weight_decay=0.01)
    assert isinstance(opt, MasterWeightAdamW)
    masters = master_weights(opt)
    assert masters.keys() == {n for n, _ in model.named_parameters()}
    assert all(m.dtype == torch.float32 for m in masters.values())
    start = {k: m.detach().double().clone() for k, m in masters.items()}
    loss = model(torch.tensor([[5, 6, 7, 8]])).logits.float().square().mean()
    loss.backward()
    opt.pull_grads()
    assert all(p.grad is None for p in model.parameters())  # moved into the masters
    opt.step()
    params = dict(model.named_parameters())
    moved = 0
    for k, m in masters.items():
        assert torch.equal(params[k].detach(), m.detach().to(torch.bfloat16))  # the model is the rounded master
        moved += int((m.detach().double() != start[k]).sum())
    assert moved > 0.9 * sum(m.numel() for m in masters.values())


def test_lora_adapters_on_a_bf16_base_stay_float32_without_masters(tiny_model_path):
    model, _ = load_model_and_tokenizer(tiny_model_path, dtype="bfloat16")
    model = apply_adapter(model, "lora", r=4, alpha=8)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert type(make_adamw(model, lr=1e-4, weight_decay=0.0)) is torch.optim.AdamW


def test_ema_teacher_moves_towards_the_float32_masters(tiny_model_path):
    """With masters the teacher's float32 master follows the student's float32 master, not its bf16 copy
    (which, at lr 1e-6, has not moved at all)."""
    model, _ = load_model_and_tokenizer(tiny_model_path, dtype="bfloat16")
    teacher = EmaTeacher(model, 0.5)
    opt = make_adamw(model, lr=1e-6, weight_decay=0.0)
    model(torch.tensor([[5, 6, 7, 8]])).logits.float().square().mean().backward()
    opt.pull_grads()
    opt.step()
    start = {k: v.double().clone() for k, v in teacher.master.items()}
    masters = {k: m.detach().double() for k, m in master_weights(opt).items()}
    teacher.update(model, master_weights(opt))
    for k, t in teacher.master.items():
        torch.testing.assert_close(t.double(), start[k] + 0.5 * (masters[k] - start[k]), rtol=1e-6, atol=1e-9)
    moved = sum(float((t.double() - start[k]).abs().sum()) for k, t in teacher.master.items())
    assert moved > 0
    with pytest.raises(ValueError, match="full models"):
        lora_model = apply_adapter(load_model_and_tokenizer(tiny_model_path)[0], "lora", r=4, alpha=8)
        EmaTeacher(lora_model, 0.5).update(lora_model, {})
