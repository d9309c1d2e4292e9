import pytest
import torch

from sdpo.config import SelfDistillationConfig
from sdpo.forward import output_head, response_hidden, response_logits
from sdpo.models import chat_ids, load_model_and_tokenizer
from sdpo.reprompt import (
    TeacherContext,
    build_teacher_messages,
    reprompt_metrics,
    strip_thinking,
    tokenize_teacher_inputs,
    truncate_prompt,
)

SYS = {"role": "system", "content": "Be brief."}


def q(text):
    return [SYS, {"role": "user", "content": text}]


def expected_text(prompt, demo=None, fb=None):
    """The reprompt written out by hand from the default templates, independently of the config constants."""
    sol = f"\nCorrect solution:\n\n{demo}" if demo is not None else ""
    feed = f"\nThe following is feedback from your unsuccessful earlier attempt:\n\n{fb}" if fb is not None else ""
    return f"{prompt}{sol}{feed}\n\nCorrectly solve the original question."


def build(responses, rewards, groups, feedback=None, prompts=None, **cfg):
    n = len(responses)
    prompts = prompts or [q(f"Q{g}") for g in groups]
    feedback = feedback if feedback is not None else [None] * n
    return build_teacher_messages(prompts, responses, rewards, groups, feedback, SelfDistillationConfig(**cfg))


def test_first_successful_sibling_in_batch_order_and_self_exclusion():
    # group 0: samples 0 (fail), 1 (success), 2 (fail), 3 (success); group 1: 4 (success), 5 (fail)
    responses = ["r0", "r1", "r2", "r3", "r4", "r5"]
    ctx = build(responses, [0.0, 1.0, 0.0, 1.0, 1.0, 0.0], [0, 0, 0, 0, 1, 1])
    demo = [c.messages[-1]["content"] for c in ctx]
    assert demo[0] == expected_text("Q0", "r1")        # first success of the group
    assert demo[2] == expected_text("Q0", "r1")
    assert demo[1] == expected_text("Q0", "r3")        # self excluded -> next success of the group
    assert demo[3] == expected_text("Q0", "r1")        # first success that is not itself
    assert demo[5] == expected_text("Q1", "r4")
    # the only success of group 1 has no other demonstration -> original prompt, not distilled
    assert ctx[4].messages == q("Q1") and not ctx[4].distill_mask
    assert [c.uses_solution for c in ctx] == [True, True, True, True, False, True]
    assert all(c.messages[0] == SYS and c.messages[-1]["role"] == "user" and len(c.messages) == 2 for c in ctx)


def test_self_success_allowed_when_flag_off():
    ctx = build(["a", "b"], [1.0, 1.0], [7, 7], dont_reprompt_on_self_success=False)
    assert ctx[0].messages[-1]["content"] == expected_text("Q7", "a")  # its own response is the first success
    assert ctx[1].messages[-1]["content"] == expected_text("Q7", "a")


def test_success_threshold_is_inclusive():
    ctx = build(["a", "b", "c"], [0.5, 0.49, 0.0], [0, 0, 0], success_reward_threshold=0.5)
    assert ctx[1].messages[-1]["content"] == expected_text("Q0", "a")
    assert ctx[2].messages[-1]["content"] == expected_text("Q0", "a")
    assert not ctx[0].uses_solution  # 'b' at 0.49 is not a success


def test_groups_do_not_leak():
    ctx = build(["ok", "bad"], [1.0, 0.0], ["g1", "g2"])
    assert not ctx[1].distill_mask and ctx[1].messages == q("Qg2")


def test_thinking_stripped_from_demonstration():
    demo = "<think>step 1\nstep 2</think>\n\n  answer <think>more</think>done"
    assert strip_thinking(demo) == "answer done"
    ctx = build([demo, "x"], [1.0, 0.0], [0, 0])
    assert ctx[1].messages[-1]["content"] == expected_text("Q0", "answer done")
    kept = build([demo, "x"], [1.0, 0.0], [0, 0], remove_thinking_from_demonstration=False)
    assert kept[1].messages[-1]["content"] == expected_text("Q0", demo)


