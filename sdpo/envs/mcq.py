"""Multiple-choice environment (SciKnowEval; paper Sec. 5, "learning without rich feedback").

The model is asked (by the row's system prompt) to finish with ``<answer>\\nX\\n</answer>``. The reward is 1.0
when the content of the *last* complete ``<answer>...</answer>`` element names the correct option, else 0.0.
There is no environment feedback (``Score.feedback`` is None): the only learning signal besides the reward
is a successful sibling attempt.

Normalisation of the answer text (both sides): surrounding whitespace, markdown emphasis (``**A**``),
brackets (``(A)``, ``[A]``), a trailing ``.``/``:``/``)`` and an ``Option``/``Answer`` prefix are ignored and
letters are compared case-insensitively, so ``A``, ``a``, ``A.``, ``(A)``, ``**A**`` and ``Option A`` all
name option A. A letter followed by the option's text (``A: O=C1...``) also counts as A. Anything else is
compared as whole text (case-insensitive, whitespace-collapsed).
"""

from __future__ import annotations

import re

from sdpo.envs.base import Score

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
# "A", "(A)", "[A]", "A.", "A)", "A:", "Option A", "Answer: A", optionally followed by the option text.
_LETTER_RE = re.compile(
    r"^(?:(?:option|answer|choice)\s*:?\s*)?[(\[]?\s*([A-Za-z])\s*(?:[)\].:]\s*.*)?$", re.DOTALL | re.IGNORECASE
)


def extract_answer(response: str) -> str | None:
    """Content of the last complete ``<answer>...</answer>`` element (stripped), or None if there is none."""
    matches = _ANSWER_RE.findall(response)
    if not matches:
        return None
    return matches[-1].strip()


def normalize_choice(text: str) -> str:
    """Canonical form of an answer: the upper-case option letter when one is named, else the collapsed text.

    >>> [normalize_choice(x) for x in ("A", " a. ", "(B)", "**C**", "Option D", "A: O=C1CC1", "B) 2.4")]
    ['A', 'A', 'B', 'C', 'D', 'A', 'B']
    """
    stripped = text.strip().strip("*_`").strip()
    m = _LETTER_RE.match(stripped)
    if m:
        return m.group(1).upper()
    return " ".join(stripped.split()).upper()


def score(response: str, answer: str) -> Score:
    """Reward 1.0 iff the last ``<answer>`` names ``answer`` (see module docs); feedback is always None.

    details: ``pred`` (normalised prediction or None when no answer element was found) and ``format_ok``.
    """
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"answer: expected the correct option letter, got {answer!r}")
    raw = extract_answer(response)
    pred = normalize_choice(raw) if raw is not None else None
    correct = pred is not None and pred == normalize_choice(answer)
    return Score(
        reward=1.0 if correct else 0.0,
        feedback=None,
        passed=int(correct),
        total=1,
        details={"pred": pred, "format_ok": raw is not None},
    )
