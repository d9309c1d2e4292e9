import base64
import json
import pickle
import pickletools
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdpo.cli import app
from sdpo.data import lcb
from sdpo.data.lasgroup import load_split
from sdpo.data.lcb import LcbError, decode_test_cases, find_problem, import_lcb, row_to_task, unpickle_str
from sdpo.data.problem import Problem


def encode_private(cases: list[dict], protocol: int = 4) -> str:
    """LiveCodeBench's private-test encoding: base64(zlib(pickle(json string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases), protocol=protocol))).decode()


def _case(i: str, o: str, t: str = "stdin") -> dict:
    return {"input": i, "output": o, "testtype": t}


def stdin_row(qid="abc301_a", date="2024-03-02T00:00:00", private_encoded=False) -> dict:
    private = [_case(f"{a} {b}\n", f"{a + b}\n") for a, b in [(10, 20), (-5, 5), (10**18, 10**18)]]
    return {
        "question_title": "Add Two", "platform": "atcoder", "question_id": qid, "contest_id": "abc301",
        "contest_date": date, "starter_code": "", "difficulty": "easy",
        "question_content": "Given integers A and B, print A+B.\n\nSample Input 1\n\n1 2\n\nSample Output 1\n\n3",
        "public_test_cases": json.dumps([_case("1 2\n", "3\n")]),
        "private_test_cases": encode_private(private) if private_encoded else json.dumps(private),
        "metadata": "{}",
    }


def functional_row(qid="3000", date="2025-03-10T00:00:00", private_encoded=True, protocol=4) -> dict:
    cases = [(([1, 2], 3), 9), (([], 5), 0), (([-1, 4, 7], 2), 20), (([5], 1), 5)]
    as_tests = [_case(f"{json.dumps(a)}\n{json.dumps(k)}", json.dumps(out), "functional") for (a, k), out in cases]
    return {
        "question_title": "Scaled sum", "platform": "leetcode", "question_id": qid, "contest_id": "weekly-400",
        "contest_date": date, "difficulty": "medium",
        "starter_code": "class Solution:\n    def scaledSum(self, nums: List[int], k: int) -> int:\n        ",
        "question_content": "Return k times the sum of nums.",
        "public_test_cases": json.dumps(as_tests[:1]),
        "private_test_cases": encode_private(as_tests[1:], protocol) if private_encoded else json.dumps(as_tests[1:]),
        "metadata": json.dumps({"func_name": "scaledSum"}),
    }


STDIN_SOLUTION = "Sum it.\n```python\nimport sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n```"
FUNCTIONAL_SOLUTION = ("```python\nfrom typing import List\nclass Solution:\n"
                       "    def scaledSum(self, nums: List[int], k: int) -> int:\n        return k * sum(nums)\n```")
PLAIN_FUNCTION_SOLUTION = "```python\ndef scaledSum(nums, k):\n    return k * sum(nums)\n```"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class _Hostile:
    """Unpickling this would create a file (a stand-in for arbitrary code execution)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_both_private_encodings_decode_to_the_same_cases():
    cases = [_case("1\n", "2\n"), _case("x y\n", "z\n")]
    assert decode_test_cases(json.dumps(cases)) == cases
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert decode_test_cases(encode_private(cases, protocol)) == cases
    assert decode_test_cases("") == []


