import json

import pytest

from sdpo.data.lasgroup import row_to_task
from sdpo.data.problem import (
    CODE_SYSTEM_PROMPT,
    MAX_STATEMENT_BYTES,
    Problem,
    code_user_prompt,
    load_problem,
    parse_signature,
)
from sdpo.envs.code import TestSpec

TESTS = {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"], "testtype": "stdin", "time_limit": 6}
FUNC_TESTS = {"inputs": ["[1, 2]\n3"], "outputs": ["6"], "testtype": "functional", "fn_name": "scaledSum"}
STARTER = "class Solution:\n    def scaledSum(self, nums: List[int], k: int) -> int:\n        "


def _obj(**over):
    obj = {"title": "A plus B", "statement": "Read two integers and print their sum.", "tests": TESTS}
    obj.update(over)
    return obj


def test_parse_round_trip_and_json_string(tmp_path):
    p = Problem.parse(_obj(hidden_tests=dict(TESTS, inputs=["5 5\n"], outputs=["10\n"])))
    assert isinstance(p.tests, TestSpec) and p.tests.inputs == TESTS["inputs"]
    assert p.hidden_tests.outputs == ["10\n"]
    assert Problem.parse(json.dumps(p.to_dict())) == p
    (tmp_path / "p.json").write_text(json.dumps(p.to_dict()))
    assert load_problem(str(tmp_path / "p.json")) == p
    assert Problem.parse(json.dumps(_obj(tests=json.dumps(TESTS)))).tests == p.tests  # tests as JSON string


@pytest.mark.parametrize("obj, field", [
    ({"statement": "s", "tests": TESTS}, "title"),
    (_obj(title="  "), "title"),
    (_obj(title=3), "title"),
    (_obj(statement=""), "statement"),
    (_obj(statement=None), "statement"),
    ({"title": "t", "statement": "s"}, "tests"),
    (_obj(tests=dict(TESTS, inputs=[], outputs=[])), "tests.inputs"),
    (_obj(tests=dict(TESTS, outputs=["3\n"])), "tests.outputs"),
    (_obj(tests=dict(TESTS, inputs="1 2")), "tests.inputs"),
    (_obj(tests=dict(TESTS, testtype="interactive")), "tests.testtype"),
    (_obj(tests=dict(TESTS, time_limit=0)), "tests.time_limit"),
    (_obj(tests=dict(FUNC_TESTS, fn_name=None)), "tests.fn_name"),
    (_obj(tests="{oops"), "tests"),
    (_obj(tests=[1]), "tests"),
    (_obj(hidden_tests=dict(TESTS, outputs=[])), "hidden_tests.outputs"),
    (_obj(starter_code=5), "starter_code"),
    (_obj(system=["You are"]), "system"),
    (_obj(solution="print(1)"), "solution"),
])
def test_invalid_problems_name_the_field(obj, field):
    with pytest.raises(ValueError) as e:
        Problem.parse(obj)
    assert str(e.value).startswith(f"{field}:"), str(e.value)


def test_size_limits_have_precise_messages():
    with pytest.raises(ValueError, match=rf"statement: {MAX_STATEMENT_BYTES + 1} bytes of UTF-8; at most "
                                         rf"{MAX_STATEMENT_BYTES} are allowed"):
        Problem.parse(_obj(statement="x" * (MAX_STATEMENT_BYTES + 1)))
    Problem.parse(_obj(statement="x" * MAX_STATEMENT_BYTES))  # exactly at the limit is fine
    with pytest.raises(ValueError, match="statement: 100002 bytes"):  # counted in UTF-8 bytes
        Problem.parse(_obj(statement="é" * 50_001))
    with pytest.raises(ValueError, match="^problem: not valid JSON"):
        Problem.parse("{")
    with pytest.raises(ValueError, match="^problem: expected a JSON object"):
        Problem.parse("[]")


def test_signature_and_prompt_like_the_reference():
    assert parse_signature(STARTER) == "def scaledSum(nums: List[int], k: int) -> int:"
    two = "class Solution:\n    def helper(self):\n        pass\n    def main(\n        self, a,\n        b):\n"
    assert parse_signature(two, "main") == "def main(a, b):"
    assert parse_signature(two) == "def helper():"
    assert parse_signature("# no function here") is None
    prompt = code_user_prompt("Compute it.", STARTER)
    assert prompt == ("Compute it.\n\nYour solution should have the following signature:\n"
                      "```python\ndef scaledSum(nums: List[int], k: int) -> int:\n```")
    assert code_user_prompt("Compute it.\n", None) == "Compute it."


def test_to_task_and_back():
    p = Problem.parse(_obj(tests=FUNC_TESTS, starter_code=STARTER, id="q1", meta={"difficulty": "easy"}))
    task = p.to_task()
    assert task.id == "q1" and task.kind == "code" and task.tests == p.tests and task.hidden_tests is None
    assert task.messages[0] == {"role": "system", "content": CODE_SYSTEM_PROMPT}
    assert "```python" in CODE_SYSTEM_PROMPT
    assert task.messages[1]["content"].startswith(p.statement)
    assert "def scaledSum(nums: List[int], k: int) -> int:" in task.messages[1]["content"]
    assert Problem.from_task(task) == p


def test_from_lasgroup_row():
    row = {"idx": 5, "dataset": "lcb", "kind": "code", "prompt": "Print the sum.", "system": None,
           "tests": json.dumps(TESTS)}
    p = Problem.from_row(row)
    assert (p.title, p.statement, p.id, p.starter_code) == ("lcb/5", "Print the sum.", "lcb/5", None)
    assert p.tests == TestSpec.parse(TESTS)
    with pytest.raises(ValueError, match="^kind"):
        Problem.from_task(row_to_task({"prompt": "q", "kind": "mcq", "answer": "A"}))


def test_own_system_message_is_the_prompt_and_survives_every_conversion():
    """A problem with its own system message (the toy-world examples) is prompted with it, keeps it through
    JSON, Task and lasgroup-row conversions; the default one is not stored."""
    own = "You are a Python programmer. Answer with one ```python code block."
    p = Problem.parse(_obj(system=own, id="q2"))
    assert p.to_task().messages == [{"role": "system", "content": own},
                                    {"role": "user", "content": p.statement}]
    assert Problem.parse(json.dumps(p.to_dict())) == p and Problem.from_task(p.to_task()) == p
    row = {"idx": 1, "dataset": "toy", "kind": "code", "prompt": "Print it.", "system": own,
           "tests": json.dumps(TESTS)}
    assert Problem.from_row(row).to_task().messages[0]["content"] == own
    for default in (None, "  ", CODE_SYSTEM_PROMPT):
        q = Problem.parse(_obj(system=default))
        assert q.system is None and "system" not in q.to_dict()
        assert q.to_task().messages[0]["content"] == CODE_SYSTEM_PROMPT
