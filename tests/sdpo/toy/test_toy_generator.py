import json
import random

import pytest

from sdpo.data.tasks import Task
from sdpo.toy.generator import (
    PRIMITIVES,
    ToyProblem,
    bucket,
    generate_problem,
    held_out,
    outputs_match,
    run_program,
    splits,
    write_split,
)


def _rows(ps):
    return [p.to_row(i) for i, p in enumerate(ps)]


def test_splits_are_deterministic_given_seed():
    a = splits(20, 10, 10, seed=0)
    b = splits(20, 10, 10, seed=0)
    c = splits(20, 10, 10, seed=1)
    for name in a:
        assert _rows(a[name]) == _rows(b[name])
    assert _rows(a["train"]) != _rows(c["train"])


def _covering_problems() -> list[ToyProblem]:
    """Problems until every generatable primitive has been used at least twice."""
    rng = random.Random(7)
    need = {n: 2 for n, p in PRIMITIVES.items() if p.kind != "bug"}
    out = []
    while any(v > 0 for v in need.values()):
        p = generate_problem(rng, depth=rng.randint(1, 4))
        if any(need[op.name] > 0 for op in p.ops):
            for op in p.ops:
                need[op.name] -= 1
            out.append(p)
    return out


def test_every_reference_solution_passes_its_own_tests_when_run():
    problems = _covering_problems() + [p for ps in splits(10, 10, 10, seed=0).values() for p in ps]
    assert len(problems) > 30
    for p in problems:
        assert len(p.inputs) == len(p.outputs) >= 3
        results = run_program(p.solution_code(), p.inputs)
        for r, exp in zip(results, p.outputs, strict=True):
            assert r["error"] is None, (p.key, r)
            assert r["stdout"] == exp, (p.key, r["stdout"], exp)


def test_statement_lists_every_step_and_prompt_asks_for_python_block():
    rng = random.Random(0)
    p = generate_problem(rng, depth=3, family="list")
    lines = p.statement().splitlines()
    assert lines[0].startswith("Read one line of space-separated integers")
    for i, op in enumerate(p.ops, 1):
        assert lines[i] == f"{i}. {op.text()}"
    assert "```python" in p.prompt()
    assert p.solution().startswith("```python\n") and p.solution().endswith("\n```")
    # one line of code per step
    assert len(p.solution_code().splitlines()) == 1 + p.depth + (0 if p.final else 1)


def test_tests_distinguish_every_step():
    # dropping any single step changes at least one expected output
    from sdpo.toy.generator import run_ops

    for p in splits(0, 20, 20, seed=3)["hard"] + splits(0, 20, 0, seed=3)["test"]:
        for i in range(p.depth):
            rest = p.ops[:i] + p.ops[i + 1:]
            assert [run_ops(p.family, rest, x) for x in p.inputs] != p.outputs


def test_held_out_hard_set_is_disjoint_from_training_compositions():
    s = splits(200, 100, 100, seed=0)
    hard_sigs = {p.signature for p in s["hard"]}
    assert {p.depth for p in s["hard"]} == {3, 4}
    assert all(held_out(sig) for sig in hard_sigs)
    for name in ("train", "test"):
        assert not hard_sigs & {p.signature for p in s[name]}
        assert max(p.depth for p in s[name]) <= 3
    assert all(bucket(p.key) == "rl" for p in s["train"])
    assert all(bucket(p.key) == "test" for p in s["test"])
    keys = [p.key for ps in s.values() for p in ps]
    assert len(keys) == len(set(keys))
    # depth-3 signatures are split between training and held-out
    from itertools import product

    d3 = ["list|" + ",".join(c) for c in product(["add", "even", "sort", "rev", "take"], repeat=2)]
    flags = [held_out(sig + ",sum") for sig in d3]
    assert any(flags) and not all(flags)


def test_write_split_rows_load_as_tasks(tmp_path):
    paths = write_split(tmp_path, n_train=6, n_test=4, seed=0, n_hard=3)
    assert sorted(paths) == ["hard", "test", "train"]
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert len(rows) == 6
    row = rows[0]
    assert row["kind"] == "code" and isinstance(row["tests"], str) and row["system"]
    spec = json.loads(row["tests"])
    assert spec["testtype"] == "stdin" and len(spec["inputs"]) == len(spec["outputs"])
    from sdpo.data.lasgroup import load_jsonl

    tasks = load_jsonl(paths["hard"])
    assert len(tasks) == 3 and all(isinstance(t, Task) and t.kind == "code" for t in tasks)
    assert tasks[0].messages[-1]["content"] == json.loads(paths["hard"].read_text().splitlines()[0])["prompt"]
    with pytest.raises(ValueError, match="n_test"):
        write_split(tmp_path, n_train=1, n_test=-1)


def test_to_task_has_system_user_messages_and_test_spec():
    from sdpo.envs.code import TestSpec

    p = splits(1, 0, 0, seed=0)["train"][0]
    t = p.to_task()
    assert [m["role"] for m in t.messages] == ["system", "user"]
    assert isinstance(t.tests, TestSpec) and t.tests.inputs == p.inputs and t.tests.outputs == p.outputs
    assert t.meta["difficulty"] == p.depth


def test_run_program_reports_wrong_output_errors_and_timeouts():
    r = run_program("xs = list(map(int, input().split()))\nprint(max(xs))", ["1 5 2\n", "\n"])
    assert r[0] == {"stdout": "5\n", "error": None}
    assert r[1]["error"].startswith("ValueError")
    assert run_program("print(", ["\n"])[0]["error"].startswith("SyntaxError")
    assert run_program("while True: pass", ["\n"], timeout=1)[0]["error"] == "Time Limit Exceeded"
    assert outputs_match("1 2  \n", "1 2") and not outputs_match("1 2\n", "2 1\n")
