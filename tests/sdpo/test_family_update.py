"""The family in the policy update (sdpo.update): micro-batch splits give the one-batch gradient for SRPO,
SC-SDPO, SDPG and the KL penalty (their batch-normalised weights are computed before the split), the frozen base
teacher and reference policy, and the settings' validation."""

from __future__ import annotations

import copy

import pytest
import torch

from sdpo.adapters import apply_adapter
from sdpo.config import ConfigError, SelfDistillationConfig
from sdpo.forward import response_logits, student_inputs
from sdpo.models import load_model_and_tokenizer
from sdpo.teacher import BaseTeacher, FrozenBase, make_reference, make_teacher
from sdpo.update import ScoredBatch, UpdateConfig, _pad, has_learning_signal, policy_update
from tests.sdpo.test_trainer import P, _rollout

P2 = [{"role": "user", "content": "Print 2."}]
RESPONSES = ["```python\nprint(1)\n```", "x = 1", "print('a b c d e f')", "no", "```python\nprint(2)\n```",
             "while True: pass"]
# group 0: one success, one failure with feedback, one without; group 1 the same, shuffled
REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
FEEDBACK = [None, "Wrong answer", None, "Runtime error", None, None]
GROUPS = [0, 0, 0, 1, 1, 1]


def _batch(tok, rewards=REWARDS) -> ScoredBatch:
    prompts = [P, P, P, P2, P2, P2]
    rollouts = [_rollout(tok, prompts[i], RESPONSES[i], GROUPS[i]) for i in range(6)]
    return ScoredBatch(prompts, rollouts, list(rewards), FEEDBACK, GROUPS)


@pytest.fixture(scope="module")
def model64(tiny_model_path):
    model, tok = load_model_and_tokenizer(tiny_model_path)
    return model.double(), tok


def _delta(model, tok, cfg: UpdateConfig, batch=None, teacher_kind="live"):
    m = copy.deepcopy(model)
    sd = cfg.self_distillation
    teacher = make_teacher(replace_kind(sd, teacher_kind), m) if cfg.loss != "grpo" else None
    reference = make_reference(m, teacher) if cfg.kl_coef else None
    before = [p.detach().clone() for p in m.parameters()]
    metrics = policy_update(m, torch.optim.SGD(m.parameters(), lr=1.0), teacher, tok, batch or _batch(tok), cfg,
                            reference=reference, progress=(3, 10))
    return torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), before, strict=True)]), metrics


def replace_kind(sd: SelfDistillationConfig, kind: str) -> SelfDistillationConfig:
    return SelfDistillationConfig(**{**sd.to_dict(), "teacher_regularization": kind})


CASES = {
    "srpo-token-mean": dict(loss="srpo", agg="token-mean"),
    "srpo-seq-mean-token-mean": dict(loss="srpo", agg="seq-mean-token-mean", is_clip=2.0),
    "sc_sdpo-token-mean": dict(loss="sc_sdpo", agg="token-mean"),
    "sc_sdpo-seq-mean-token-mean-all": dict(loss="sc_sdpo", agg="seq-mean-token-mean-all"),
    "sdpg-token-mean": dict(loss="sdpg", agg="token-mean", sdpg_beta=0.5, kl_coef=0.1),
    "sdpo-kl-k3": dict(loss="sdpo", agg="token-mean", kl_coef=0.2),
}


def case_config(name: str, micro: int) -> UpdateConfig:
    case = dict(CASES[name])
    sd = SelfDistillationConfig(distillation_topk=10, alpha=0.5, is_clip=case.pop("is_clip", None),
                                loss_agg_mode=case.pop("agg"), teacher_regularization="live")
    return UpdateConfig(**{"self_distillation": sd, "micro_batch_size": micro, "max_grad_norm": 1e9,
                           "rollout_correction_threshold": None, "sdpg_warmup_steps": 0, "sdpg_decay_steps": 0,
                           **case})


