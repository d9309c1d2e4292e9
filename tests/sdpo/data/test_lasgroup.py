import json
from collections import Counter
from pathlib import Path

import pytest

from sdpo.config import ConfigError
from sdpo.data.lasgroup import (
    DatasetError,
    load_jsonl,
    load_split,
    row_to_task,
    split_tasks,
    split_tests,
    task_to_row,
    write_jsonl,
)
from sdpo.envs.code import TestSpec


def _shared_datasets() -> Path | None:
    for root in (Path(__file__).resolve().parents[3] / ".." / "shared", Path("/work/shared")):
        if (root / "datasets").is_dir():
            return root / "datasets"
    return None


def _code_row(idx: int, n_tests: int = 6, **extra) -> dict:
    tests = {"inputs": [f"{i}\n" for i in range(n_tests)], "outputs": [f"{2 * i}\n" for i in range(n_tests)],
             "testtype": "stdin", "fn_name": "", "time_limit": 6}
    return {"idx": idx, "dataset": "toy", "kind": "code", "prompt": f"Double the number ({idx}).",
            "system": None, "tests": json.dumps(tests), "answer": "", "elo": 1500, **extra}


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_code_mcq_and_tooluse_rows_become_tasks(tmp_path):
    rows = [
        _code_row(1),
        {"idx": 7, "dataset": "sciknoweval", "kind": "mcq", "prompt": "Q?", "system": "Use <answer>.",
         "answer": " B ", "tests": "-", "embedding": [0.1] * 5},
        {"idx": 9, "dataset": "tooluse", "kind": "tooluse", "prompt": "Call f.", "system": None, "tests": None,
         "answer": json.dumps([{"Action": "f", "Action_Input": '{"x": 1}'}])},
    ]
    code, mcq, tool = load_jsonl(_write(tmp_path / "d.jsonl", rows + [""]))
    assert code.id == "toy/1" and code.kind == "code"
    assert isinstance(code.tests, TestSpec) and len(code.tests) == 6 and code.tests.outputs[3] == "6\n"
    assert code.messages == [{"role": "user", "content": "Double the number (1)."}]
    assert code.meta == {"dataset": "toy", "elo": 1500, "idx": 1}
    assert mcq.messages[0] == {"role": "system", "content": "Use <answer>."} and mcq.answer == "B"
    assert "embedding" not in mcq.meta
    assert tool.answer == [{"Action": "f", "Action_Input": '{"x": 1}'}]


def test_tests_may_be_an_object_and_rows_round_trip(tmp_path):
    row = _code_row(3)
    row["tests"] = json.loads(row["tests"])
    task = row_to_task(row)
    again = row_to_task(json.loads(json.dumps(task_to_row(task))))
    assert again == task
    n = write_jsonl([task, task], tmp_path / "out" / "t.jsonl")
    assert n == 2 and load_jsonl(tmp_path / "out" / "t.jsonl") == [task, task]


@pytest.mark.parametrize("row, field", [
    ({"kind": "code", "tests": "{}"}, "prompt"),
    ({"prompt": "p", "kind": "essay"}, "kind"),
    ({"prompt": "p", "kind": "code", "tests": "-"}, "tests"),
    ({"prompt": "p", "kind": "code", "tests": '{"inputs": ["1"], "outputs": []}'}, "tests"),
    ({"prompt": "p", "kind": "code", "tests": "{not json"}, "tests"),
    ({"prompt": "p", "kind": "mcq", "answer": ""}, "answer"),
    ({"prompt": "p", "kind": "tooluse", "answer": "[1]"}, "answer"),
    ({"prompt": "p", "kind": "mcq", "answer": "A", "system": 3}, "system"),
])
def test_malformed_line_names_file_line_and_field(tmp_path, row, field):
    path = _write(tmp_path / "bad.jsonl", [_code_row(1), "", row])
    with pytest.raises(DatasetError) as e:
        load_jsonl(path)
    assert (e.value.line, e.value.field) == (3, field)
    assert str(e.value).startswith(f"{path}:3: field {field!r}")


