"""The per-token view (``sdpo.credit``) against log-probabilities computed independently with one plain forward
of [prompt + response] per side; its bounds; the pieces it shows; and what a solve reports through
``callbacks.teacher``."""

from __future__ import annotations

import pytest
import torch

from sdpo.callbacks import Callbacks
from sdpo.config import SelfDistillationConfig
from sdpo.credit import clip_text, token_credit, token_pieces
from sdpo.data.problem import Problem
from sdpo.models import chat_ids, load_model_and_tokenizer
from sdpo.reprompt import TeacherContext, build_teacher_messages
from sdpo.rollout.base import Rollout
from sdpo.rollout.hf import HFSampler
from sdpo.teacher import LiveTeacher
from sdpo.ttt import SolveConfig, solve

QUESTION = [{"role": "user", "content": "Read n and print 2n."}]
PROBLEM = {"title": "Double", "statement": "Read an integer n from stdin and print 2n.",
           "tests": {"inputs": ["3\n"], "outputs": ["6\n"], "testtype": "stdin"}}


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model.eval()
    return model, tok


def rollout(tok, text: str) -> Rollout:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return Rollout(prompt_ids=chat_ids(tok, QUESTION), response_ids=ids, text=text, logprobs=[0.0] * len(ids),
                   truncated=False)


