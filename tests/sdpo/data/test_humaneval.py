import gzip
import json

import pytest

from sdpo.data import humaneval
from sdpo.envs import score_many


@pytest.fixture(scope="module")
def problems():
    return humaneval.load()


def _fenced(code: str) -> str:
    return f"Here is the function.\n```python\n{code}\n```"


def test_load_bundled_dataset(problems):
    assert len(problems) == 164
    assert len({p.task_id for p in problems}) == 164
    raw = [json.loads(line) for line in gzip.open(humaneval.data_path(), "rt")]
    for p, row in zip(problems, raw, strict=True):
        assert p.task_id == row["task_id"]
        assert p.tests.testtype == "assert" and p.tests.fn_name == row["entry_point"]
        assert p.tests.assert_code == row["test"]
        assert p.canonical_solution == row["prompt"] + row["canonical_solution"]
        assert f"```python\n{row['prompt'].rstrip()}\n```" in p.prompt and "```python" in p.prompt
        compile(p.canonical_solution, p.task_id, "exec")  # full function source, prompt included
    task = problems[0].to_task()
    assert task.id == "HumanEval/0" and task.kind == "code" and task.tests is problems[0].tests
    assert [m["role"] for m in task.messages] == ["system", "user"]
    assert task.meta["canonical_solution"] == problems[0].canonical_solution


@pytest.mark.slow
def test_all_canonical_solutions_pass_and_return_none_mutants_fail(problems):
    tasks = [p.to_task() for p in problems]
    good = score_many(tasks, [_fenced(p.canonical_solution) for p in problems])
    failing = [(p.task_id, s.feedback) for p, s in zip(problems, good, strict=True) if s.reward != 1.0]
    assert failing == []
    mutants = [_fenced(p.code_prompt + "    return None\n") for p in problems]
    bad = score_many(tasks, mutants)
    passing = [p.task_id for p, s in zip(problems, bad, strict=True) if s.reward != 0.0 or not s.feedback]
    assert passing == []