@pytest.mark.parametrize("include", [True, False])
@pytest.mark.parametrize("only_without_solution", [True, False])
@pytest.mark.parametrize("has_demo", [True, False])
@pytest.mark.parametrize("fb", ["Wrong answer on test 2", "", " \n\t ", None])
def test_feedback_gating(include, only_without_solution, has_demo, fb):
    # sample 1 is the one under test; sample 0 is a successful sibling iff has_demo
    ctx = build(["good", "bad"], [1.0 if has_demo else 0.0, 0.0], [0, 0], feedback=[None, fb],
                include_environment_feedback=include,
                environment_feedback_only_without_solution=only_without_solution)[1]
    used = include and fb is not None and fb.strip() != "" and (not only_without_solution or not has_demo)
    assert ctx.uses_feedback == used
    assert ctx.uses_solution == has_demo
    assert ctx.distill_mask == (used or has_demo)
    if ctx.distill_mask:
        want = expected_text("Q0", "good" if has_demo else None, fb if used else None)
        assert ctx.messages == [SYS, {"role": "user", "content": want}]
    else:
        assert ctx.messages == q("Q0")


def test_custom_templates_and_multi_turn_prefix_kept():
    prompt = [SYS, {"role": "user", "content": "first"}, {"role": "assistant", "content": "hm"},
              {"role": "user", "content": "last"}]
    ctx = build(["s", "f"], [1.0, 0.0], [0, 0], feedback=[None, "err"], prompts=[prompt, prompt],
                reprompt_template="<{prompt}|{solution}|{feedback}>", solution_template="S={successful_previous_attempt}",
                feedback_template="F={feedback_raw}", environment_feedback_only_without_solution=False)
    assert ctx[1].messages == prompt[:-1] + [{"role": "user", "content": "<last|S=s|F=err>"}]
    assert ctx[1].uses_solution and ctx[1].uses_feedback
    assert prompt[-1]["content"] == "last"  # inputs not mutated


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        build_teacher_messages([q("a")], ["x", "y"], [1.0, 0.0], [0, 0], [None, None], SelfDistillationConfig())


def test_metrics():
    # group 0: success at 0 -> 1 and 2 get the demo; group 1: no success, sample 3 has feedback; group 2: none
    rewards, groups = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0, 0, 0, 1, 1, 2]
    feedback = [None, "e", "", "e", None, None]
    cfg = SelfDistillationConfig()
    ctx = build_teacher_messages([q("Q")] * 6, ["r"] * 6, rewards, groups, feedback, cfg)
    m = reprompt_metrics(ctx, rewards, groups, feedback, cfg)
    assert m == pytest.approx({
        "sdpo/success_group_fraction": 1 / 3,
        "sdpo/success_sample_fraction": 2 / 6,
        "sdpo/feedback_available_fraction": 2 / 6,
        "sdpo/feedback_used_fraction": 1 / 6,   # sample 1's feedback is dropped: it has a demonstration
        "sdpo/reprompt_sample_fraction": 3 / 6,
    })


def test_whitespace_feedback_is_not_usable_and_not_counted():
    rewards, groups = [0.0, 0.0, 0.0, 0.0], [0, 0, 1, 1]
    feedback = ["  \n", "\t", "Wrong answer", " x "]
    cfg = SelfDistillationConfig()
    ctx = build_teacher_messages([q("Q")] * 4, ["r"] * 4, rewards, groups, feedback, cfg)
    assert [c.uses_feedback for c in ctx] == [False, False, True, True]
    assert [c.distill_mask for c in ctx] == [False, False, True, True]
    assert ctx[0].messages == q("Q")
    m = reprompt_metrics(ctx, rewards, groups, feedback, cfg)
    assert m["sdpo/feedback_available_fraction"] == pytest.approx(2 / 4)
    assert m["sdpo/feedback_used_fraction"] == pytest.approx(2 / 4)