def test_stdin_and_functional_rows_become_tasks():
    t = row_to_task(stdin_row(private_encoded=True))
    assert t.id == "livecodebench/abc301_a" and t.kind == "code"
    assert t.tests.testtype == "stdin" and t.tests.time_limit == 6.0 and t.tests.fn_name is None
    assert t.tests.inputs == ["1 2\n", "10 20\n", "-5 5\n", f"{10**18} {10**18}\n"]  # public + private
    assert t.messages[0]["role"] == "system" and "```python" in t.messages[0]["content"]
    assert t.messages[1]["content"] == stdin_row()["question_content"]
    assert t.meta["contest_date"] == "2024-03-02T00:00:00" and t.meta["platform"] == "atcoder"

    f = row_to_task(functional_row())
    assert (f.tests.testtype, f.tests.fn_name, len(f.tests)) == ("functional", "scaledSum", 4)
    assert f.tests.inputs[0] == "[1, 2]\n3" and f.tests.outputs[0] == "9"
    assert f.messages[1]["content"].endswith(
        "Your solution should have the following signature:\n```python\n"
        "def scaledSum(nums: List[int], k: int) -> int:\n```")


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Hostile(str(marker)))
    assert any(op.name in ("STACK_GLOBAL", "GLOBAL") for op, _, _ in pickletools.genops(payload))
    row = functional_row(qid="evil42")
    row["private_test_cases"] = base64.b64encode(zlib.compress(payload)).decode()
    with pytest.raises(LcbError, match=r"question_id evil42\): field 'private_test_cases': pickle opcode"):
        row_to_task(row, where="f.jsonl:7")
    with pytest.raises(LcbError, match=r"^f\.jsonl:7 "):
        row_to_task(row, where="f.jsonl:7")
    assert not marker.exists()
    # the unpickler alone refuses globals too (defence in depth)
    with pytest.raises(pickle.UnpicklingError):
        lcb._StrOnlyUnpickler(__import__("io").BytesIO(payload)).load()
    assert not marker.exists()


@pytest.mark.parametrize("obj", [b"bytes", ["a", "list"], {"a": 1}, 42, ("x", "y")])
def test_pickles_of_anything_but_one_str_are_refused(obj):
    with pytest.raises(ValueError):
        unpickle_str(pickle.dumps(obj))
    row = stdin_row(qid="q9")
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(obj))).decode()
    with pytest.raises(LcbError, match="q9"):
        row_to_task(row)


@pytest.mark.parametrize("value, message", [
    ("@@not base64@@", "neither a JSON list nor valid base64"),
    (base64.b64encode(b"not zlib").decode(), "not zlib data"),
    (base64.b64encode(zlib.compress(pickle.dumps("not json"))).decode(), "decoded payload is not JSON"),
    (base64.b64encode(zlib.compress(b"garbage")).decode(), "pickle"),
    ('[{"input": 1, "output": "2"}]', "case 0"),
])
def test_corrupt_private_tests_name_the_row(value, message):
    row = stdin_row(qid="q7")
    row["private_test_cases"] = value
    with pytest.raises(LcbError, match="question_id q7") as e:
        row_to_task(row)
    assert message in str(e.value)


def test_other_bad_rows():
    row = functional_row()
    row["metadata"] = "{}"
    with pytest.raises(LcbError, match="'metadata': functional tests need metadata.func_name"):
        row_to_task(row)
    row = stdin_row()
    row["contest_date"] = "yesterday"
    with pytest.raises(LcbError, match="'contest_date'"):
        row_to_task(row)
    row = stdin_row()
    row["public_test_cases"] = json.dumps([_case("1\n", "1\n", "functional")])
    with pytest.raises(LcbError, match="testtype"):
        row_to_task(row)


