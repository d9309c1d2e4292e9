import pytest

from sdpo.envs.mcq import extract_answer, normalize_choice, score


@pytest.mark.parametrize("written", ["A", "a", "A.", "(A)", "[A]", "**A**", "Option A", "Answer: A",
                                     "A: O=C1CC1", "A) -3.01", "  \n A \n"])
def test_tolerated_spellings_of_the_right_letter_get_reward(written):
    s = score(f"<reasoning>x</reasoning>\n<answer>{written}</answer>", "A")
    assert (s.reward, s.feedback, s.passed, s.total) == (1.0, None, 1, 1)
    assert s.details["pred"] == "A"


@pytest.mark.parametrize("written", ["B", "(C)", "Because A", "AB", "The answer is A", ""])
def test_other_answers_get_zero(written):
    s = score(f"<answer>{written}</answer>", "A")
    assert s.reward == 0.0 and s.passed == 0 and s.feedback is None


def test_last_answer_element_counts():
    text = "Format: <answer>\n...\n</answer>. First guess <answer>B</answer>, final <answer>\nD\n</answer>"
    assert extract_answer(text) == "D"
    assert score(text, "D").reward == 1.0
    assert score(text, "B").reward == 0.0


def test_missing_or_unclosed_answer_is_a_format_failure():
    for text in ("The answer is A.", "<answer>\nA\n", "A"):
        s = score(text, "A")
        assert s.reward == 0.0
        assert s.details == {"pred": None, "format_ok": False}


def test_tags_are_case_insensitive_and_ground_truth_is_normalised_too():
    assert score("<ANSWER> c </ANSWER>", "C.").reward == 1.0


def test_normalize_choice_is_whole_text_when_no_single_letter():
    assert normalize_choice("  two   words ") == "TWO WORDS"


def test_bad_ground_truth_is_rejected():
    with pytest.raises(ValueError, match="answer"):
        score("<answer>A</answer>", "")


def test_real_sciknoweval_rows():
    import json
    from pathlib import Path

    roots = (Path(__file__).resolve().parents[3] / ".." / "shared", Path("/work/shared"))
    root = next((r / "datasets" for r in roots if (r / "datasets").is_dir()), None)
    if root is None:
        pytest.skip("shared datasets not available")
    rows = [json.loads(line) for line in (root / "sciknoweval_chemistry_test.jsonl").read_text().splitlines()]
    assert len(rows) == 210
    for row in rows:
        right = f"<reasoning>\nthink\n</reasoning>\n<answer>\n{row['answer']}\n</answer>"
        wrong_letter = "ABCD"[("ABCD".index(row["answer"]) + 1) % 4]
        assert score(right, row["answer"]).reward == 1.0
        assert score(right.replace(f"\n{row['answer']}\n</answer>", f"\n{wrong_letter}\n</answer>"),
                     row["answer"]).reward == 0.0
