import random

from sdpo.config import DEFAULT_FEEDBACK_TEMPLATE, DEFAULT_REPROMPT_TEMPLATE, DEFAULT_SOLUTION_TEMPLATE
from sdpo.toy.corpus import KINDS, build_corpus, encode, feedback_text, near_miss, teacher_messages
from sdpo.toy.generator import bucket, generate_problem, held_out, run_program, splits

FB_HEAD = DEFAULT_FEEDBACK_TEMPLATE.split("{feedback_raw}")[0]


def test_corpus_is_deterministic_and_has_the_contexts_with_exact_templates():
    mix = (0.25, 0.25, 0.25, 0.25)
    a = build_corpus(300, seed=0, mix=mix)
    assert a == build_corpus(300, seed=0, mix=mix)
    assert a != build_corpus(300, seed=1, mix=mix)
    by_kind = {k: [e for e in a if e.kind == k] for k in KINDS}
    assert all(len(v) > 30 for v in by_kind.values())
    for ex in a:
        system, user = ex.messages
        assert system["role"] == "system" and user["role"] == "user"
        assert ex.response.startswith("```python\n")
    for ex in by_kind["direct"]:
        assert "Correct solution" not in ex.messages[1]["content"]
    for ex in by_kind["solution"] + by_kind["copy"]:
        user = ex.messages[1]["content"]
        prompt = user.split(DEFAULT_SOLUTION_TEMPLATE.split("{")[0])[0]
        expected = DEFAULT_REPROMPT_TEMPLATE.format(
            prompt=prompt, feedback="",
            solution=DEFAULT_SOLUTION_TEMPLATE.format(successful_previous_attempt=ex.response))
        assert user == expected
    for ex in by_kind["feedback"]:
        user = ex.messages[1]["content"]
        prompt, fb = user.split(FB_HEAD)
        fb = fb.removesuffix("\n\nCorrectly solve the original question.")
        assert fb.startswith(("Your code produced a wrong answer", "Your code raised a runtime error"))
        assert user == DEFAULT_REPROMPT_TEMPLATE.format(
            prompt=prompt, solution="", feedback=DEFAULT_FEEDBACK_TEMPLATE.format(feedback_raw=fb))
        assert "Correct solution" not in user
    # copy practice: the program shown (and targeted) is a near miss, never the problem's reference solution
    from sdpo.toy.generator import stream

    gen = stream(seed=0)
    reference = {p.id: p.solution() for p in (next(gen) for _ in range(600))}
    assert all(ex.response != reference[ex.problem_id] for ex in by_kind["copy"])
    assert all(ex.response == reference[ex.problem_id] for ex in by_kind["solution"] + by_kind["feedback"])


def test_teacher_messages_match_the_trainer_reprompt():
    p = generate_problem(random.Random(0), depth=2)
    msgs = teacher_messages(p, solution=p.solution())
    assert msgs[0] == p.messages()[0]
    assert msgs[1]["content"] == p.prompt() + "\nCorrect solution:\n\n" + p.solution() + \
        "\n\nCorrectly solve the original question."


def test_corpus_never_contains_test_rl_or_held_out_problems():
    s = splits(50, 50, 50, seed=0)
    held = {p.id for ps in s.values() for p in ps}
    corpus = build_corpus(400, seed=0)
    assert not held & {e.problem_id for e in corpus}
    for e in corpus:
        prompt = e.messages[1]["content"]
        assert all(p.prompt() not in prompt for p in s["hard"][:5])
    from sdpo.toy.corpus import _mutations  # noqa: F401 - module imports cleanly
    from sdpo.toy.generator import stream

    gen = stream(seed=0)
    for _ in range(200):
        p = next(gen)
        assert bucket(p.key) == "pretrain" and not held_out(p.signature)


def test_near_miss_really_fails_and_feedback_equals_the_code_env_on_the_real_program():
    from sdpo.envs.code import evaluate

    rng = random.Random(1)
    heads = set()
    for i in range(24):
        p = generate_problem(rng, depth=1 + i % 3, family="list" if i % 4 else "str")
        wrong = near_miss(p, rng)
        assert wrong is not None
        code = wrong.response.removeprefix("```python\n").removesuffix("\n```")
        results = run_program(code, p.inputs)
        # the in-process semantics agree with running the program
        for r, (out, err) in zip(results, wrong.results, strict=True):
            assert (r["error"] is None) == (err is None)
            if err is None:
                assert r["stdout"] == out
        assert any(r["error"] is not None or r["stdout"] != exp for r, exp in zip(results, p.outputs, strict=True))
        fb = feedback_text(p, wrong)
        heads.add(fb.split(" on ")[0])
        if i < 8:  # the sandboxed environment writes exactly the same text for the real program
            assert evaluate(wrong.response, p.tests(), code_feedback="first_failure").feedback == fb
    assert heads == {"Your code produced a wrong answer"}
    # the unguarded aggregate raises on the empty list: a runtime error, reported like the environment does
    from sdpo.toy.corpus import attempt
    from sdpo.toy.generator import Op, ToyProblem, run_ops

    ops = (Op("even"), Op("max"))
    inputs = ["2 4 1\n", "1 3\n", "6\n"]
    p = ToyProblem("list", ops, inputs, [run_ops("list", ops, x) for x in inputs])
    wrong = attempt(p, (Op("even"), Op("max!")))
    fb = feedback_text(p, wrong)
    assert fb.startswith("Your code raised a runtime error on test 2 of 3.")
    assert "ValueError" in fb and "(line 3 of your code)" in fb
    assert evaluate(wrong.response, p.tests(), code_feedback="first_failure").feedback == fb


def test_correct_attempt_has_no_feedback():
    from sdpo.toy.corpus import attempt

    p = generate_problem(random.Random(2), depth=2)
    assert feedback_text(p, attempt(p, p.ops)) == ""


def test_encode_puts_loss_on_assistant_tokens_only(tiny_model_path):
    from sdpo.models import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    ex = build_corpus(5, seed=0)[0]
    ids, labels = encode(tok, ex)
    assert len(ids) == len(labels)
    target = [t for t in labels if t != -100]
    assert tok.decode(target) == ex.response + "<|im_end|>"
    n_prompt = labels.index(next(t for t in labels if t != -100))
    assert tok.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    assert ids[-1] == tok.eos_token_id
