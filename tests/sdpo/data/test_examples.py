"""The built-in example problems: valid problems with public and hidden tests, a reference solution that passes
all of them in the code environment's sandbox, the toy world's own prompt, and a folder that is a dataset."""

from __future__ import annotations

import json

from sdpo.data import examples as E
from sdpo.data.lasgroup import load_jsonl
from sdpo.data.problem import Problem
from sdpo.envs.code import evaluate
from sdpo.toy.generator import response_for, splits


def test_examples_are_toy_easy_classic_and_toy_hard_each_with_public_and_hidden_tests():
    problems = [Problem.parse(p) for p in E.example_problems()]
    groups = [p.meta["difficulty"] if p.meta["source"] == "toyworld" else "classic" for p in problems]
    n_classic = len(E.CLASSIC_SOLUTIONS)
    assert groups == ["easy"] * E.N_EASY + ["classic"] * n_classic + ["hard"] * E.N_HARD
    assert n_classic >= 3
    assert len({p.title for p in problems}) == len({p.id for p in problems}) == len(problems)
    for p in problems:
        assert len(p.tests) >= 3 and p.hidden_tests is not None and len(p.hidden_tests) >= 5
        assert "solution" not in json.dumps(p.meta)


def test_every_reference_solution_passes_public_and_hidden_tests_in_the_sandbox_and_a_wrong_one_does_not():
    s = splits(0, E.N_EASY, E.N_HARD, seed=0)
    toy = {p.id: p.solution_code() for p in s["test"] + s["hard"]}
    for obj in E.example_problems():
        p = Problem.parse(obj)
        code = toy[p.id] if p.meta["source"] == "toyworld" else E.CLASSIC_SOLUTIONS[p.title]
        for spec in (p.tests, p.hidden_tests):
            result = evaluate(response_for(code), spec, sparse=True).score()
            assert result.reward == 1.0, (p.title, result.feedback)
        wrong = evaluate(response_for("print(input())"), p.hidden_tests, sparse=True).score()
        assert wrong.reward == 0.0, p.title


def test_toy_examples_are_prompted_exactly_as_the_toy_world_and_the_demo_model_was_trained():
    s = splits(0, E.N_EASY, E.N_HARD, seed=0)
    by_id = {p.id: p for p in s["test"] + s["hard"]}
    toy = [Problem.parse(p) for p in E.example_problems() if p["meta"]["source"] == "toyworld"]
    assert len(toy) == E.N_EASY + E.N_HARD
    for p in toy:
        src = by_id[p.id]
        assert p.to_task().messages == src.messages()
        assert p.hidden_tests.inputs == src.inputs and p.tests.inputs == src.inputs[:E.N_PUBLIC]
    classic = [Problem.parse(p) for p in E.example_problems() if p["meta"]["source"] == "classic"]
    assert all(p.to_task().messages[0] == s["test"][0].messages()[0] for p in classic)


def test_write_examples_gives_a_dataset_folder_with_the_problems_and_toy_train_and_test_splits(tmp_path):
    out = E.write_examples(tmp_path / "examples")
    lines = (out / "problems.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == E.example_problems()
    train, test = load_jsonl(out / "train.jsonl"), load_jsonl(out / "test.jsonl")
    assert (len(train), len(test)) == (E.N_TRAIN, E.N_TEST)
    assert {t.meta["dataset"] for t in train + test} == {"toyworld"}
    assert not {t.messages[-1]["content"] for t in train} & {t.messages[-1]["content"] for t in test}
    before = (out / "train.jsonl").read_bytes()
    E.write_examples(out)  # rewriting is idempotent and leaves no temporary file
    assert (out / "train.jsonl").read_bytes() == before
    assert sorted(x.name for x in out.iterdir()) == ["problems.jsonl", "test.jsonl", "train.jsonl"]
