"""bench/discovery.py: problem files with a bad line stop with a message naming the file and the line."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def discovery():
    spec = importlib.util.spec_from_file_location("bench_discovery", ROOT / "bench" / "discovery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOOD = {"title": "Double", "statement": "Read n, print 2n.",
        "tests": {"inputs": ["3\n"], "outputs": ["6\n"], "testtype": "stdin"}}
ROW = {"prompt": "Read n, print 2n.", "kind": "code",
       "tests": json.dumps({"inputs": ["3\n"], "outputs": ["6\n"], "testtype": "stdin"})}


@pytest.mark.parametrize("bad, message", [
    ('{"title": "Double", ', r":3: invalid JSON \(.* at column \d+\)$"),
    ("[1, 2]", r":3: expected a JSON object \(a problem\), got list$"),
    (json.dumps({**GOOD, "title": ""}), r":3: title: "),
    (json.dumps({**ROW, "kind": "essay"}), r":3: field 'kind': got 'essay'"),
])
def test_a_bad_line_names_file_and_line(discovery, tmp_path, bad, message):
    f = tmp_path / "problems.jsonl"
    f.write_text(json.dumps(GOOD) + "\n\n" + bad + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(SystemExit) as e:
        discovery.load_tasks(str(f))
    text = str(e.value.code)
    assert text.startswith(f"{f}:3: ") and text.count(str(f)) == 1, text
    assert re.search(message, text), text


def test_good_lines_load_both_formats(discovery, tmp_path):
    f = tmp_path / "problems.jsonl"
    f.write_text(json.dumps(GOOD) + "\n" + json.dumps(ROW) + "\n")
    tasks = discovery.load_tasks(str(f))
    assert [t.kind for t in tasks] == ["code", "code"] and tasks[1].id == "problems:2"
    assert len(discovery.load_tasks(None)) == len(discovery.BUILTIN_PROBLEMS)
