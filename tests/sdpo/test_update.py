"""sdpo.update pieces that follow the reference: old log-probs in eval mode, and the hybrid's two mixes (loss
mixing as TRL's distillation_weight, advantage mixing as the paper's Sec. 4)."""

import copy

import pytest
import torch

from sdpo.adapters import apply_adapter
from sdpo.config import ConfigError, SelfDistillationConfig
from sdpo.forward import student_inputs
from sdpo.minibatches import split_rows
from sdpo.models import chat_ids, load_model_and_tokenizer
from sdpo.rollout.base import Rollout
from sdpo.teacher import make_teacher
from sdpo.update import ScoredBatch, UpdateConfig, _old_logprobs, _pad, policy_update

P = [{"role": "user", "content": "Print hello."}]
P2 = [{"role": "user", "content": "Print 2."}]


def _rollout(tok, messages, response, group):
    p = chat_ids(tok, messages)
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return Rollout(prompt_ids=p, response_ids=r, text=response, logprobs=[0.0] * len(r), truncated=False,
                   prompt_index=group)


def _batch(tok) -> ScoredBatch:
    rows = [(P, "```python\nprint('hello')\n```", 1.0, None, 0), (P, "x = 1", 0.0, "Wrong answer", 0),
            (P, "print('a b c d e f')", 0.0, None, 0), (P2, "no", 0.0, "Runtime error", 1),
            (P2, "```python\nprint(2)\n```", 1.0, None, 1), (P2, "while True: pass", 0.0, None, 1)]
    return ScoredBatch([r[0] for r in rows], [_rollout(tok, r[0], r[1], r[4]) for r in rows],
                       [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows])


def test_old_logprobs_are_computed_in_eval_mode(tiny_model_path):
    """After an update the model is left in train mode; with LoRA dropout the old log-probs would then be a
    random draw. They are the eval-mode (dropout-free) log-probs, and the train/eval flags are restored."""
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model = apply_adapter(model, "lora", r=4, alpha=8, dropout=0.5)
    with torch.no_grad():  # a non-zero adapter, so that its dropout changes the output
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    batch = _batch(tok)
    ids = _pad([r.response_ids for r in batch.rollouts], tok.pad_token_id, torch.long)
    mask = _pad([[1] * len(r.response_ids) for r in batch.rollouts], 0, torch.long)
    s_batch = student_inputs([r.prompt_ids for r in batch.rollouts], ids, mask, tok.pad_token_id)
    model.train()
    torch.manual_seed(0)
    passes = split_rows(len(ids), 3)
    first = _old_logprobs(model, s_batch, ids, passes, 1.0, False)
    second = _old_logprobs(model, s_batch, ids, passes, 1.0, False)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    ref = _old_logprobs(model, s_batch, ids, passes, 1.0, False)
    assert torch.equal(first, second) and torch.equal(first, ref)


def _hybrid_delta(model, tok, mix: str, epochs: int) -> tuple[torch.Tensor, dict]:
    sd = SelfDistillationConfig(mode="token", alpha=1.0, is_clip=None, loss_agg_mode="seq-mean-token-mean-all",
                                teacher_regularization="live")
    cfg = UpdateConfig(loss="hybrid", hybrid_weight=0.3, hybrid_mix=mix, self_distillation=sd, micro_batch_size=4,
                       ppo_epochs=epochs, max_grad_norm=1e9, rollout_correction_threshold=None)
    m = copy.deepcopy(model)
    before = [p.detach().clone() for p in m.parameters()]
    metrics = policy_update(m, torch.optim.SGD(m.parameters(), lr=20.0), make_teacher(sd, m), tok, _batch(tok), cfg)
    return torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), before, strict=True)]), metrics


def test_hybrid_advantage_mixing_equals_loss_mixing_on_policy_and_differs_off_policy(tiny_model_path):
    """λ·A_GRPO + (1 − λ)·A_SDPO in one clipped surrogate vs (1 − w)·L_GRPO + w·L_SDPO (w = 1 − λ): on the
    first, on-policy step (ratios 1, nothing clipped) the policy gradients are the same (float64); on a second
    epoch the ratios have moved, the clip acts on the mixed advantage, and the two updates part."""
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model = model.double()
    by_loss, _ = _hybrid_delta(model, tok, "loss", 1)
    by_adv, m_adv = _hybrid_delta(model, tok, "advantage", 1)
    scale = float(by_loss.abs().max())
    assert scale > 0 and m_adv["hybrid/sdpo_advantage_mean"] != 0
    torch.testing.assert_close(by_adv, by_loss, rtol=1e-6, atol=1e-7 * scale)
    by_loss2, _ = _hybrid_delta(model, tok, "loss", 2)
    by_adv2, m_adv2 = _hybrid_delta(model, tok, "advantage", 2)
    assert m_adv2["grpo/clip_fraction"] > 0
    assert float((by_adv2 - by_loss2).abs().max()) > 1e-3 * float(by_loss2.abs().max())


def test_advantage_mixing_needs_the_token_mode():
    with pytest.raises(ConfigError, match="^hybrid_mix: hybrid_mix='advantage' .* needs self_distillation.mode"):
        UpdateConfig(loss="hybrid", hybrid_mix="advantage")
    with pytest.raises(ConfigError, match="^hybrid_mix: got 'grad'"):
        UpdateConfig(hybrid_mix="grad")
    UpdateConfig(loss="hybrid", hybrid_mix="advantage", self_distillation=SelfDistillationConfig(mode="token",
                                                                                              alpha=1.0))