def test_import_splits_by_tests_by_default_and_by_date_with_cutoff(tmp_path):
    rows = [stdin_row("a1", "2024-12-01T00:00:00"), functional_row("f1", "2025-02-01T00:00:00"),
            stdin_row("a2", "2025-04-01T00:00:00", private_encoded=True), stdin_row("a3", "2025-06-01T00:00:00")]
    src = _write(tmp_path / "test.jsonl", rows)
    dup = _write(tmp_path / "test2.jsonl", rows[:1])

    s = import_lcb([src, dup], tmp_path / "out", since="2024-06-01", until="2025-05-01")
    assert (s.rows, s.duplicates, s.train, s.test, s.problems) == (3, 1, 3, 3, 3)
    train, test = load_split(tmp_path / "out" / "train.jsonl", tmp_path / "out" / "test.jsonl")
    assert [t.id for t in train] == [t.id for t in test] == ["livecodebench/a1", "livecodebench/f1",
                                                              "livecodebench/a2"]
    assert [len(t.tests) for t in test] == [4, 4, 4]
    assert [len(t.tests) for t in train] == [2, 2, 2]
    assert all(t.hidden_tests is None for t in train)
    problems = [Problem.parse(line) for line in (tmp_path / "out" / "problems.jsonl").read_text().splitlines()]
    for p, tr, te in zip(problems, train, test, strict=True):
        assert p.tests == tr.tests and p.hidden_tests == te.tests and p.id == te.id
    assert problems[1].starter_code.startswith("class Solution")

    s = import_lcb([src], tmp_path / "dated", cutoff="2025-02-01")
    assert (s.rows, s.train, s.test) == (4, 1, 3)
    train, test = load_split(tmp_path / "dated" / "train.jsonl", tmp_path / "dated" / "test.jsonl")
    assert [t.id for t in train] == ["livecodebench/a1"] and len(train[0].tests) == 4

    # a bad row anywhere: error, and the previous import in that directory is left as it was
    before = {p.name: p.read_text() for p in (tmp_path / "dated").iterdir()}
    bad = stdin_row("zz")
    bad["private_test_cases"] = "[{"
    with pytest.raises(LcbError, match=r"test3.jsonl:2 \(question_id zz\)"):
        import_lcb([src, _write(tmp_path / "test3.jsonl", [stdin_row("a9"), bad])], tmp_path / "dated")
    assert {p.name: p.read_text() for p in (tmp_path / "dated").iterdir()} == before


def test_find_problem(tmp_path):
    src = _write(tmp_path / "t.jsonl", [stdin_row("a1"), functional_row("f1")])
    p = find_problem([src], "f1")
    assert p.title == "Scaled sum" and p.tests.fn_name == "scaledSum" and len(p.hidden_tests) == 4
    assert p.to_task().messages[1]["content"].startswith("Return k times the sum of nums.")
    with pytest.raises(KeyError, match="nope"):
        find_problem([src], "nope")


