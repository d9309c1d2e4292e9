import json
import subprocess
import sys

import pytest

from sdpo.data.tasks import Task
from sdpo.envs import score, score_many

MCQ = Task(id="m", messages=[{"role": "user", "content": "Q"}], kind="mcq", answer="C")
TOOL = Task(id="t", messages=[{"role": "user", "content": "Q"}], kind="tooluse",
            answer=[{"Action": "f", "Action_Input": '{"x": 1}'}])
TESTS = {"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"], "testtype": "stdin"}
CODE = Task(id="c", messages=[{"role": "user", "content": "Double n."}], kind="code", tests=TESTS)
DOUBLE = "```python\nprint(2 * int(input()))\n```"
SQUARE = "```python\nn = int(input())\nprint(n * n)\n```"


def test_import_is_cheap():
    code = "import sys, sdpo.envs; print(sorted(m for m in sys.modules if m.startswith('sdpo.envs')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == ["sdpo.envs", "sdpo.envs.base"]


def test_mcq_and_tooluse_dispatch():
    assert score(MCQ, "<answer>(C)</answer>").reward == 1.0
    assert score(MCQ, "<answer>B</answer>").feedback is None
    assert score(TOOL, 'Action: f\nAction Input: {"x": 1}').reward == 1.0
    wrong = 'Action: f\nAction Input: {"x": 2}'
    assert score(TOOL, wrong).feedback is None
    assert score(TOOL, wrong, tooluse_feedback=True).feedback == "Action input 'x' is 2; expected 1"


def test_unknown_kind_and_code_without_tests():
    with pytest.raises(ValueError, match="unknown kind 'essay'"):
        score(Task(id="x", messages=[], kind="essay"), "")
    with pytest.raises(ValueError, match="needs tests"):
        score(Task(id="x", messages=[], kind="code"), DOUBLE)


def test_code_dispatch_with_sparse_dense_and_override():
    assert score(CODE, DOUBLE).reward == 1.0
    sq = score(CODE, SQUARE, sparse=False)  # 2*2 == 2**2 passes, 5 fails
    assert (sq.reward, sq.passed, sq.total) == (0.5, 1, 2) and sq.feedback
    assert score(CODE, SQUARE).reward == 0.0
    only_first = {"inputs": ["2\n"], "outputs": ["4\n"], "testtype": "stdin"}
    assert score(CODE, SQUARE, tests=only_first).reward == 1.0


def test_score_many_keeps_order_across_kinds():
    tasks = [CODE, MCQ, CODE, TOOL, CODE]
    responses = [DOUBLE, "<answer>C</answer>", SQUARE, "nothing", "no code block here"]
    scores = score_many(tasks, responses, [False, False, False, False, True])
    assert [s.reward for s in scores] == [1.0, 1.0, 0.0, 0.0, 0.0]
    # each equals the one-at-a-time score
    singles = [score(t, r, truncated=(i == 4)) for i, (t, r) in enumerate(zip(tasks, responses, strict=True))]
    assert [(s.reward, s.passed, s.total, s.feedback) for s in scores] == [
        (s.reward, s.passed, s.total, s.feedback) for s in singles]
    with pytest.raises(ValueError, match="responses"):
        score_many(tasks, responses[:2])
    with pytest.raises(ValueError, match="truncated"):
        score_many(tasks, responses, [False])
