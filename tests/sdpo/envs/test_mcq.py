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
