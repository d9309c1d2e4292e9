"""Code environment: LiveCodeBench-style unit tests run in the sandbox (paper Sec. 4, issue 3).

Work in progress: ``TestSpec`` is final; ``extract_code``/``evaluate`` are being implemented.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sdpo.envs.base import Score

TESTTYPES = ("stdin", "functional", "assert")


@dataclass
class TestSpec:
    """Unit tests of one coding question (LiveCodeBench / lasgroup-SDPO format).

    inputs / outputs: one string per test case. stdin: the program's stdin / expected stdout. functional:
        each input holds one JSON-encoded argument per line, each output one JSON-encoded value.
        assert: unused (empty lists).
    testtype: "stdin" | "functional" | "assert".
    fn_name: functional: the function (or ``class Solution`` method) name; assert: the entry point passed
        to ``check(candidate)``.
    time_limit: seconds of wall-clock time per test case.
    assert_code: testtype "assert" only: trusted test code defining ``check(candidate)`` (HumanEval).
    """

    __test__ = False  # not a pytest class

    inputs: list[str]
    outputs: list[str]
    testtype: str = "stdin"
    fn_name: str | None = None
    time_limit: float = 6.0
    assert_code: str | None = None

    def __post_init__(self) -> None:
        if self.testtype not in TESTTYPES:
            raise ValueError(f"testtype: got {self.testtype!r}; allowed values are {TESTTYPES}")
        if not isinstance(self.inputs, list) or not all(isinstance(x, str) for x in self.inputs):
            raise ValueError("inputs: expected a list of strings")
        if not isinstance(self.outputs, list) or not all(isinstance(x, str) for x in self.outputs):
            raise ValueError("outputs: expected a list of strings")
        if len(self.inputs) != len(self.outputs):
            raise ValueError(f"outputs: {len(self.outputs)} outputs for {len(self.inputs)} inputs")
        if isinstance(self.time_limit, bool) or not isinstance(self.time_limit, (int, float)) or not (
            0 < self.time_limit <= 600
        ):
            raise ValueError(f"time_limit: got {self.time_limit!r}; expected seconds in (0, 600]")
        if self.testtype == "assert":
            if not isinstance(self.assert_code, str) or not self.assert_code.strip():
                raise ValueError("assert_code: required (trusted test code) for testtype 'assert'")
            if not self.fn_name:
                raise ValueError("fn_name: required (the entry point) for testtype 'assert'")
        else:
            if not self.inputs:
                raise ValueError("inputs: a stdin/functional spec needs at least one test case")
            if self.testtype == "functional" and not self.fn_name:
                raise ValueError("fn_name: required for testtype 'functional'")

    @classmethod
    def parse(cls, obj: TestSpec | dict | str) -> TestSpec:
        """Parse a TestSpec from itself, a dict, or a JSON string (see module docs for formats)."""
        if isinstance(obj, TestSpec):
            return obj
        if isinstance(obj, str):
            obj = json.loads(obj)
        if not isinstance(obj, dict):
            raise ValueError(f"tests: expected a dict or JSON object, got {type(obj).__name__}")
        return cls(
            inputs=list(obj.get("inputs", [])),
            outputs=list(obj.get("outputs", [])),
            testtype=obj.get("testtype", "stdin"),
            fn_name=obj.get("fn_name"),
            time_limit=float(obj.get("time_limit", 6.0)),
            assert_code=obj.get("assert_code"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "testtype": self.testtype,
            "fn_name": self.fn_name,
            "time_limit": self.time_limit,
            "assert_code": self.assert_code,
        }

    def __len__(self) -> int:
        return 1 if self.testtype == "assert" else len(self.inputs)


@dataclass
class TestRecord:
    """One executed test case. verdict: passed | wrong_answer | runtime_error | time_limit |
    memory_limit | output_limit | format_error."""

    __test__ = False

    verdict: str
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""


@dataclass
class CodeResult:
    reward: float
    passed: int
    total: int
    tests: list[TestRecord] = field(default_factory=list)
    feedback: str | None = None

    def score(self) -> Score:
        return Score(reward=self.reward, feedback=self.feedback, passed=self.passed, total=self.total)


def extract_code(response: str) -> str | None:
    raise NotImplementedError


def evaluate(
    response: str,
    tests: TestSpec | dict | str,
    *,
    sparse: bool = True,
    stop_at_first_failure: bool | None = None,
    truncated: bool = False,
) -> CodeResult:
    raise NotImplementedError
