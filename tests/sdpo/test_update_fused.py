"""The fused LM-head policy update (``fused_lm_head=True``) against the unfused one, and the combinations it
rejects (at config construction, or at run time on the actual model)."""

import copy

import pytest
import torch

from sdpo.adapters import apply_adapter
from sdpo.config import ConfigError, SelfDistillationConfig
from sdpo.forward import output_head
from sdpo.models import chat_ids, load_model_and_tokenizer
from sdpo.rollout.base import Rollout
from sdpo.teacher import make_reference, make_teacher
from sdpo.trainer import TrainConfig
from sdpo.ttt import SolveConfig
from sdpo.update import ScoredBatch, UpdateConfig, policy_update

P = [{"role": "user", "content": "Print hello."}]
RESPONSES = ["```python\nprint('hello')\n```", "print(1)", "x = input()", "print('hello world')"]


def _batch(tok) -> ScoredBatch:
    rollouts = []
    for text in RESPONSES:
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rollouts.append(Rollout(prompt_ids=chat_ids(tok, P), response_ids=ids, text=text,
                                logprobs=[-1.0] * len(ids), truncated=False))
    # one success (its siblings get it as a demonstration) and feedback for the failures
    return ScoredBatch([P] * 4, rollouts, [1.0, 0.0, 0.0, 0.0], [None, "Wrong answer", None, "Runtime error"],
                       [0, 0, 0, 0])


def _perturb(model, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _update(model, teacher, tok, batch, fused: bool, sd: SelfDistillationConfig):
    cfg = UpdateConfig(loss="sdpo", self_distillation=sd, fused_lm_head=fused, micro_batch_size=2,
                       max_grad_norm=1e9, rollout_correction_threshold=2.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    metrics = policy_update(model, opt, teacher, tok, batch, cfg)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    return metrics, delta


@pytest.mark.parametrize("alpha,topk", [(0.5, 20), (1.0, None)])
def test_fused_update_equals_unfused_with_a_full_model_ema_teacher(tiny_model_path, alpha, topk):
    """After an EMA step with tau = 0.5 the teacher's (tied) LM head differs from the student's: the fused
    loss must use the teacher's own head. SGD with lr 1 makes the weight change the (summed) gradient."""
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model = model.double()
    sd = SelfDistillationConfig(alpha=alpha, distillation_topk=topk, is_clip=2.0, teacher_regularization="ema",
                                teacher_update_rate=0.5)
    teacher = make_teacher(sd, model)
    _perturb(model, seed=0)
    teacher.update(model)
    t_head = output_head(teacher.model).weight
    assert not torch.allclose(t_head, output_head(model).weight)  # the heads really differ
    batch = _batch(tok)

    results = {}
    for fused in (False, True):
        m, t = copy.deepcopy(model), copy.deepcopy(teacher)
        results[fused] = _update(m, t, tok, batch, fused, sd)
    (m_u, d_u), (m_f, d_f) = results[False], results[True]
    assert m_u["sdpo/loss"] > 0
    # float64 model; the kernels are float64 too, up to summation order
    assert m_f["sdpo/loss"] == pytest.approx(m_u["sdpo/loss"], rel=1e-9)
    assert m_f["sdpo/kl_mean"] == pytest.approx(m_u["sdpo/kl_mean"], rel=1e-9)
    scale = float(d_u.abs().max())
    assert scale > 0
    torch.testing.assert_close(d_f, d_u, rtol=1e-7, atol=1e-9 * scale)


@pytest.mark.parametrize("loss,teacher_kind", [("srpo", "ema"), ("sc_sdpo", "ema"), ("sdpg", "ema"),
                                               ("sdpo", "base")])
def test_fused_family_update_equals_unfused(tiny_model_path, loss, teacher_kind):
    """SRPO (its teacher-entropy pre-pass from hidden states), SC-SDPO, SDPG (its exact full-vocabulary OPD
    through the fused kernel, with a KL to the initial policy) and the base teacher with a KL penalty take the
    same update fused as from logits, with a full-model teacher whose LM head is its own."""
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model = model.double()
    sd = SelfDistillationConfig(alpha=0.5, distillation_topk=20, is_clip=2.0, teacher_regularization=teacher_kind,
                                teacher_update_rate=0.5)
    teacher = make_teacher(sd, model)
    reference = make_reference(model, teacher)
    _perturb(model, seed=1)
    teacher.update(model)
    batch = _batch(tok)
    deltas, metrics = {}, {}
    for fused in (False, True):
        m, t = copy.deepcopy(model), copy.deepcopy(teacher)
        r = t if teacher_kind == "base" else copy.deepcopy(reference)
        cfg = UpdateConfig(loss=loss, self_distillation=sd, fused_lm_head=fused, micro_batch_size=2,
                           max_grad_norm=1e9, rollout_correction_threshold=None, sdpg_beta=0.5, kl_coef=0.1)
        before = [p.detach().clone() for p in m.parameters()]
        metrics[fused] = policy_update(m, torch.optim.SGD(m.parameters(), lr=1.0), t, tok, batch, cfg, reference=r)
        deltas[fused] = torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), before, strict=True)])
    assert metrics[True]["loss"] == pytest.approx(metrics[False]["loss"], rel=1e-9)
    assert metrics[True]["ref_kl/estimate"] == pytest.approx(metrics[False]["ref_kl/estimate"], rel=1e-9, abs=1e-12)
    scale = float(deltas[False].abs().max())
    assert scale > 0
    torch.testing.assert_close(deltas[True], deltas[False], rtol=1e-7, atol=1e-9 * scale)