@pytest.mark.parametrize("name", list(CASES))
def test_micro_batching_gives_the_one_batch_gradient(model64, name):
    """Accumulated micro-batch gradients of 6, 4 and 1 samples equal the whole batch's (float64 model, SGD):
    SRPO's entropy weights and SC-SDPO's pass-rate weights are normalised over the batch before it is split, and
    each term's scale is its share of the whole response mask."""
    model, tok = model64
    deltas, metrics = [], []
    for micro in (6, 4, 1):
        d, m = _delta(model, tok, case_config(name, micro))
        deltas.append(d)
        metrics.append(m)
    scale = float(deltas[0].abs().max())
    assert scale > 0
    for d in deltas[1:]:
        torch.testing.assert_close(d, deltas[0], rtol=1e-5, atol=1e-6 * scale)
    for m in metrics[1:]:
        assert m["loss"] == pytest.approx(metrics[0]["loss"], rel=1e-6, abs=1e-9)
    loss = CASES[name]["loss"]
    m = metrics[0]
    if loss == "srpo":  # the four failures have a sibling's success as context: SDPO; the two successes: GRPO
        assert m["srpo/route_sdpo_fraction"] == pytest.approx(4 / 6)
        assert m["srpo/entropy_normaliser"] > 0 and m["srpo/teacher_entropy_mean"] > 0
        assert "grpo/loss" in m and "sdpo/loss" in m
    if loss == "sc_sdpo":  # p̂ = 1/3 in both groups: equal weights, normalised to 1
        assert m["sc_sdpo/weight_mean"] == pytest.approx(1.0) and m["sc_sdpo/pass_rate_mean"] == pytest.approx(1 / 3)
    if loss == "sdpg":
        assert m["sdpg/beta"] == 0.5 and "sdpg/ref_kl" in m and m["sdpg/gate_fraction"] >= 0
    if CASES[name].get("kl_coef"):
        assert m["ref_kl/estimate"] == pytest.approx(0.0, abs=1e-12)  # the policy is still the initial one


def test_srpo_sends_no_gradient_through_distillation_of_correct_samples(model64):
    """Every sample correct: SRPO is GRPO on them (here with equal rewards, zero advantages: no update at all),
    while SDPO would still distil the successes with their siblings' demonstrations."""
    model, tok = model64
    cfg = case_config("srpo-token-mean", 6)
    d, m = _delta(model, tok, cfg, batch=_batch(tok, rewards=[1.0] * 6))
    assert float(d.abs().max()) == 0.0 and m["srpo/route_sdpo_fraction"] == 0.0
    sdpo = UpdateConfig(**{**{k: getattr(cfg, k) for k in ("self_distillation", "max_grad_norm",
                                                             "rollout_correction_threshold")}, "loss": "sdpo"})
    d_sdpo, _ = _delta(model, tok, sdpo, batch=_batch(tok, rewards=[1.0] * 6))
    assert float(d_sdpo.abs().max()) > 0


def test_sdpg_beta_follows_the_training_step(model64):
    model, tok = model64
    cfg = UpdateConfig(loss="sdpg", sdpg_beta=0.4, sdpg_warmup_steps=6, sdpg_decay_steps=0,
                       rollout_correction_threshold=None,
                       self_distillation=SelfDistillationConfig(teacher_regularization="live", is_clip=None))
    _, m = _delta(model, tok, cfg)  # progress (3, 10): β = 0.4 · 3/6
    assert m["sdpg/beta"] == pytest.approx(0.2)


def test_learning_signal_per_loss(tiny_model_path):
    _, tok = load_model_and_tokenizer(tiny_model_path)
    all_fail = _batch(tok, rewards=[0.0] * 6)
    sd = SelfDistillationConfig()
    assert has_learning_signal(all_fail, UpdateConfig(loss="srpo", self_distillation=sd))  # feedback: SDPO branch
    assert not has_learning_signal(all_fail, UpdateConfig(loss="sc_sdpo", self_distillation=sd))  # p̂ = 0
    assert not has_learning_signal(all_fail, UpdateConfig(loss="sdpg", self_distillation=sd, kl_coef=0.0))
    assert has_learning_signal(all_fail, UpdateConfig(loss="sdpg", self_distillation=sd))  # its KL term
    assert has_learning_signal(_batch(tok), UpdateConfig(loss="sc_sdpo", self_distillation=sd))