def reference_logprobs(model, prompt_ids: list[int], response_ids: list[int], temperature: float) -> torch.Tensor:
    """log p(response_t | prompt, response_<t) from one unpadded forward of the whole sequence, float64."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double() / temperature
    lp = torch.log_softmax(logits, dim=-1)
    p = len(prompt_ids)
    return lp[p - 1:p - 1 + len(response_ids)], lp[torch.arange(p - 1, p - 1 + len(response_ids)),
                                                     torch.tensor(response_ids)]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_credit_matches_independent_forwards_and_lists_the_worst_tokens(tiny, temperature):
    model, tok = tiny
    sd = SelfDistillationConfig(temperature=temperature)
    texts = ["```python\nprint(int(input()) * 2)\n```", "I do not know.", "```python\nprint(0)\n```"]
    rollouts = [rollout(tok, t) for t in texts]
    contexts = build_teacher_messages([QUESTION] * 3, texts, [1.0, 0.0, 0.0], [0, 0, 0],
                                      [None, "No code block found.", "   "], sd)
    # 0: its own success is not its demonstration and it has no feedback; 1: the demonstration (sample 0)
    # and no feedback (feedback only without a solution); 2: the demonstration
    assert [(c.distill_mask, c.demonstration) for c in contexts] == [(False, None), (True, 0), (True, 0)]
    views = token_credit(model, LiveTeacher(model), tok, rollouts, contexts, sd, positions=3, alternatives=4)
    assert views[0] is None
    for r, ctx, v in zip(rollouts[1:], contexts[1:], views[1:], strict=True):
        full_s, ls = reference_logprobs(model, r.prompt_ids, r.response_ids, temperature)
        full_t, lt = reference_logprobs(model, chat_ids(tok, ctx.messages), r.response_ids, temperature)
        assert v.total_tokens == len(r.response_ids) == len(v.tokens)
        assert torch.allclose(torch.tensor(v.student_logprobs, dtype=torch.float64), ls, atol=2e-4)
        assert torch.allclose(torch.tensor(v.teacher_logprobs, dtype=torch.float64), lt, atol=2e-4)
        # the listed positions: the lowest teacher - student differences, all below 0, lowest first
        delta = lt - ls
        negative = sorted((float(d), i) for i, d in enumerate(delta) if d < 0)[:3]
        assert [d.position for d in v.disagreements] == [i for _, i in negative]
        for d in v.disagreements:
            assert d.delta < 0 and d.token == v.tokens[d.position]
            probs, top = torch.topk(full_t[d.position].exp(), 4)
            assert [a.token for a in d.teacher_top] == [tok.decode([int(t)]) for t in top]
            assert [a.prob for a in d.teacher_top] == pytest.approx(probs.tolist(), abs=2e-4)
        assert "".join(v.tokens) == r.text


def test_credit_is_bounded_and_stops_when_asked(tiny):
    model, tok = tiny
    sd = SelfDistillationConfig()
    r = rollout(tok, "word " * 200)
    ctx = TeacherContext([{"role": "user", "content": "Read n and print 2n. Feedback: wrong."}], False, True)
    (v,) = token_credit(model, LiveTeacher(model), tok, [r], [ctx], sd, max_tokens=16, positions=2)
    assert len(v.tokens) == len(v.student_logprobs) == len(v.teacher_logprobs) == 16
    assert v.total_tokens == len(r.response_ids) > 16 and len(v.disagreements) <= 2
    from sdpo.callbacks import StopRequested

    with pytest.raises(StopRequested):
        token_credit(model, LiveTeacher(model), tok, [r], [ctx], sd, should_stop=lambda: True)
    long = "x" * 50_000
    clipped = clip_text(long, 1000)
    assert len(clipped) < 1100 and "49,000 characters not shown" in clipped and clip_text("short", 10) == "short"


def test_token_pieces_rebuild_the_text_with_multibyte_characters_and_special_tokens(tiny):
    _, tok = tiny
    text = "naïve café → 😀 done"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text + tok.eos_token
    assert "\ufffd" not in "".join(pieces)


def _solve(model_path, **kw):
    model, tok = load_model_and_tokenizer(model_path)
    cfg = SolveConfig.from_dict({"budget": 6, "n": 4, "max_new_tokens": 12, "context_budget": 400,
                                 "micro_batch_size": 4, "lr": 1e-3, **kw})
    views, attempts = [], []
    cb = Callbacks(on_teacher=views.extend, on_attempts=attempts.extend)
    res = solve(Problem.parse(PROBLEM), model, tok, HFSampler(model, tok), cfg, cb)
    return res, attempts, views


def test_solve_reports_each_rounds_teacher_view_before_its_update(tiny_model_path, monkeypatch):
    """The untrained tiny model fails every attempt: each gets its own feedback as its teacher context, with the
    per-token view; the round that spends the budget is reported too (not updated)."""
    import sdpo.ttt

    order = []
    real_update = sdpo.ttt.policy_update
    monkeypatch.setattr(sdpo.ttt, "policy_update", lambda *a, **k: (order.append("update"), real_update(*a, **k))[1])
    model, tok = load_model_and_tokenizer(tiny_model_path)
    cfg = SolveConfig.from_dict({"budget": 6, "n": 4, "max_new_tokens": 12, "context_budget": 400,
                                 "micro_batch_size": 4, "lr": 1e-3})
    views, attempts = [], []
    cb = Callbacks(on_teacher=lambda v: (order.append("teacher"), views.extend(v)), on_attempts=attempts.extend)
    res = solve(Problem.parse(PROBLEM), model, tok, HFSampler(model, tok), cfg, cb)
    assert order == ["teacher", "update", "teacher"]
    assert [(v.round, v.index) for v in views] == [(a.round, a.index) for a in attempts]
    for v, a in zip(views, attempts, strict=True):
        assert v.distilled and v.feedback and v.demonstration is None
        assert a.feedback in v.context  # the re-prompt shows the attempt's own feedback
        assert v.credit is not None and len(v.credit.tokens) == a.tokens
    assert [m["sdpo/reprompt_sample_fraction"] for m in res.rounds] == [1.0, 1.0]
    assert [m["ttt/updated"] for m in res.rounds] == [1.0, 0.0]


def test_view_off_computes_nothing_and_baselines_have_no_teacher(tiny_model_path, monkeypatch):
    import sdpo.credit

    def boom(*a, **k):
        raise AssertionError("token_credit called with token_view off")

    monkeypatch.setattr(sdpo.credit, "token_credit", boom)
    _, attempts, views = _solve(tiny_model_path, token_view=False)
    assert len(views) == len(attempts) == 6 and all(v.credit is None and v.distilled for v in views)
    for strategy in ("best_of_k", "multiturn"):
        _, attempts, views = _solve(tiny_model_path, strategy=strategy, budget=2)
        assert len(attempts) == 2 and views == []


def test_sampled_logprobs_a_block_of_positions_at_a_time(monkeypatch):
    import sdpo.credit

    torch.manual_seed(0)
    logits, ids = torch.randn(10, 7, dtype=torch.float64) * 3, torch.randint(0, 7, (10,))
    want = torch.log_softmax(logits / 0.7, dim=-1)[torch.arange(10), ids]
    monkeypatch.setattr(sdpo.credit, "CHUNK_ELEMENTS", 3 * 7)  # blocks of 3 positions: 4 blocks
    got = sdpo.credit.sampled_logprobs(logits.to(torch.bfloat16), ids, 0.7)
    assert got.dtype == torch.float32 and got.shape == (10,)
    assert torch.allclose(got.double(), torch.log_softmax(logits.to(torch.bfloat16).double() / 0.7, dim=-1)
                          [torch.arange(10), ids], atol=1e-5)
    assert torch.allclose(got.double(), want, atol=0.1)  # bfloat16 inputs: close to the float64 values
