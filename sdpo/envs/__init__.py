"""Environments: score a response to a ``Task`` (reward + optional feedback, paper Sec. 2).

``score`` dispatches on ``task.kind`` with a plain if/elif: "code" -> ``sdpo.envs.code`` (unit tests in the
sandbox), "mcq" -> ``sdpo.envs.mcq``, "tooluse" -> ``sdpo.envs.tooluse``. Environment modules are imported
lazily, so ``import sdpo.envs`` stays cheap (the code environment starts a sandbox pool on first use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sdpo.envs.base import Score

__all__ = ["Score", "score", "score_many"]


def _tests_of(task: Any, tests: Any) -> Any:
    spec = tests if tests is not None else task.tests
    if spec is None:
        raise ValueError(f"task {task.id!r}: kind 'code' needs tests (task.tests is None)")
    return spec


def score(task: Any, response: str, *, truncated: bool = False, sparse: bool = True, tests: Any = None,
          tooluse_feedback: bool = False, code_feedback: str = "all_tests") -> Score:
    """Score one response to ``task`` (a ``sdpo.data.tasks.Task``).

    truncated: the response was cut at the length limit (code: a missing code block is reported as a
        truncation instead of a format error).
    sparse: code only; True = reward 1.0 only when all tests pass, False = fraction passed.
    tests: code only; a TestSpec (or dict / JSON string) to use instead of ``task.tests``, e.g. the
        hidden tests.
    tooluse_feedback: tool use only; give feedback that lists the mismatch (off by default: it reveals the
        ground truth).
    code_feedback: code only; how the feedback for the self-teacher is gathered: "all_tests" (the
        reference's: every test runs, the feedback shows the first runtime error, else the first time-out,
        else the two shortest wrong answers; a sparse run still stops at the first runtime error) or
        "first_failure" (a sparse run stops at the first failing test). See ``sdpo.envs.code``.
    """
    from sdpo.envs import code

    code.check_code_feedback(code_feedback)
    if task.kind == "code":
        return code.evaluate(response, _tests_of(task, tests), sparse=sparse, truncated=truncated,
                             code_feedback=code_feedback).score()
    elif task.kind == "mcq":
        from sdpo.envs import mcq

        return mcq.score(response, task.answer)
    elif task.kind == "tooluse":
        from sdpo.envs import tooluse

        return tooluse.score(response, task.answer, feedback=tooluse_feedback)
    raise ValueError(f"task {task.id!r}: unknown kind {task.kind!r}; allowed values are 'code', 'mcq', 'tooluse'")


def score_many(tasks: Sequence[Any], responses: Sequence[str], truncated: Sequence[bool] | bool = False, *,
               sparse: bool = True, tests: Sequence[Any] | None = None,
               tooluse_feedback: bool = False, code_feedback: str = "all_tests") -> list[Score]:
    """Score ``responses[i]`` against ``tasks[i]``; returns the scores in the same order.

    Code responses are evaluated together through ``sdpo.envs.code.evaluate_many`` (parallel across the
    sandbox pool). ``truncated`` is one flag per
    response or a single flag for all; ``tests`` optionally overrides the tests of each task (None entries
    keep ``task.tests``). ``code_feedback`` as in ``score``.
    """
    from sdpo.envs import code

    code.check_code_feedback(code_feedback)
    n = len(tasks)
    if len(responses) != n:
        raise ValueError(f"responses: {len(responses)} responses for {n} tasks")
    flags = [truncated] * n if isinstance(truncated, bool) else list(truncated)
    if len(flags) != n:
        raise ValueError(f"truncated: {len(flags)} flags for {n} tasks")
    overrides = [None] * n if tests is None else list(tests)
    if len(overrides) != n:
        raise ValueError(f"tests: {len(overrides)} overrides for {n} tasks")

    results: list[Score | None] = [None] * n
    code_idx = [i for i, t in enumerate(tasks) if t.kind == "code"]
    if len(code_idx) > 1:
        outs = code.evaluate_many(
            [responses[i] for i in code_idx],
            [_tests_of(tasks[i], overrides[i]) for i in code_idx],
            sparse=sparse,
            truncated=[flags[i] for i in code_idx],
            code_feedback=code_feedback,
        )
        for i, out in zip(code_idx, outs, strict=True):
            results[i] = out.score()
    for i in range(n):
        if results[i] is None:
            results[i] = score(tasks[i], responses[i], truncated=flags[i], sparse=sparse, tests=overrides[i],
                               tooluse_feedback=tooluse_feedback, code_feedback=code_feedback)
    return results  # type: ignore[return-value]