# ------------------------------------------------------------------------------ the frozen base


def test_base_teacher_of_lora_is_the_model_without_adapters_and_costs_no_copy(tiny_model_path):
    model, tok = load_model_and_tokenizer(tiny_model_path)
    base = copy.deepcopy(model)
    model = apply_adapter(model, "lora", r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    teacher = make_teacher(SelfDistillationConfig(teacher_regularization="base"), model)
    assert isinstance(teacher, BaseTeacher) and teacher.ref is None
    batch = _batch(tok)
    ids = _pad([r.response_ids for r in batch.rollouts], tok.pad_token_id, torch.long)
    mask = _pad([[1] * len(r.response_ids) for r in batch.rollouts], 0, torch.long)
    inputs = student_inputs([r.prompt_ids for r in batch.rollouts], ids, mask, tok.pad_token_id)
    got = teacher.logits(inputs)
    with torch.no_grad():
        want = response_logits(base.eval(), inputs)
        adapted = response_logits(model, inputs)
    torch.testing.assert_close(got, want)
    assert float((adapted - want).abs().max()) > 1e-3  # the adapter does change the student
    assert any(p.requires_grad for p in model.parameters())  # the student's trainable set is untouched
    assert make_reference(model, teacher) is teacher


def test_full_model_base_is_a_frozen_copy_that_survives_updates_and_checkpoints(model64):
    model, tok = model64
    m = copy.deepcopy(model)
    ref = FrozenBase(m)
    assert ref.ref is not None and not any(p.requires_grad for p in ref.ref.parameters())
    before = {k: v.clone() for k, v in ref.state_dict()["weights"].items()}
    cfg = case_config("sdpo-kl-k3", 6)
    teacher = make_teacher(cfg.self_distillation, m)
    policy_update(m, torch.optim.SGD(m.parameters(), lr=1.0), teacher, tok, _batch(tok), cfg, reference=ref)
    after = ref.state_dict()["weights"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = [k for k, p in m.named_parameters() if not torch.equal(p.detach(), before[k])]
    assert moved  # the student moved, the reference did not
    fresh = FrozenBase(copy.deepcopy(m))  # taken from the moved model (a resumed run) ...
    fresh.load_state_dict(ref.state_dict())  # ... restored to the run's initial policy
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict()["weights"].items())


def test_kl_penalty_pulls_towards_the_initial_policy(model64):
    """After the policy has moved away from the initial one, a pure KL step (grpo with equal rewards: no policy
    gradient) lowers the KL estimate."""
    model, tok = model64
    m = copy.deepcopy(model)
    ref = FrozenBase(m)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    cfg = UpdateConfig(loss="grpo", kl_coef=1.0, max_grad_norm=1.0, rollout_correction_threshold=None)
    flat = _batch(tok, rewards=[0.0] * 6)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    first = policy_update(m, opt, None, tok, flat, cfg, reference=ref)["ref_kl/estimate"]
    for _ in range(3):
        last = policy_update(m, opt, None, tok, flat, cfg, reference=ref)["ref_kl/estimate"]
    assert first > 0 and last < 0.5 * first, (first, last)  # measured: last ~ 0.16 first


# ------------------------------------------------------------------------------------------ config


def test_family_settings_are_validated_naming_the_field():
    assert UpdateConfig(loss="sdpg").kl_coef == 1e-3 and UpdateConfig(loss="sdpg").kl_estimator == "urkl"
    assert UpdateConfig(loss="sdpo").kl_coef == 0.0 and UpdateConfig(loss="sdpo").kl_estimator == "k3"
    assert UpdateConfig(loss="sdpg", kl_coef=0.0).kl_coef == 0.0  # the paper's alpha = 0 ablation
    with pytest.raises(ConfigError, match="^loss: got 'rpo'; allowed values are .*'srpo', 'sc_sdpo', 'sdpg'"):
        UpdateConfig(loss="rpo")
    with pytest.raises(ConfigError, match=r"^srpo_entropy_beta: got 0; must be > 0"):
        UpdateConfig(loss="srpo", srpo_entropy_beta=0)
    with pytest.raises(ConfigError, match=r"^kl_coef: got -1; must be >= 0"):
        UpdateConfig(kl_coef=-1)
    with pytest.raises(ConfigError, match="^kl_estimator: got 'k2'"):
        UpdateConfig(kl_estimator="k2")
    with pytest.raises(ConfigError, match="^sdpg_warmup_steps: got 1.5; expected an integer"):
        UpdateConfig(sdpg_warmup_steps=1.5)
    with pytest.raises(ConfigError, match="^sdpg_positive_gate: got 'yes'"):
        UpdateConfig(sdpg_positive_gate="yes")
    with pytest.raises(ConfigError, match=r"^teacher_regularization: got 'frozen'; allowed .*'base'"):
        SelfDistillationConfig(teacher_regularization="frozen")


def test_solve_refuses_losses_that_cannot_learn_from_failed_rounds():
    from sdpo.ttt import SolveConfig

    for loss in ("sc_sdpo", "sdpg"):
        with pytest.raises(ConfigError, match=f"^loss: got '{loss}'; a solve updates on rounds that all fail"):
            SolveConfig(loss=loss)
    assert SolveConfig(loss="srpo").loss == "srpo"
    assert SolveConfig(loss="sdpg", strategy="best_of_k").loss == "sdpg"  # never updates: nothing to refuse


# ------------------------------------------------------------------------------------- training runs

RUNS = {
    "srpo": (dict(loss="srpo"), ("srpo/route_sdpo_fraction", "srpo/entropy_weight_mean", "srpo/teacher_entropy_mean",
                                 "srpo/entropy_normaliser", "grpo/loss", "sdpo/loss")),
    "sc_sdpo": (dict(loss="sc_sdpo"), ("sc_sdpo/weight_mean", "sc_sdpo/normaliser", "sc_sdpo/pass_rate_mean",
                                       "sdpo/loss")),
    "sdpg": (dict(loss="sdpg", sdpg_warmup_steps=0, sdpg_decay_steps=0, sdpg_beta=0.5),
             ("sdpg/beta", "sdpg/gate_fraction", "sdpg/opd_kl_mean", "sdpg/ref_kl", "ref_kl/estimate", "grpo/loss")),
    "base-teacher-kl": (dict(loss="sdpo", kl_coef=0.01, teacher="base"), ("ref_kl/estimate", "sdpo/loss")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_a_short_training_run_logs_the_method_s_metrics_and_moves_the_weights(tiny_model_path, tmp_path,
                                                                             monkeypatch, name):
    """Two steps of ``train()`` per method on the tiny model (full fine-tuning, so that the weights can be
    compared with the model's file). The environment is replaced by a fixed one (the first rollout of each
    group of 4 succeeds, the others fail with feedback), so that every method has its signal: p̂ = 1/4, failures
    with a teacher context, a positive advantage."""
    import json

    from safetensors.torch import load_file

    import sdpo.trainer
    from sdpo.envs.base import Score
    from sdpo.trainer import TrainConfig, train

    def scores(tasks, rollouts, n, *, sparse, code_feedback="all_tests"):
        return [Score(reward=1.0 if i % 4 == 0 else 0.0, feedback=None if i % 4 == 0 else "Wrong answer",
                      passed=int(i % 4 == 0), total=1) for i in range(len(rollouts))]

    monkeypatch.setattr(sdpo.trainer, "score_rollouts", scores)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "kind": "mcq", "answer": "A"}) + "\n"
                            for p in ("Which letter comes first?\nA: a\nB: b", "Pick A.\nA: x\nB: y")))
    kw, keys = RUNS[name]
    kw = dict(kw)
    sd = {"distillation_topk": 10, "teacher_regularization": kw.pop("teacher", "ema"), "teacher_update_rate": 0.2}
    cfg = TrainConfig(model_path=str(tiny_model_path), train_file=str(data), out_dir=str(tmp_path / "run"),
                      adapter="full", train_batch_size=2, n=4, max_new_tokens=8, micro_batch_size=4, lr=1e-3,
                      max_steps=2, progress=False, seed=1, self_distillation=sd, **kw)
    result = train(cfg)
    assert result.steps == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in keys:
        assert all(key in r and r[key] == r[key] for r in rows), (name, key)
    before = load_file(str(tiny_model_path / "model.safetensors"))
    after = load_file(str(tmp_path / "run/checkpoints/step_2/model/model.safetensors"))
    moved = sum(float((after[k].float() - before[k].float()).abs().max()) > 0 for k in before if k in after)
    assert moved > len(before) // 2, (name, moved, len(before))
    state = torch.load(tmp_path / "run/checkpoints/step_2/trainer_state.pt", weights_only=False)
    if cfg.kl_coef and cfg.self_distillation.teacher_regularization != "base":
        assert state["reference"] is not None  # the frozen initial copy, so that a resume keeps it
    if name == "base-teacher-kl":
        assert state["teacher"]["kind"] == "base" and state["reference"] is None  # one copy serves both


