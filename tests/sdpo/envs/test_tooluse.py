import json
from pathlib import Path

import pytest

from sdpo.envs.tooluse import parse_ground_truth, parse_response, score

GT = json.dumps([
    {"Action": "getExchangeRates", "Action_Input": '{"base": "USD", "symbols": "CAD"}'},
    {"Action": "setPriceAlert", "Action_Input": '{"currency_pair": "USD/CAD", "price": 1.2, "direction": "below"}'},
])

GOOD = """Thought: I need the rate first.
Action: getExchangeRates
Action Input: {"base": "USD", "symbols": "CAD"}
Observation: ...
Thought: now the alert.
Action: setPriceAlert
Action Input: {"currency_pair": "USD/CAD", "price": 1.2, "direction": "below"}
"""


def _shared_datasets() -> Path | None:
    for root in (Path(__file__).resolve().parents[3] / ".." / "shared", Path("/work/shared")):
        if (root / "datasets").is_dir():
            return root / "datasets"
    return None


def test_correct_calls_in_any_order_get_reward_and_no_feedback():
    s = score(GOOD, GT)
    assert (s.reward, s.passed, s.total, s.feedback) == (1.0, 1, 1, None)
    swapped = "\n".join(GOOD.split("Observation: ...\n")[::-1])
    assert score(swapped, GT, feedback=True).reward == 1.0
    assert score(swapped, GT, feedback=True).feedback is None


def test_wrong_input_value_fails_and_feedback_is_off_by_default():
    bad = GOOD.replace('"price": 1.2', '"price": 1.3')
    s = score(bad, GT)
    assert s.reward == 0.0 and s.feedback is None
    fb = score(bad, GT, feedback=True).feedback
    assert fb == "Action input 'price' is 1.3; expected 1.2"


def test_missing_and_extra_actions_are_listed():
    text = GOOD.replace("Action: setPriceAlert", "Action: convertCurrency")
    fb = score(text, GT, feedback=True).feedback
    assert "Missing actions: setPriceAlert" in fb
    assert "Unexpected actions: convertCurrency" in fb
    # actions compared as a multiset: calling the same tool twice is not the same as once
    twice = GOOD + "Action: getExchangeRates\nAction Input: {}\n"
    assert score(twice, GT).reward == 0.0
    assert "Unexpected actions: getExchangeRates" in score(twice, GT, feedback=True).feedback


def test_merged_inputs_follow_reference_semantics():
    # the reference merges all inputs of a side into one dict, so which call carries a key does not matter
    moved = GOOD.replace('{"base": "USD", "symbols": "CAD"}', '{"base": "USD"}').replace(
        '"direction": "below"}', '"direction": "below", "symbols": "CAD"}')
    assert score(moved, GT).reward == 1.0


def test_nested_json_braces_in_strings_and_fenced_input():
    gt = json.dumps([{"Action": "[Optional]updateUserProfile",
                      "Action_Input": '{"profileData": {"bio": "a {b} c"}, "ids": [1, 2]}'}])
    text = ('Action: [Optional]updateUserProfile\nAction Input: ```json\n'
            '{"profileData": {"bio": "a {b} c"}, "ids": [1, 2]}\n```')
    assert parse_response(text)[0] == ["[Optional]updateUserProfile"]
    assert score(text, gt).reward == 1.0


def test_unparseable_input_is_reported_and_fails():
    gt = json.dumps([{"Action": "f", "Action_Input": '{"x": 1}'}])
    s = score("Action: f\nAction Input: {x: 1}", gt, feedback=True)
    assert s.reward == 0.0
    assert s.details["input_errors"] and "not valid JSON" in s.feedback
    assert "Action input 'x' is missing; expected 1" in s.feedback


def test_no_tool_call_feedback():
    s = score("I don't know.", json.dumps([{"Action": "f", "Action_Input": "{}"}]), feedback=True)
    assert s.reward == 0.0 and s.details["format_ok"] is False
    assert s.feedback.startswith("No tool call found")


def test_empty_input_ground_truth():
    gt = json.dumps([{"Action": "getRandomAxolotlImage", "Action_Input": "{}"}])
    assert score("Action: getRandomAxolotlImage\nAction Input: {}", gt).reward == 1.0
    assert score("Action: getRandomAxolotlImage\nAction Input: {\"n\": 1}", gt).reward == 0.0


def test_bad_ground_truth_raises():
    with pytest.raises(ValueError, match="answer"):
        parse_ground_truth("not json")
    with pytest.raises(ValueError, match=r"answer\[0\]"):
        parse_ground_truth([{"Action_Input": "{}"}])


def test_real_tooluse_rows_ground_truth_as_response_scores_one_and_a_change_scores_zero():
    root = _shared_datasets()
    if root is None:
        pytest.skip("shared datasets not available")
    rows = [json.loads(line) for line in (root / "tooluse_test.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 68
    for row in rows:
        calls = json.loads(row["answer"])
        text = "Thought: go\n" + "\n".join(f"Action: {c['Action']}\nAction Input: {c['Action_Input']}" for c in calls)
        assert score(text, row["answer"]).reward == 1.0, row["idx"]
        dropped = "\n".join(text.splitlines()[:-2])  # drop the last call
        assert score(dropped, row["answer"]).reward == 0.0, row["idx"]


def test_markdown_emphasis_around_the_keywords_is_tolerated():
    gt = json.dumps([{"Action": "getX", "Action_Input": '{"a": 1}'}])
    for text in ('**Action:** getX\n**Action Input:** {"a": 1}', '**Action**: `getX`\n**Action Input**: {"a": 1}'):
        s = score(text, gt)
        assert s.reward == 1.0 and s.details["format_ok"], text
