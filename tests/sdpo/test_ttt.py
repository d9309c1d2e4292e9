"""Test-time solving on the tiny model: all three strategies end to end, stopping at the first
discovery, the update rule of ``sdpo`` (weights move after a round with a demonstration or feedback and stay
bit-for-bit equal after a round with neither), resuming, stopping, and the multi-turn context budget."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sdpo.callbacks import Callbacks
from sdpo.config import ConfigError
from sdpo.data.problem import Problem
from sdpo.models import chat_ids, load_model_and_tokenizer
from sdpo.rollout.hf import HFSampler
from sdpo.ttt import (
    HIDDEN_FAIL_FEEDBACK,
    SolveConfig,
    fit_history,
    multiturn_messages,
    prepare_policy,
    score_attempts,
    solve,
)

CORRECT = "```python\nprint(int(input())*2)\n```"
PUBLIC_ONLY = "```python\nprint(6)\n```"  # passes the public test (3 -> 6), fails the hidden one (7 -> 14)
WRONG = "```python\nprint(0)\n```"
SHORT_PROMPT = [{"role": "user", "content": "Read n, print 2n."}]

PROBLEM = {"title": "Double", "statement": "Read an integer n from stdin and print 2n.",
           "tests": {"inputs": ["3\n"], "outputs": ["6\n"], "testtype": "stdin"},
           "hidden_tests": {"inputs": ["7\n"], "outputs": ["14\n"], "testtype": "stdin"}}


def short_task(hidden_output: str = "14\n"):
    """The problem as a code Task with a short prompt (so that a few dozen fine-tuning steps suffice)."""
    p = Problem.parse({**PROBLEM, "hidden_tests": {**PROBLEM["hidden_tests"], "outputs": [hidden_output]}})
    return dataclasses.replace(p.to_task(), messages=SHORT_PROMPT)


def cfg(**kw) -> SolveConfig:
    base = dict(budget=6, n=4, max_new_tokens=12, context_budget=400, micro_batch_size=4, lr=1e-3, seed=0)
    return SolveConfig.from_dict({**base, **kw})


def load(path):
    model, tok = load_model_and_tokenizer(path)
    return model, tok, HFSampler(model, tok)


class Recorder(Callbacks):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.got = []
        self.on_attempts = self.got.extend


# --------------------------------------------------------------------------------------------- config

def test_config_test_time_defaults_and_partial_self_distillation():
    c = SolveConfig()
    assert (c.strategy, c.loss, c.n, c.adapter, c.ppo_epochs) == ("sdpo", "sdpo", 8, "lora", 1)
    sd = c.self_distillation
    assert (sd.alpha, sd.distillation_topk, sd.teacher_regularization) == (1.0, 20, "live")
    # a partial block overrides only its keys; the other test-time defaults stay
    c2 = SolveConfig.from_dict({"self_distillation": {"teacher_regularization": "ema"}})
    assert (c2.self_distillation.alpha, c2.self_distillation.distillation_topk) == (1.0, 20)
    assert c2.self_distillation.teacher_regularization == "ema"
    assert SolveConfig.from_dict(c2.to_dict()) == c2
    # one module name is a one-element list (``--set lora_target_modules=q_proj``), not its characters
    assert SolveConfig.from_dict({"lora_target_modules": "q_proj"}).lora_target_modules == ["q_proj"]


@pytest.mark.parametrize("data, field", [
    ({"strategy": "beam"}, "strategy"),
    ({"budget": 0}, "budget"),
    ({"n": 1.5}, "n"),
    ({"ppo_epochs": 0}, "ppo_epochs"),
    ({"steps_per_round": 2}, "steps_per_round"),  # one spelling: ppo_epochs (docs/fidelity.md)
    ({"adapter": "qlora"}, "adapter"),
    ({"multiturn_template": "chat"}, "multiturn_template"),
    ({"max_new_tokens": 512, "context_budget": 512}, "context_budget"),
    ({"top_p": 0.0}, "top_p"),
    ({"lr": -1.0}, "lr"),
    ({"self_distillation": {"alpha": 2.0}}, "self_distillation.alpha"),
    ({"self_distillation": {"nope": 1}}, "self_distillation.nope"),
    ({"budgett": 3}, "budgett"),
    ({"lora_target_modules": 3}, "lora_target_modules"),
    ({"lora_target_modules": ["q_proj", ""]}, "lora_target_modules"),
])
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        SolveConfig.from_dict(data)
    assert e.value.field == field and str(e.value).startswith(field + ": ")


# --------------------------------------------------------------------------------------------- scoring

def test_hidden_tests_decide_and_stop_at_the_first_discovery():
    from sdpo.rollout.base import Rollout

    task = short_task()
    rollouts = [Rollout([1], [2, 3], t, [0.0, 0.0], False) for t in (WRONG, PUBLIC_ONLY, CORRECT, CORRECT)]
    s = score_attempts(task, rollouts)
    assert [a.public_pass for a in s] == [False, True, True, True]
    assert [(a.hidden_passed, a.hidden_total) for a in s] == [(None, None), (0, 1), (1, 1), (None, None)]
    assert [a.discovered for a in s] == [False, False, True, False]  # the 4th is never checked on hidden tests
    assert s[0].feedback and "wrong answer" in s[0].feedback
    # passing the public tests but not the hidden ones keeps the public reward (a sibling demonstration) and
    # gets a feedback that says it was not accepted, without showing the hidden test (input 7, output 14)
    assert [a.reward for a in s[:3]] == [0.0, 1.0, 1.0]
    assert s[1].feedback == HIDDEN_FAIL_FEEDBACK and s[2].feedback is None
    assert "7" not in HIDDEN_FAIL_FEEDBACK and "14" not in HIDDEN_FAIL_FEEDBACK
    # without hidden tests the public tests decide
    no_hidden = dataclasses.replace(task, hidden_tests=None)
    assert [a.discovered for a in score_attempts(no_hidden, rollouts)] == [False, True, True, True]


# --------------------------------------------------------------------------------------------- multi-turn context

def test_multiturn_templates():
    q = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    hist = [("a1", "f1"), ("a2", "f2")]
    fo = multiturn_messages(q, hist, "feedback_only")
    assert len(fo) == 2 and fo[0] == q[0] and fo[1]["role"] == "user"
    text = fo[1]["content"]
    assert text.startswith("Q") and text.index("f1") < text.index("f2") and "a1" not in text
    af = multiturn_messages(q, hist, "attempt_and_feedback")
    assert [m["role"] for m in af] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert af[2]["content"] == "a1" and "f1" in af[3]["content"] and af[4]["content"] == "a2"
    assert multiturn_messages(q, [], "feedback_only") == q


def test_fit_history_keeps_the_newest_history_within_budget(tiny_model_path):
    _, tok, _ = load(tiny_model_path)
    q = [{"role": "user", "content": "Q"}]
    hist = [(f"attempt {i} " * 5, f"feedback {i} " * 5) for i in range(6)]
    for template in ("feedback_only", "attempt_and_feedback"):
        sizes = [len(chat_ids(tok, multiturn_messages(q, hist[6 - m:], template))) for m in range(7)]
        assert sizes == sorted(sizes)
        limit = (sizes[3] + sizes[4]) // 2  # room for 3 entries, not 4
        msgs, kept = fit_history(tok, q, hist, template, limit)
        assert kept == 3 and msgs == multiturn_messages(q, hist[3:], template)
        assert len(chat_ids(tok, msgs)) <= limit
        assert fit_history(tok, q, hist, template, sizes[6])[1] == 6
        assert fit_history(tok, q, hist, template, 1) == (q, 0)  # nothing fits: the question alone


# --------------------------------------------------------------------------------------------- end to end, nothing found

@pytest.mark.parametrize("strategy", ["sdpo", "best_of_k", "multiturn"])
def test_each_strategy_spends_exactly_the_budget_when_nothing_is_found(tiny_model_path, tmp_path, strategy):
    model, tok, sampler = load(tiny_model_path)
    rec = Recorder()
    metrics = []
    rec.on_metrics = lambda r, m: metrics.append(r)
    res = solve(Problem.parse(PROBLEM), model, tok, sampler, cfg(strategy=strategy), rec, out_dir=tmp_path)
    assert res.discovered_at is None and res.solution is None and not res.stopped
    assert res.attempts_used == 6 and len(rec.got) == 6
    if strategy == "multiturn":
        assert [(a.round, a.index) for a in rec.got] == [(i, 0) for i in range(6)]
        assert [m["multiturn/history_kept"] + m["multiturn/history_dropped"] for m in res.rounds] == list(range(6))
    else:  # rounds of n = 4, the last clamped to the remaining 2
        assert [(a.round, a.index) for a in rec.got] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
        assert [m["ttt/attempts"] for m in res.rounds] == [4.0, 2.0]
    assert metrics == [int(m["round"]) for m in res.rounds]
    for a in rec.got:
        assert a.reward == 0.0 and a.total == 1 and a.feedback and 0 < a.tokens <= 12
        assert a.hidden_passed is None  # never passed the public tests, so never run on the hidden ones
    if strategy == "sdpo":
        assert res.adapter_path and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    else:
        assert res.adapter_path is None


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("feedback_on", [False, True])
def test_sdpo_no_update_without_demonstration_or_feedback(tiny_model_path, feedback_on):
    """Untrained tiny model: no attempt succeeds; with the feedback switched off no sample has a teacher
    context, so every round leaves the adapter exactly as it was. With feedback on, every round moves it but
    the last, which spends the budget (nothing would sample from its update)."""
    model, tok, sampler = load(tiny_model_path)
    c = cfg(budget=10, self_distillation={"include_environment_feedback": feedback_on})
    policy = prepare_policy(model, c)
    snaps = [_lora_state(policy)]
    rec = Recorder(on_metrics=lambda r, m: snaps.append(_lora_state(policy)))
    res = solve(Problem.parse(PROBLEM), policy, tok, sampler, c, rec)
    assert res.attempts_used == 10 and len(snaps) == 4
    assert [m["ttt/updated"] for m in res.rounds] == [float(feedback_on)] * 2 + [0.0]
    assert _changed(snaps[0], snaps[1]) is feedback_on
    assert _changed(snaps[1], snaps[2]) is feedback_on
    assert not _changed(snaps[2], snaps[3])


class UpdateSpy:
    """Wraps ``sdpo.ttt.policy_update``: the batches it was called with (one call = one round's update)."""

    def __init__(self, monkeypatch):
        import sdpo.ttt

        self.batches, real = [], sdpo.ttt.policy_update

        def spy(model, optimizer, teacher, tokenizer, batch, cfg, **kw):
            self.batches.append(batch)
            return real(model, optimizer, teacher, tokenizer, batch, cfg, **kw)

        monkeypatch.setattr(sdpo.ttt, "policy_update", spy)


@pytest.mark.parametrize("budget, updates", [(4, 0), (6, 1), (8, 1), (9, 2)])
def test_sdpo_skips_the_update_of_the_round_that_spends_the_budget(tiny_model_path, monkeypatch, budget, updates):
    model, tok, sampler = load(tiny_model_path)
    spy = UpdateSpy(monkeypatch)
    res = solve(Problem.parse(PROBLEM), model, tok, sampler, cfg(budget=budget), Recorder())
    assert res.attempts_used == budget and res.discovered_at is None
    assert len(spy.batches) == updates
    assert [m["ttt/updated"] for m in res.rounds] == [1.0] * updates + [0.0]


def test_ppo_epochs_is_one_update_of_that_many_epochs_per_round(tiny_model_path, monkeypatch):
    """ppo_epochs=3: one policy_update per round running 3 epochs against the sampling policy's log-probs:
    the first epoch's IS ratio is exactly 1, the later ones are not (recomputing the old log-probs before
    each step would reset them to 1)."""
    import sdpo.update

    model, tok, sampler = load(tiny_model_path)
    spy = UpdateSpy(monkeypatch)
    real, ratios = sdpo.update.sdpo_loss, []

    def loss_spy(*a, **kw):
        loss, m = real(*a, **kw)
        ratios.append(m["sdpo/is_ratio_mean"])
        return loss, m

    monkeypatch.setattr(sdpo.update, "sdpo_loss", loss_spy)
    c = cfg(budget=8, ppo_epochs=3, lr=1e-2)
    assert c.ppo_epochs == 3
    res = solve(Problem.parse(PROBLEM), model, tok, sampler, c, Recorder())
    assert res.attempts_used == 8 and len(spy.batches) == 1  # round 0 only (round 1 spends the budget)
    assert len(ratios) == 3  # 4 attempts, micro_batch_size 4: one loss call per epoch
    assert ratios[0] == 1.0
    assert all(abs(r - 1.0) > 1e-4 for r in ratios[1:]), ratios
    assert res.rounds[0]["sdpo/is_ratio_mean"] != 1.0  # the round's metrics average the three epochs
    with pytest.raises(ConfigError, match="^steps_per_round: unknown key; known keys are .*ppo_epochs"):
        cfg(steps_per_round=3)


# --------------------------------------------------------------------------------------------- a model that can succeed

@pytest.fixture(scope="module")
def finetuned_path(tiny_model_path, tmp_path_factory):
    """The tiny model fine-tuned (plain cross-entropy, 70 full-batch steps) on the short prompt -> three
    answers: correct, public-tests-only (print(6)) and wrong (print(0)). Sampling then gives each with a
    moderate probability (about 20% / 50% / 25% at temperature 1, some malformed)."""
    model, tok = load_model_and_tokenizer(tiny_model_path)
    torch.manual_seed(0)
    prompt = chat_ids(tok, SHORT_PROMPT)
    rows = [prompt + tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for r in (CORRECT, PUBLIC_ONLY, WRONG)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    att, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        ids[i, :len(r)], att[i, :len(r)] = torch.tensor(r), 1
        labels[i, len(prompt):len(r)] = ids[i, len(prompt):len(r)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(70):
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("finetuned") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("strategy", ["sdpo", "best_of_k", "multiturn"])
def test_each_strategy_stops_at_the_first_discovery(finetuned_path, strategy):
    model, tok, sampler = load(finetuned_path)
    rec = Recorder()
    # multiturn: the fine-tuned model has only seen the bare question, so the context budget leaves room for
    # nothing else (the truncation drops all history); the conversation's growth is tested separately below
    room = len(chat_ids(tok, SHORT_PROMPT)) + 24 + 1
    c = cfg(strategy=strategy, budget=24, n=4, max_new_tokens=24, context_budget=room)
    res = solve(short_task(), model, tok, sampler, c, rec)
    assert res.discovered_at is not None, [a.response for a in rec.got]
    assert res.attempts_used == res.discovered_at == len(rec.got) < c.budget
    last = rec.got[-1]
    assert (last.passed, last.total, last.hidden_passed, last.hidden_total) == (1, 1, 1, 1)
    assert res.solution == last.code and "input()" in res.solution
    for a in rec.got[:-1]:  # every earlier attempt failed the public tests or the hidden ones
        assert a.passed < a.total or a.hidden_passed == 0
        assert (a.hidden_total is not None) == (a.passed == a.total)
        assert a.feedback  # the same feedback for every strategy; the reward is the public tests'
        assert a.reward == (1.0 if a.passed == a.total else 0.0)
        assert (a.feedback == HIDDEN_FAIL_FEEDBACK) == (a.passed == a.total)
    assert res.rounds[-1]["ttt/discovered"] == 1.0
    if strategy == "multiturn":
        assert all(m["multiturn/history_kept"] == 0 for m in res.rounds)


def test_sdpo_updates_after_a_demonstration_without_feedback(finetuned_path, monkeypatch):
    """Hidden test nobody passes, feedback off: a round's only possible teacher context is a sibling that passed
    the public tests (reward 1, with HIDDEN_FAIL_FEEDBACK that stays unused with feedback off). The adapter
    moves after exactly the rounds that had one (but the last, which spends the budget), and the update
    batch's teacher contexts show that sibling's solution."""
    from sdpo.reprompt import build_teacher_messages

    model, tok, sampler = load(finetuned_path)
    c = cfg(budget=20, n=4, max_new_tokens=24, self_distillation={"include_environment_feedback": False})
    policy = prepare_policy(model, c)
    snaps = [_lora_state(policy)]
    views = []
    rec = Recorder(on_metrics=lambda r, m: snaps.append(_lora_state(policy)), on_teacher=views.extend)
    spy = UpdateSpy(monkeypatch)
    res = solve(short_task(hidden_output="15\n"), policy, tok, sampler, c, rec)
    assert res.discovered_at is None and res.attempts_used == 20
    had_demo = [any(a.passed == a.total for a in rec.got[4 * r:4 * r + 4]) for r in range(5)]
    assert any(had_demo[:4])  # the fine-tuned model passes the public test about half the time
    for a in rec.got:
        if a.passed == a.total:
            assert (a.hidden_passed, a.hidden_total, a.reward, a.feedback) == (0, 1, 1.0, HIDDEN_FAIL_FEEDBACK)
    moved = [_changed(snaps[r], snaps[r + 1]) for r in range(5)]
    assert moved == had_demo[:4] + [False]
    assert [m["ttt/updated"] for m in res.rounds] == [float(h) for h in had_demo[:4]] + [0.0]
    assert len(spy.batches) == sum(had_demo[:4])
    for batch in spy.batches:
        contexts = build_teacher_messages(batch.prompts, [r.text for r in batch.rollouts], batch.rewards,
                                          batch.group_ids, batch.feedback, c.self_distillation)
        assert any(ctx.uses_solution for ctx in contexts)
        assert not any(ctx.uses_feedback for ctx in contexts)
        assert all(HIDDEN_FAIL_FEEDBACK not in ctx.messages[-1]["content"] for ctx in contexts)
    # what the UI shows: each attempt's teacher context names the sibling shown as the demonstration (the
    # first public pass of its round, another one for a public pass itself), or none
    attempts = {(a.round, a.index): a for a in rec.got}
    assert [(v.round, v.index) for v in views] == [(a.round, a.index) for a in rec.got]
    for v in views:
        passes = [i for i in range(4) if attempts[(v.round, i)].passed == 1]
        others = [i for i in passes if i != v.index]
        assert v.demonstration == (others[0] if others else None)
        assert v.distilled == (v.demonstration is not None) and not v.feedback
        if v.distilled:
            assert attempts[(v.round, v.demonstration)].code in v.context and v.credit is not None
        else:
            assert v.context == "" and v.credit is None


class RecordingSampler(HFSampler):
    """The real HF sampler, also keeping the prompts it was asked to continue."""

    def __init__(self, model, tok):
        super().__init__(model, tok)
        self.prompts = []

    def generate(self, prompts, n, params):
        self.prompts.extend(prompts)
        return super().generate(prompts, n, params)


@pytest.mark.parametrize("template", ["feedback_only", "attempt_and_feedback"])
def test_multiturn_conversation_grows_with_each_attempt_and_its_feedback(finetuned_path, template):
    model, tok = load_model_and_tokenizer(finetuned_path)
    sampler = RecordingSampler(model, tok)
    rec = Recorder()
    c = cfg(strategy="multiturn", multiturn_template=template, budget=5, max_new_tokens=24, context_budget=2000)
    task = short_task(hidden_output="15\n")  # nothing is ever discovered
    res = solve(task, model, tok, sampler, c, rec)
    assert res.attempts_used == 5 and len(rec.got) == 5 and len(sampler.prompts) == 5
    assert all(a.feedback for a in rec.got)
    history = [(a.response, a.feedback) for a in rec.got]
    for t, prompt in enumerate(sampler.prompts):
        assert prompt == multiturn_messages(task.messages, history[:t], template)
    tokens = [m["multiturn/prompt_tokens"] for m in res.rounds]
    assert tokens == sorted(tokens) and tokens[-1] > tokens[0]


# --------------------------------------------------------------------------------------------- resume and stop

def test_resume_samples_what_the_uninterrupted_run_would_have(tiny_model_path):
    model, tok, sampler = load(tiny_model_path)
    full, part = Recorder(), Recorder()
    solve(Problem.parse(PROBLEM), model, tok, sampler, cfg(strategy="best_of_k", budget=8), full)
    res = solve(Problem.parse(PROBLEM), model, tok, sampler, cfg(strategy="best_of_k", budget=8), part,
                start_attempt=4)
    assert res.attempts_used == 8 and len(part.got) == 4
    assert [(a.round, a.index, a.response) for a in part.got] == [(a.round, a.index, a.response)
                                                                  for a in full.got[4:]]


def test_sdpo_resume_reloads_the_adapter_saved_after_each_round(tiny_model_path, tmp_path):
    """The adapter saved in out_dir after round 0 is what a job resumed at attempt 4 starts from: its round 1
    samples exactly what the uninterrupted run's round 1 sampled (the optimizer moments restart after that)."""
    c = cfg(budget=8, n=4)
    full, first, resumed = Recorder(), Recorder(), Recorder()
    model, tok, sampler = load(tiny_model_path)
    solve(Problem.parse(PROBLEM), model, tok, sampler, c, full, out_dir=tmp_path / "a")
    model, tok, sampler = load(tiny_model_path)
    rounds_done = []
    first.on_metrics = lambda step, m: rounds_done.append(step)  # round 0 ended (updated, adapter saved)
    first.should_stop = lambda: bool(rounds_done)  # the job is interrupted between round 0 and round 1
    solve(Problem.parse(PROBLEM), model, tok, sampler, c, first, out_dir=tmp_path / "b")
    model, tok, sampler = load(tiny_model_path)
    res = solve(Problem.parse(PROBLEM), model, tok, sampler, c, resumed, out_dir=tmp_path / "b", start_attempt=4)
    assert res.attempts_used == 8 and [(a.round, a.index) for a in resumed.got] == [(1, i) for i in range(4)]
    assert [a.response for a in first.got] == [a.response for a in full.got[:4]]
    assert [a.response for a in resumed.got] == [a.response for a in full.got[4:]]
    # and without the saved adapter the resumed round would have sampled from the base model instead
    model, tok, sampler = load(tiny_model_path)
    fresh = Recorder()
    solve(Problem.parse(PROBLEM), model, tok, sampler, c, fresh, out_dir=tmp_path / "c", start_attempt=4)
    assert [a.response for a in fresh.got] != [a.response for a in full.got[4:]]


def test_stop_requested_is_honoured_between_rounds(tiny_model_path):
    model, tok, sampler = load(tiny_model_path)
    rec = Recorder()
    rec.should_stop = lambda: len(rec.got) >= 4
    res = solve(Problem.parse(PROBLEM), model, tok, sampler, cfg(strategy="best_of_k", budget=12), rec)
    assert res.stopped and res.attempts_used == 4 and len(rec.got) == 4


@pytest.mark.parametrize("strategy", ["sdpo", "multiturn"])
def test_stop_inside_a_round_ends_the_run_without_reporting_that_round(tiny_model_path, tmp_path, strategy):
    """A stop the sampler sees while round 1 generates (it asks after every token) ends the run at once:
    ``stopped``, round 0's attempts and metrics reported, nothing of round 1, no more tokens generated."""
    model, tok = load_model_and_tokenizer(tiny_model_path)
    rec = Recorder()
    metrics = []
    rec.on_metrics = lambda step, m: metrics.append(step)
    per_round = 1 if strategy == "multiturn" else 2
    polls = []

    def sampler_stop():  # says stop on the 5th token of round 1
        if len(rec.got) >= per_round:
            polls.append(1)
        return len(polls) >= 5

    sampler = HFSampler(model, tok, should_stop=sampler_stop)
    res = solve(Problem.parse(PROBLEM), model, tok, sampler,
                cfg(strategy=strategy, budget=6, n=2, max_new_tokens=200, context_budget=600), rec, out_dir=tmp_path)
    assert res.stopped and len(rec.got) == per_round and res.attempts_used == per_round
    assert metrics == [0] and len(res.rounds) == 1 and len(polls) == 5


def test_multiturn_question_longer_than_the_context_budget_is_a_config_error(tiny_model_path):
    model, tok, sampler = load(tiny_model_path)
    q = len(chat_ids(tok, Problem.parse(PROBLEM).to_task().messages))
    rec = Recorder()
    with pytest.raises(ConfigError, match=rf"^context_budget: got {q + 11}; the question alone has {q} prompt "
                                          rf"tokens .* raise context_budget to at least {q + 12}") as e:
        solve(Problem.parse(PROBLEM), model, tok, sampler,
              cfg(strategy="multiturn", max_new_tokens=12, context_budget=q + 11), rec)
    assert e.value.field == "context_budget" and rec.got == []  # raised before any attempt
    # exactly enough room for the question and the response: it runs
    res = solve(Problem.parse(PROBLEM), model, tok, sampler,
                cfg(strategy="multiturn", budget=2, max_new_tokens=12, context_budget=q + 12), rec)
    assert res.attempts_used == 2 and [m["multiturn/prompt_tokens"] for m in res.rounds] == [q, q]


@pytest.mark.parametrize("fail", [False, True])
def test_solve_from_config_closes_its_sampler(tiny_model_path, monkeypatch, fail):
    """The sampler solve_from_config builds is closed when the solve ends, also when it raises (a vLLM engine
    holds GPU memory and a work dir for as long as it is open)."""
    import sdpo.ttt
    from sdpo.rollout.hf import HFSampler as Hf
    from sdpo.ttt import solve_from_config

    closed = []
    monkeypatch.setattr(Hf, "close", lambda self: closed.append(self))
    if fail:
        def boom(*a, **kw):
            raise RuntimeError("engine fell over")

        monkeypatch.setattr(sdpo.ttt, "solve", boom)
        with pytest.raises(RuntimeError, match="engine fell over"):
            solve_from_config(Problem.parse(PROBLEM), cfg(sampler="hf", budget=4), model_path=tiny_model_path)
    else:
        res = solve_from_config(Problem.parse(PROBLEM), cfg(sampler="hf", budget=4), model_path=tiny_model_path)
        assert res.attempts_used == 4
    assert len(closed) == 1 and isinstance(closed[0], Hf)


def test_stop_inside_an_update_saves_no_weights_and_reports_nothing_more(tiny_model_path, tmp_path, monkeypatch):
    """A stop first seen inside round 0's policy update (asked before each micro-batch) ends the run: its
    attempts stay reported, its metrics are not, and the interrupted weights are not saved."""
    import sdpo.callbacks

    monkeypatch.setattr(sdpo.callbacks, "STOP_POLL_S", 0.0)  # ask every time (no wall-clock dependence)
    model, tok, sampler = load(tiny_model_path)
    rec = Recorder()
    metrics, ckpts = [], []
    rec.on_metrics = lambda step, m: metrics.append(step)
    rec.on_checkpoint = lambda step, path, kind: ckpts.append(path)
    rec.should_stop = lambda: len(rec.got) >= 2
    # without the per-token view (asked to stop too, before the update) the first question is in the update
    res = solve(Problem.parse(PROBLEM), model, tok, sampler, cfg(budget=6, n=2, token_view=False), rec,
                out_dir=tmp_path)
    assert res.stopped and len(rec.got) == 2 and res.attempts_used == 2
    assert metrics == [] and ckpts == [] and res.adapter_path is None
    assert not (tmp_path / "adapter").exists()