def test_cli_import_lcb(tmp_path):
    src = _write(tmp_path / "test.jsonl", [stdin_row("a1"), functional_row("f1")])
    runner = CliRunner()
    r = runner.invoke(app, ["data", "import-lcb", str(src), "--out", str(tmp_path / "o"), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert "train.jsonl: 2 problems, 4 tests" in r.output and "test.jsonl: 2 problems, 8 tests" in r.output
    assert (tmp_path / "o" / "problems.jsonl").read_text().count("\n") == 2

    r = runner.invoke(app, ["data", "import-lcb", str(src), "--out", str(tmp_path / "o"), "--since", "soon"])
    assert r.exit_code == 2 and "--since" in r.output
    r = runner.invoke(app, ["data", "import-lcb", str(src), "--out", str(tmp_path / "o"), "--split-tests", "0"])
    assert r.exit_code == 2 and "--split-tests: got 0.0" in r.output
    r = runner.invoke(app, ["data", "import-lcb", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such file" in r.output
    bad = functional_row("evil")
    bad["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(_Hostile(str(tmp_path / "x"))))).decode()
    r = runner.invoke(app, ["data", "import-lcb", str(_write(tmp_path / "bad.jsonl", [bad])), "--out",
                            str(tmp_path / "b")])
    assert r.exit_code == 2 and "bad.jsonl:1 (question_id evil)" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()


def test_imported_problems_pass_with_reference_solutions_and_fail_with_wrong_ones(tmp_path):
    from sdpo.envs import code

    src = _write(tmp_path / "t.jsonl", [stdin_row("a1", private_encoded=True), functional_row("f1")])
    import_lcb([src], tmp_path / "o")
    _, test = load_split(tmp_path / "o" / "train.jsonl", tmp_path / "o" / "test.jsonl")
    stdin_task, func_task = test
    ok = code.evaluate(STDIN_SOLUTION, stdin_task.tests)
    assert (ok.reward, ok.passed, ok.total) == (1.0, 4, 4), ok.feedback
    for solution in (FUNCTIONAL_SOLUTION, PLAIN_FUNCTION_SOLUTION):
        ok = code.evaluate(solution, func_task.tests)
        assert (ok.reward, ok.passed, ok.total) == (1.0, 4, 4), ok.feedback
    wrong = code.evaluate(STDIN_SOLUTION.replace("a + b", "a - b"), stdin_task.tests, sparse=False)
    assert wrong.reward < 1.0 and wrong.feedback
    wrong = code.evaluate(PLAIN_FUNCTION_SOLUTION.replace("k * sum", "sum"), func_task.tests)
    assert wrong.reward == 0.0 and wrong.feedback


def test_oversized_statement_is_a_row_error(tmp_path):
    row = stdin_row("big")
    row["question_content"] = "x" * 100_001
    with pytest.raises(LcbError, match="question_id big: not a valid problem: statement: 100001 bytes"):
        import_lcb([_write(tmp_path / "t.jsonl", [row])], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_every_module_constant_is_used():
    """The module's constants are all in use (the documented v6 window is a since/until pair, not a preset)."""
    import ast

    src = Path(lcb.__file__).read_text()
    tree = ast.parse(src)
    defined = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
               if isinstance(t, ast.Name) and t.id.lstrip("_").isupper()]
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert defined and [n for n in defined if n not in used] == []


def test_reference_prompt_is_one_user_message_with_the_reference_code_prompt(tmp_path):
    """``prompt="reference"``: the reference's CODE_PROMPT around the statement and its signature line, as the
    only message (no system prompt), in train/test rows, in problems (meta.prompt) and from find_problem."""
    from sdpo.data.lasgroup import load_jsonl
    from sdpo.data.problem import Problem

    t = row_to_task(functional_row(), prompt="reference")
    assert len(t.messages) == 1 and t.messages[0]["role"] == "user"
    content = t.messages[0]["content"]
    assert content.startswith("You are a coding expert. You will be given a coding problem, and you need to write "
                              "a correct Python program that matches the specification and passes all tests.")
    assert content.endswith("enclosed with ``` ```.\n\nReturn k times the sum of nums.\n\nYour solution should have "
                            "the following signature: ```python\ndef scaledSum(nums: List[int], k: int) -> int:\n```")
    stdin = row_to_task(stdin_row(), prompt="reference").messages[0]["content"]
    assert stdin.endswith("```.\n\n" + stdin_row()["question_content"])  # no signature line without starter code
    assert row_to_task(functional_row()).messages[0]["role"] == "system"  # ours stays the default

    src = _write(tmp_path / "t.jsonl", [stdin_row("a1"), functional_row("f1")])
    import_lcb([src], tmp_path / "o", prompt="reference")
    for name in ("train", "test"):
        rows = load_jsonl(tmp_path / "o" / f"{name}.jsonl")
        assert [len(r.messages) for r in rows] == [1, 1] and rows[1].messages[0]["content"] == content
    problem = Problem.parse((tmp_path / "o" / "problems.jsonl").read_text().splitlines()[1])
    assert problem.meta["prompt"] == "reference" and problem.to_task().messages[0]["content"] == content
    assert find_problem([src], "f1", prompt="reference").to_task().messages[0]["content"] == content
    with pytest.raises(LcbError, match="^prompt: got 'theirs'"):
        import_lcb([src], tmp_path / "p", prompt="theirs")
    r = CliRunner().invoke(app, ["data", "import-lcb", str(src), "--out", str(tmp_path / "c"), "--prompt", "x"])
    assert r.exit_code == 2 and "--prompt: got 'x'" in r.output
