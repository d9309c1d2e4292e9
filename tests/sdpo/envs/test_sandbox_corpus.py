"""The verdict corpus (``sandbox_corpus.py``) through the code environment and the real sandbox: every correct
program passes (no false negatives) and every wrong or hostile one fails (no false positives).

All cases run together through the warm executor pool (``evaluate_many``), the way training judges a batch.
Runs as root (here and in CI): several hostile cases are only harmless inside the strong isolation."""

from __future__ import annotations

import os

import pytest
from sandbox_corpus import CORRECT, WRONG

from sdpo.envs.code import CodeResult, evaluate_many
from sdpo_sandbox import SandboxConfig, SandboxPool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the hostile cases need the strong sandbox (root)")


@pytest.fixture(scope="module")
def judged() -> dict[str, CodeResult]:
    cases = CORRECT + WRONG
    with SandboxPool(SandboxConfig(slots=3)) as pool:
        results = evaluate_many([c.response() for c in cases], [c.tests for c in cases], sandbox=pool)
    return {c.name: r for c, r in zip(cases, results, strict=True)}


def _why(r: CodeResult) -> str:
    last = r.tests[-1]
    return f"{[t.verdict for t in r.tests]} {(last.message or last.stdout)[:300]!r}"


def test_corpus_is_large_and_covers_every_style():
    assert len(CORRECT) >= 150 and len(WRONG) >= 150
    names = " ".join(c.name for c in CORRECT)
    for style in ("_input", "readline", "stdin_buffer", "open0", "os_read", "fileinput", "for_line", "exit_exit",
                  "exit_quit", "sys_exit0", "raise_systemexit", "os_exit_after_flush", "no_final_newline",
                  "trailing_spaces", "extra_blank_lines", "os_write", "setrecursionlimit", "threading_stack_size",
                  "in_cwd", "in_tmp", "tempfile", "crlf", "no_final_newline_input", "class_solution"):
        assert style in names, style


def test_no_false_negatives(judged):
    wrong = {c.name: _why(judged[c.name]) for c in CORRECT if judged[c.name].reward != 1.0}
    assert not wrong, f"{len(wrong)} of {len(CORRECT)} correct programs failed: {wrong}"


def test_no_false_positives(judged):
    passed = [c.name for c in WRONG if judged[c.name].reward != 0.0]
    assert not passed, f"{len(passed)} of {len(WRONG)} wrong or hostile programs passed: {passed}"


def test_every_failure_comes_with_feedback(judged):
    for c in WRONG:
        r = judged[c.name]
        assert r.feedback and len(r.feedback) <= 2000, c.name
