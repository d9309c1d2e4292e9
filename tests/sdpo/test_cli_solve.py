"""``sdpo solve``: the files it writes, and exit code 2 naming the field for bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sdpo.cli import app

PROBLEM = {"title": "Double", "statement": "Read an integer n from stdin and print 2n.",
           "tests": {"inputs": ["3\n", "5\n"], "outputs": ["6\n", "10\n"], "testtype": "stdin"},
           "hidden_tests": {"inputs": ["7\n"], "outputs": ["14\n"], "testtype": "stdin"}}
FAST = ["--set", "max_new_tokens=8", "--set", "n=2"]


def _write(tmp_path, obj, name="p.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def test_solve_writes_result_and_attempts(tiny_model_path, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["solve", "--problem", _write(tmp_path, PROBLEM), "--strategy", "best_of_k",
                                 "--budget", "3", "--model", str(tiny_model_path), "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    assert "no solution found in 3 attempts" in r.output
    result = json.loads((out / "result.json").read_text())
    assert set(result) == {"strategy", "budget", "attempts_used", "discovered_at", "solution", "rounds"}
    assert (result["strategy"], result["budget"], result["attempts_used"]) == ("best_of_k", 3, 3)
    assert result["discovered_at"] is None and result["solution"] is None and len(result["rounds"]) == 2
    lines = [json.loads(x) for x in (out / "attempts.jsonl").read_text().splitlines()]
    assert [(a["attempt"], a["round"], a["index"]) for a in lines] == [(1, 0, 0), (2, 0, 1), (3, 1, 0)]
    for a in lines:
        assert set(a) == {"attempt", "round", "index", "reward", "passed", "total", "hidden_passed",
                          "hidden_total", "feedback", "code"}
        assert a["total"] == 2 and a["reward"] == 0.0 and a["feedback"]


def test_solve_reads_set_values_as_the_user_means_them_and_sizes_the_rest(tiny_model_path, tmp_path):
    """``--set lr=1e-5`` is a number (YAML 1.1 alone reads it as text); unset settings fit the demo model."""
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["solve", "--problem", _write(tmp_path, PROBLEM), "--strategy", "best_of_k",
                                 "--model", str(tiny_model_path), "--out", str(out), "--set", "lr=1e-5",
                                 "--set", "temperature=.9", "--set", "budget=2", "--set", "max_new_tokens=1e1"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (out / "attempts.jsonl").read_text().splitlines()]
    assert [a["attempt"] for a in lines] == [1, 2]  # budget 2 of a round of n = 4 (the CPU-sized default)
    result = json.loads((out / "result.json").read_text())
    assert result["budget"] == 2 and result["rounds"][0]["ttt/attempts"] == 2.0


@pytest.mark.parametrize("args, text", [
    (["--budget", "1000000000000"], "error: budget: got 1000000000000; must be <= 100000"),
    (["--set", "max_new_tokens=99999999"], "error: max_new_tokens: got 99999999; must be <= 131072"),
])
def test_typos_over_the_limits_exit_2_naming_the_field(tiny_model_path, tmp_path, args, text):
    r = CliRunner().invoke(app, ["solve", "--problem", _write(tmp_path, PROBLEM), "--model", str(tiny_model_path),
                                 "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and text in r.output, r.output


def test_solve_sdpo_saves_the_adapter(tiny_model_path, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["solve", "--problem", _write(tmp_path, PROBLEM), "--budget", "2",
                                 "--model", str(tiny_model_path), "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "result.json").read_text())["strategy"] == "sdpo"
    # teacher.jsonl: what the self-teacher said about each attempt, numbered as in attempts.jsonl
    views = [json.loads(x) for x in (out / "teacher.jsonl").read_text().splitlines()]
    assert [(v["attempt"], v["round"], v["index"]) for v in views] == [(1, 0, 0), (2, 0, 1)]
    for v in views:  # the tiny model fails: its own feedback is each attempt's teacher context
        assert v["distilled"] and v["feedback"] and v["demonstration"] is None and v["context"]
        assert len(v["credit"]["tokens"]) == len(v["credit"]["teacher_logprobs"]) > 0


@pytest.mark.parametrize("args, field", [
    (["--strategy", "beam"], "strategy"),
    (["--budget", "0"], "budget"),
    (["--set", "n=0"], "n"),
    (["--set", "self_distillation.alpha=3"], "self_distillation.alpha"),
    (["--set", "temprature=1"], "temprature"),
])
def test_invalid_settings_exit_2_naming_the_field(tiny_model_path, tmp_path, args, field):
    r = CliRunner().invoke(app, ["solve", "--problem", _write(tmp_path, PROBLEM), "--model", str(tiny_model_path),
                                 "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and f"error: {field}: " in r.output
    assert not (tmp_path / "o" / "result.json").exists()


@pytest.mark.parametrize("mutate, field", [
    (lambda p: p.pop("tests"), "tests"),
    (lambda p: p.update(title=""), "title"),
    (lambda p: p["hidden_tests"].update(outputs=["1\n", "2\n"]), "hidden_tests.outputs"),
    (lambda p: p.update(extra=1), "extra"),
])
def test_invalid_problem_exits_2_naming_the_field(tmp_path, mutate, field):
    bad = json.loads(json.dumps(PROBLEM))
    mutate(bad)
    r = CliRunner().invoke(app, ["solve", "--problem", _write(tmp_path, bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and f"problem: {field}: " in r.output, r.output


def test_problem_source_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["solve", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--problem" in r.output
    r = runner.invoke(app, ["solve", "--problem", str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "--problem: no such file" in r.output
    lcb = tmp_path / "lcb.jsonl"
    lcb.write_text("")
    r = runner.invoke(app, ["solve", "--lcb", str(lcb)])
    assert r.exit_code == 2 and "--question-id: required" in r.output
    r = runner.invoke(app, ["solve", "--lcb", str(lcb), "--question-id", "abc"])
    assert r.exit_code == 2 and "--question-id: question_id 'abc' not found" in r.output
    r = runner.invoke(app, ["solve", "--problem", _write(tmp_path, PROBLEM), "--model", str(tmp_path)])
    assert r.exit_code == 2 and "--model: no Hugging Face checkpoint" in r.output


def test_solve_a_livecodebench_row(tiny_model_path, tmp_path):
    cases = [{"input": f"{a} {b}\n", "output": f"{a + b}\n", "testtype": "stdin"} for a, b in [(1, 2), (10, 20),
                                                                                             (-5, 5), (7, 8)]]
    row = {"question_title": "Add Two", "platform": "atcoder", "question_id": "abc301_a", "contest_id": "abc301",
           "contest_date": "2024-03-02T00:00:00", "starter_code": "", "difficulty": "easy",
           "question_content": "Given integers A and B, print A+B.",
           "public_test_cases": json.dumps(cases[:1]), "private_test_cases": json.dumps(cases[1:]),
           "metadata": "{}"}
    lcb = tmp_path / "lcb.jsonl"
    lcb.write_text(json.dumps(row) + "\n")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["solve", "--lcb", str(lcb), "--question-id", "abc301_a", "--strategy",
                                 "multiturn", "--budget", "2", "--model", str(tiny_model_path), "--out", str(out),
                                 *FAST])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (out / "attempts.jsonl").read_text().splitlines()]
    assert [(a["round"], a["index"]) for a in lines] == [(0, 0), (1, 0)]
    assert all(a["total"] >= 1 for a in lines)


def test_multiturn_question_over_the_context_budget_exits_2(tiny_model_path, tmp_path):
    r = CliRunner().invoke(app, ["solve", "--problem", _write(tmp_path, PROBLEM), "--strategy", "multiturn",
                                 "--budget", "2", "--model", str(tiny_model_path), "--out", str(tmp_path / "o"),
                                 "--set", "max_new_tokens=8", "--set", "context_budget=12"])
    assert r.exit_code == 2, (r.output, r.exception)
    assert "error: context_budget: got 12; the question alone has" in r.output
    assert not (tmp_path / "o" / "result.json").exists()