def test_invalid_json_line(tmp_path):
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: field '<json>'"):
        load_jsonl(_write(tmp_path / "bad.jsonl", [_code_row(1), "{oops"]))


def test_split_tests_keeps_a_seeded_half_for_training():
    tasks = [row_to_task(_code_row(i, n_tests=n)) for i, n in enumerate([6, 7, 1, 2, 10])]
    train, test = split_tests(tasks, 0.5, seed=0)
    assert [t.id for t in train] == [t.id for t in test] == [t.id for t in tasks]
    assert test == tasks  # all tests for testing
    for full, tr in zip(tasks, train, strict=True):
        n = len(full.tests.inputs)
        assert len(tr.tests.inputs) == max(1, n // 2)
        pairs = list(zip(full.tests.inputs, full.tests.outputs, strict=True))
        kept = list(zip(tr.tests.inputs, tr.tests.outputs, strict=True))
        assert kept == [p for p in pairs if p in kept]  # a subset, original order, pairs intact
        assert tr.hidden_tests == full.tests
    # deterministic, independent of order, different for another seed
    again, _ = split_tests(tasks[::-1], 0.5, seed=0)
    assert {t.id: t.tests for t in again} == {t.id: t.tests for t in train}
    other, _ = split_tests(tasks, 0.5, seed=1)
    assert [t.tests for t in other] != [t.tests for t in train]
    with pytest.raises(ConfigError, match="fraction"):
        split_tests(tasks, 0.0)


def test_split_tests_leaves_non_code_tasks_alone():
    mcq = row_to_task({"prompt": "q", "kind": "mcq", "answer": "A", "idx": 1})
    train, test = split_tests([mcq], 0.5)
    assert train == test == [mcq]


def test_split_tasks_is_a_seeded_partition():
    tasks = [row_to_task(_code_row(i)) for i in range(20)]
    train, test = split_tasks(tasks, 0.1, seed=42)
    assert len(test) == 2 and len(train) == 18
    assert sorted(t.id for t in train + test) == sorted(t.id for t in tasks)
    assert [t.id for t in train] == [t.id for t in tasks if t not in test]  # input order kept
    assert split_tasks(tasks, 0.1, seed=42) == (train, test)
    assert split_tasks(tasks, 0.1, seed=43)[1] != test
    assert len(split_tasks(tasks, 0.25, seed=0)[1]) == 5
    with pytest.raises(ConfigError, match="test_fraction"):
        split_tasks(tasks, 1.0)


def test_real_shared_rows_load(tmp_path):
    root = _shared_datasets()
    if root is None:
        pytest.skip("shared datasets not available")
    mcq = load_jsonl(root / "sciknoweval_chemistry_test.jsonl")
    tool = load_jsonl(root / "tooluse_test.jsonl")
    assert len(mcq) == 210 and len(tool) == 68
    assert {t.kind for t in mcq} == {"mcq"} and {t.kind for t in tool} == {"tooluse"}
    assert set(Counter(t.answer for t in mcq)) == {"A", "B", "C", "D"}
    assert all(t.messages[0]["role"] == "system" and "<answer>" in t.messages[0]["content"] for t in mcq)
    assert all([m["role"] for m in t.messages] == ["user"] for t in tool)  # system is null there
    assert all(isinstance(t.answer, list) and t.answer for t in tool)
    assert len({t.id for t in mcq}) == 210
    train, test = load_split(root / "tooluse_test.jsonl", root / "sciknoweval_chemistry_test.jsonl")
    assert (len(train), len(test)) == (68, 210)
    # write + reload reproduces the tasks
    write_jsonl(mcq + tool, tmp_path / "all.jsonl")
    assert load_jsonl(tmp_path / "all.jsonl") == mcq + tool