@pytest.mark.parametrize("sd_temperature", [1.0, 0.7])
def test_fused_hybrid_advantage_update_equals_unfused(tiny_model_path, sd_temperature):
    """hybrid_mix='advantage' takes the teacher's and the student's sampled-token log-probs from hidden states
    and heads on the fused path (at the self-distillation temperature, recomputed when it is not the
    sampling temperature): the same update as from logits."""
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model = model.double()
    sd = SelfDistillationConfig(mode="token", alpha=1.0, is_clip=None, temperature=sd_temperature,
                                teacher_regularization="live")
    batch = _batch(tok)
    deltas, metrics = {}, {}
    for fused in (False, True):
        m = copy.deepcopy(model)
        cfg = UpdateConfig(loss="hybrid", hybrid_mix="advantage", hybrid_weight=0.4, self_distillation=sd,
                           fused_lm_head=fused, micro_batch_size=2, max_grad_norm=1e9,
                           rollout_correction_threshold=None)
        before = [p.detach().clone() for p in m.parameters()]
        metrics[fused] = policy_update(m, torch.optim.SGD(m.parameters(), lr=1.0), make_teacher(sd, m), tok,
                                       batch, cfg)
        deltas[fused] = torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), before, strict=True)])
    assert metrics[True]["hybrid/sdpo_advantage_mean"] == pytest.approx(
        metrics[False]["hybrid/sdpo_advantage_mean"], rel=1e-9)
    scale = float(deltas[False].abs().max())
    assert scale > 0
    torch.testing.assert_close(deltas[True], deltas[False], rtol=1e-7, atol=1e-9 * scale)


def test_fused_update_refuses_a_lora_wrapped_lm_head(tiny_model_path):
    """``output_head(model).weight`` of a LoRA-wrapped head is its frozen base: fusing it would silently drop
    the adapter, so the update refuses it with an error naming the field and the fix."""
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model = apply_adapter(model, "lora", r=2, alpha=4, target_modules=["q_proj", "lm_head"])
    sd = SelfDistillationConfig(distillation_topk=10, is_clip=None, teacher_regularization="live")
    cfg = UpdateConfig(loss="sdpo", self_distillation=sd, fused_lm_head=True, rollout_correction_threshold=None)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with pytest.raises(ConfigError, match="fused_lm_head.*lora_target_modules"):
        policy_update(model, opt, make_teacher(sd, model), tok, _batch(tok), cfg)
    # the GRPO-only fused path (old log-probs, token log-probs) refuses it as well
    cfg = UpdateConfig(loss="grpo", self_distillation=sd, fused_lm_head=True, rollout_correction_threshold=None)
    with pytest.raises(ConfigError, match="fused_lm_head"):
        policy_update(model, opt, None, tok, _batch(tok), cfg)


def test_unsupported_fused_combinations_are_rejected_at_config_construction():
    tr = {"teacher_regularization": "trust-region"}
    with pytest.raises(ConfigError, match="fused_lm_head.*trust-region.*adapter='full'.*fused_lm_head=false"):
        TrainConfig(dataset="humaneval", adapter="full", fused_lm_head=True, self_distillation=tr)
    with pytest.raises(ConfigError, match="fused_lm_head.*trust-region"):
        SolveConfig(adapter="full", fused_lm_head=True, self_distillation=tr)
    with pytest.raises(ConfigError, match="fused_lm_head.*'lm_head'.*lora_target_modules"):
        TrainConfig(dataset="humaneval", adapter="lora", lora_target_modules=["q_proj", "lm_head"],
                    fused_lm_head=True)
    with pytest.raises(ConfigError, match="fused_lm_head"):
        UpdateConfig(fused_lm_head="yes")
    # supported: trust region on LoRA (shared head), full model with EMA / live, GRPO (no teacher), unfused
    TrainConfig(dataset="humaneval", adapter="lora", fused_lm_head=True, self_distillation=tr)
    TrainConfig(dataset="humaneval", adapter="full", fused_lm_head=True)
    TrainConfig(dataset="humaneval", adapter="full", fused_lm_head=True, loss="grpo", self_distillation=tr)
    TrainConfig(dataset="humaneval", adapter="full", fused_lm_head=False, self_distillation=tr)
    TrainConfig(dataset="humaneval", adapter="lora", lora_target_modules=["q_proj", "lm_head"])