def test_feedback_available_fraction_is_zero_when_feedback_is_off():
    rewards, groups, feedback = [0.0, 0.0, 1.0], [0, 0, 0], ["Wrong answer", "Runtime error", None]
    cfg = SelfDistillationConfig(include_environment_feedback=False)
    ctx = build_teacher_messages([q("Q")] * 3, ["r"] * 3, rewards, groups, feedback, cfg)
    m = reprompt_metrics(ctx, rewards, groups, feedback, cfg)
    assert m["sdpo/feedback_available_fraction"] == 0.0 and m["sdpo/feedback_used_fraction"] == 0.0
    assert m["sdpo/reprompt_sample_fraction"] == pytest.approx(2 / 3)   # the demonstration still counts
    on = SelfDistillationConfig(include_environment_feedback=True)
    assert reprompt_metrics(ctx, rewards, groups, feedback, on)["sdpo/feedback_available_fraction"] == \
        pytest.approx(2 / 3)


def test_truncate_prompt_sides():
    ids = list(range(10))
    assert truncate_prompt(ids, 4, "right") == [0, 1, 2, 3]    # keeps the beginning (HF truncation_side)
    assert truncate_prompt(ids, 4, "left") == [6, 7, 8, 9]     # keeps the end
    assert truncate_prompt(ids, 10, "error") == ids
    with pytest.raises(ValueError, match="max_reprompt_len"):
        truncate_prompt(ids, 9, "error")


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_model_and_tokenizer(tiny_model_path)


def test_tokenize_teacher_inputs_truncation(tiny):
    _, tok = tiny
    long_ctx = TeacherContext([{"role": "user", "content": "word " * 50}], True, False)
    short_ctx = TeacherContext([{"role": "user", "content": "hi"}], True, False)
    full = chat_ids(tok, long_ctx.messages)
    short = chat_ids(tok, short_ctx.messages)
    limit = len(short) + 3
    assert len(full) > limit
    resp, mask = torch.tensor([[9, 9], [9, 9]]), torch.ones(2, 2, dtype=torch.long)
    for side, kept in (("right", full[:limit]), ("left", full[-limit:])):
        b = tokenize_teacher_inputs(tok, [long_ctx, short_ctx], resp, mask, limit, side)
        assert b.response_start == limit
        assert b.input_ids[0, :limit].tolist() == kept
        assert b.input_ids[1, :limit].tolist() == [tok.pad_token_id] * 3 + short
        assert b.input_ids[:, limit:].tolist() == resp.tolist()
    with pytest.raises(ValueError, match="max_reprompt_len"):
        tokenize_teacher_inputs(tok, [long_ctx, short_ctx], resp, mask, limit, "error")


def test_padded_teacher_logits_match_unpadded_forward(tiny):
    model, tok = tiny
    cfg = SelfDistillationConfig(environment_feedback_only_without_solution=False)
    prompts = [q("Sum a list."), [{"role": "user", "content": "Reverse a string, please, in Python."}], q("x")]
    responses = ["def f(xs): return sum(xs)", "s[::-1]", "no"]
    ctx = build_teacher_messages(prompts, responses, [1.0, 1.0, 0.0], [0, 1, 0], [None, None, "Runtime Error"], cfg)
    rows = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
    width = max(map(len, rows))
    resp = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    batch = tokenize_teacher_inputs(tok, ctx, resp, mask, 10240, "right")
    with torch.no_grad():
        logits = response_logits(model, batch)
        hidden = response_hidden(model, batch)
        assert logits.shape == (3, width, model.config.vocab_size)
        torch.testing.assert_close(hidden @ output_head(model).weight.T, logits, atol=1e-5, rtol=0)
        for i, c in enumerate(ctx):
            prompt = chat_ids(tok, c.messages)
            single = torch.tensor([prompt + rows[i]])
            ref = model(single).logits[0, len(prompt) - 1: len(prompt) - 1 + len(rows[i])]
            torch.testing.assert_close(logits[i, : len(rows[i])], ref, atol=1e-5, rtol=0)
            # the aligned logits score the response tokens themselves
            assert ref.shape[0] == len(rows[i])