@pytest.mark.slow
@pytest.mark.parametrize("loss,teacher_kind", [("sdpg", "ema"), ("srpo", "base")])
def test_resume_keeps_the_initial_policy_and_reproduces_the_run(tiny_model_path, tmp_path, monkeypatch, loss,
                                                                 teacher_kind):
    """4 steps with checkpoints every 2; resumed from step 2 in a new directory, steps 3 and 4 are the
    uninterrupted run's: the frozen initial policy (the KL's own copy, or the base teacher) comes from the
    checkpoint, not from the resumed weights."""
    import json

    import sdpo.trainer
    from sdpo.envs.base import Score
    from sdpo.trainer import TrainConfig, train

    def scores(tasks, rollouts, n, *, sparse, code_feedback="all_tests"):
        return [Score(reward=1.0 if i % 4 in (0, 1) else 0.0, feedback=None if i % 4 in (0, 1) else "Wrong",
                      passed=0, total=1) for i in range(len(rollouts))]

    monkeypatch.setattr(sdpo.trainer, "score_rollouts", scores)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "kind": "mcq", "answer": "A"}) + "\n"
                            for p in ("Which letter comes first?\nA: a\nB: b", "Pick A.\nA: x\nB: y")))

    def run(out, **kw):
        sd = {"distillation_topk": 10, "teacher_regularization": teacher_kind, "teacher_update_rate": 0.2}
        return train(TrainConfig(model_path=str(tiny_model_path), train_file=str(data), out_dir=str(out),
                                 adapter="full", train_batch_size=2, n=4, max_new_tokens=8, micro_batch_size=4,
                                 lr=1e-3, max_steps=4, save_every=2, progress=False, seed=2, loss=loss,
                                 kl_coef=0.05, sdpg_beta=0.5, sdpg_warmup_steps=0, sdpg_decay_steps=0,
                                 self_distillation=sd, **kw))

    run(tmp_path / "a")
    run(tmp_path / "b", resume_from=str(tmp_path / "a/checkpoints/step_2"))

    def rows(path):
        return {r["step"]: {k: v for k, v in r.items() if not k.startswith("perf/")}
                for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())}

    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        assert a[step]["ref_kl/estimate"] > 0  # the policy has left the initial one
        for k in a[step]:
            assert a[step][k] == pytest.approx(b[step][k], rel=1e-5, abs=1e-7), (step, k)
