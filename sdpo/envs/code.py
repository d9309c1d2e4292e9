"""Code environment: LiveCodeBench-style unit tests run in the sandbox (paper Sec. 4).

``evaluate(response, tests)`` extracts the last python block, runs it against a ``TestSpec`` in the sandbox
(``sdpo_sandbox``; see docs/sandbox.md for the isolation) and returns a ``CodeResult``: reward (sparse
1/0 or dense fraction), per-test verdicts and the feedback text for the self-teacher. Expected outputs stay in
this (trusted) process: the sandbox only ever receives inputs, and every verdict is computed here.
"""

from __future__ import annotations

import base64
import decimal
import json
import math
import re
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sdpo.envs.base import Score
from sdpo_sandbox import Sandbox, SandboxError, decode_value, default_pool

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
            if self.testtype == "functional":
                if not self.fn_name:
                    raise ValueError("fn_name: required for testtype 'functional'")
                self._check_functional_json()

    def _check_functional_json(self) -> None:
        """Functional tests are JSON: one argument per non-blank input line, one value per output. A bad
        test is the dataset's fault, so it is refused here instead of being blamed on the solution (input)
        or failing in the middle of judging (output)."""
        for i, text in enumerate(self.inputs):
            for k, line in enumerate(text.split("\n"), start=1):
                if line.strip():
                    try:
                        _parse_json_text(line)
                    except (ValueError, RecursionError) as e:
                        raise ValueError(f"inputs[{i}]: line {k} is not valid JSON ({e})") from None
        for i, text in enumerate(self.outputs):
            try:
                _parse_json_text(text)
            except (ValueError, RecursionError) as e:
                raise ValueError(f"outputs[{i}]: not valid JSON ({e})") from None

    @classmethod
    def parse(cls, obj: TestSpec | dict | list | str) -> TestSpec:
        """Parse the formats used by LiveCodeBench and lasgroup/SDPO datasets (or their JSON text).

        * ``{"inputs": [...], "outputs": [...], "testtype"?, "fn_name"?, "time_limit"?, "assert_code"?}``
          (``fn_name`` may also be spelled ``func_name``, or sit in ``metadata``; testtype defaults to
          "functional" when a function name is given, else "stdin");
        * ``{"input_output": "<json of the above>"}`` (APPS style);
        * a list of LiveCodeBench test cases ``[{"input": ..., "output": ..., "testtype": ...}, ...]``, or a
          dict holding it as ``test_cases`` / ``public_test_cases`` plus ``metadata: {"func_name": ...}``.

        Raises ValueError naming the offending field.
        """
        if isinstance(obj, TestSpec):
            return obj
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except ValueError as e:
                raise ValueError(f"tests: not valid JSON ({e})") from None
        if isinstance(obj, list):
            obj = {"test_cases": obj}
        if not isinstance(obj, dict):
            raise ValueError(f"tests: expected a JSON object or list, got {type(obj).__name__}")
        if "input_output" in obj and "inputs" not in obj:
            inner = obj["input_output"]
            try:
                inner = json.loads(inner) if isinstance(inner, str) else inner
            except ValueError as e:
                raise ValueError(f"input_output: not valid JSON ({e})") from None
            if not isinstance(inner, dict):
                raise ValueError("input_output: expected a JSON object with inputs/outputs")
            obj = {**{k: v for k, v in obj.items() if k != "input_output"}, **inner}
        meta = obj.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta) if meta.strip() else {}
            except ValueError as e:
                raise ValueError(f"metadata: not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise ValueError("metadata: expected a JSON object")
        fn_name = obj.get("fn_name") or obj.get("func_name") or meta.get("func_name") or meta.get("fn_name")
        if fn_name is not None and not isinstance(fn_name, str):
            raise ValueError(f"fn_name: expected a string, got {fn_name!r}")
        testtype = obj.get("testtype")
        cases = obj.get("test_cases", obj.get("public_test_cases"))
        if cases is not None and "inputs" not in obj:
            if isinstance(cases, str):
                try:
                    cases = json.loads(cases)
                except ValueError as e:
                    raise ValueError(f"test_cases: not valid JSON ({e})") from None
            if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
                raise ValueError("test_cases: expected a list of {input, output, testtype} objects")
            for i, c in enumerate(cases):
                if not isinstance(c.get("input"), str) or not isinstance(c.get("output"), str):
                    raise ValueError(f"test_cases[{i}]: needs string 'input' and 'output'")
            kinds = {c.get("testtype") for c in cases if c.get("testtype")}
            if len(kinds) > 1:
                raise ValueError(f"testtype: test cases mix testtypes {sorted(kinds)}")
            testtype = testtype or (kinds.pop() if kinds else None)
            inputs = [c["input"] for c in cases]
            outputs = [c["output"] for c in cases]
        else:
            inputs, outputs = obj.get("inputs", []), obj.get("outputs", [])
        if testtype is None:
            testtype = "assert" if obj.get("assert_code") else ("functional" if fn_name else "stdin")
        for name, seq in (("inputs", inputs), ("outputs", outputs)):
            if not isinstance(seq, list):
                raise ValueError(f"{name}: expected a list of strings, got {type(seq).__name__}")
        # Some datasets store functional outputs as JSON values rather than JSON text.
        if testtype == "functional":
            outputs = [o if isinstance(o, str) else json.dumps(o) for o in outputs]
        time_limit = obj.get("time_limit", 6.0)
        if isinstance(time_limit, str):
            try:
                time_limit = float(time_limit)
            except ValueError:
                raise ValueError(f"time_limit: got {time_limit!r}; expected seconds") from None
        return cls(inputs=list(inputs), outputs=list(outputs), testtype=testtype, fn_name=fn_name,
                   time_limit=time_limit, assert_code=obj.get("assert_code"))

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


FORMAT_MESSAGE = "Put your code inside a ```python ... ``` block."
TRUNCATION_MESSAGE = (
    "Your response was cut off at the maximum length before the code was complete. Write a shorter answer "
    "and put your code inside a ```python ... ``` block."
)
# How the feedback for the self-teacher is gathered (``code_feedback``):
#   "all_tests": as the reference (lasgroup/SDPO feedback/code.py): every test is run, and the feedback
#       reports the first runtime error in test order, else the first time-out, else the two shortest wrong
#       answers (by the length of the input plus the program's output). With a sparse reward the run still
#       stops at the first runtime error: nothing after it can change the feedback or the reward.
#   "first_failure": the run stops at the first failing test (sparse reward), so the feedback always
#       describes the first failure in test order.
CODE_FEEDBACK_MODES = ("all_tests", "first_failure")
CRASHES = ("runtime_error", "memory_limit", "output_limit")
FEEDBACK_CAP = 2000
RECORD_TEXT_CAP = 2000
VALUE_LINES, VALUE_LINE_CHARS, VALUE_CHARS = 12, 200, 400


@dataclass
class TestRecord:
    """One executed test case.

    verdict: passed | wrong_answer | runtime_error | time_limit | memory_limit | output_limit | format_error.
    seconds: wall time of the run. stdout / stderr: the program's output, decoded and truncated.
    message: a short description of a failure (exception or assertion; untrusted text from the solution).
    output: the value compared against the expected one (functional: the returned value as JSON).
    """

    __test__ = False

    verdict: str
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    message: str = ""
    output: str = ""
    index: int = 0


@dataclass
class CodeResult:
    """Outcome of running one response against a TestSpec (sparse reward: 1.0 only if all tests pass)."""

    reward: float
    passed: int
    total: int
    tests: list[TestRecord] = field(default_factory=list)
    feedback: str | None = None

    def score(self) -> Score:
        verdicts = [t.verdict for t in self.tests]
        return Score(reward=self.reward, feedback=self.feedback, passed=self.passed, total=self.total,
                     details={"verdicts": verdicts})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- parsing

# A fenced block as in Markdown (CommonMark): the opening fence starts a line (up to 3 spaces of indent) with
# 3+ backticks and an info string; the block ends at the first later line that is only a fence at least as
# long, or, as models often write it, that ends with such a fence right after its code ("print(1)```").
# Backticks elsewhere (inline ```code``` in prose, s = '```' inside the code) neither open nor close.
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,})(?P<info>[^`\n]*)\n(?P<code>.*?)"
                    r"(?:^ {0,3}|(?<=[^`\s])[ \t]*)(?P=fence)`*[ \t\r]*$", re.DOTALL | re.MULTILINE)


def extract_code(response: str) -> str | None:
    """The last fenced block tagged python/py (or the last untagged one when none is tagged); else None."""
    tagged, untagged = [], []
    for m in _FENCE.finditer(response or ""):
        info = m.group("info").strip()
        tag = info.lower().split()[0] if info else ""
        code = m.group("code")
        if tag in ("python", "py", "python3"):
            tagged.append(code)
        elif tag == "":
            untagged.append(code)
    blocks = tagged or untagged
    if not blocks or not blocks[-1].strip():
        return None
    return blocks[-1]


def _parse_json_text(value: str) -> Any:
    """JSON with integers of any size (the stdlib's int parser refuses more than 4300 digits)."""
    return json.loads(value, parse_int=lambda s: int(decimal.Decimal(s)))


# --------------------------------------------------------------------------------------------- comparison


def _int_token(tok: str) -> str | None:
    t = tok[1:] if tok[:1] in "+-" else tok
    if not t.isdigit():
        return None
    t = t.lstrip("0") or "0"
    return t if tok[:1] != "-" or t == "0" else "-" + t


def _tokens_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    ia, ib = _int_token(a), _int_token(b)
    if ia is not None and ib is not None:
        return ia == ib
    if ia is not None or ib is not None:
        # One side is an integer: the reference's semantics (LiveCodeBench compares the tokens as exact
        # Decimals), so "1.0" equals "1" but "1000000000.0" does not equal "1000000001".
        try:
            da, db = decimal.Decimal(a), decimal.Decimal(b)
        except (decimal.InvalidOperation, ValueError):
            return False
        return da.is_finite() and db.is_finite() and da == db
    # Neither side is an integer: our extension of the reference, a 1e-6 tolerance (absolute or relative)
    # for floating-point answers.
    try:
        fa, fb = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(fa) or math.isnan(fb):
        return False
    return math.isclose(fa, fb, rel_tol=1e-6, abs_tol=1e-6)


def _lines(text: str) -> list[str]:
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def stdout_matches(output: str, expected: str) -> bool:
    """LiveCodeBench-style stdout check: line by line, trailing whitespace ignored; a line that differs
    still matches when its whitespace-separated tokens are equal: two integers exactly, an integer and a
    decimal number as exact decimals (as the reference: "1.0" == "1"), two non-integer numbers within 1e-6
    (absolute or relative)."""
    got, want = _lines(output), _lines(expected)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if g == w:
            continue
        gt, wt = g.split(), w.split()
        if len(gt) != len(wt) or not all(_tokens_equal(x, y) for x, y in zip(gt, wt, strict=True)):
            return False
    return True


def values_equal(got: Any, expected: Any) -> bool:
    """Functional check on plain (decoded) values: JSON types must match exactly (a bool is not a number,
    None only equals None), tuples equal lists, ints and floats compare by value, dicts key by key."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is bool and type(got) is bool and expected == got
    if expected is None or got is None:
        return expected is None and got is None
    if isinstance(expected, (int, float)):
        return type(got) in (int, float) and got == expected
    if isinstance(expected, str):
        return type(got) is str and got == expected
    if isinstance(expected, (list, tuple)):
        return (type(got) in (list, tuple) and len(got) == len(expected)
                and all(values_equal(g, e) for g, e in zip(got, expected, strict=True)))
    if isinstance(expected, dict):
        return (type(got) is dict and set(got) == set(expected)
                and all(values_equal(got[k], expected[k]) for k in expected))
    return False


def _displayable(value: Any, depth: int = 0) -> Any:
    """Make a decoded value JSON-dumpable for display (huge ints summarised, tuples as lists)."""
    if depth > 50:
        return "…"
    if isinstance(value, bool) or value is None or isinstance(value, (float, str)):
        return value
    if isinstance(value, int):
        return value if value.bit_length() < 13000 else f"<integer of about {int(value.bit_length() * 0.30103)} digits>"
    if isinstance(value, (list, tuple)):
        return [_displayable(v, depth + 1) for v in value[:1000]]
    if isinstance(value, dict):
        return {str(_displayable(k, depth + 1)): _displayable(v, depth + 1) for k, v in list(value.items())[:1000]}
    return repr(_displayable(list(value), depth + 1) if isinstance(value, (set, frozenset)) else value)


def _to_json_text(value: Any) -> str:
    """Display a decoded value as JSON (tuples as lists, other non-JSON values by repr)."""
    try:
        return json.dumps(_displayable(value), default=repr)
    except (ValueError, TypeError, RecursionError):
        return "<value>"


# --------------------------------------------------------------------------------------------- judging


def make_job(spec: TestSpec, code: str, index: int) -> dict[str, Any]:
    """The request sent to the sandbox for test ``index`` (never contains an expected output)."""
    job: dict[str, Any] = {"op": "run", "mode": spec.testtype, "code": code, "time_limit": float(spec.time_limit),
                           "fn_name": spec.fn_name}
    if spec.testtype == "assert":
        job["input"] = ""
        job["assert_code"] = spec.assert_code
    else:
        job["input"] = spec.inputs[index]
    return job


def _b64text(data: str) -> str:
    """A program's output as compared with the expected one (invalid UTF-8 as U+FFFD)."""
    return base64.b64decode(data).decode("utf-8", "replace")


def _b64display(data: str) -> str:
    """A program's output as shown (records, feedback): invalid UTF-8 bytes visible as ``\\xff``."""
    return base64.b64decode(data).decode("utf-8", "backslashreplace")


_NOT_PLAIN = re.compile(r"[^\n\t\x20-\x7e]")


def visible(text: str) -> str:
    """``text`` with every character that is neither printable nor a newline or tab written as its Python
    escape: a NUL as ``\\x00``, ESC as ``\\x1b``, a carriage return as ``\\r``, a lone surrogate as
    ``\\udcff``, U+202E as ``\\u202e``. What a program prints thus reaches the teacher prompt (and the
    database) as valid UTF-8 without control characters, and still visibly."""
    if not _NOT_PLAIN.search(text):
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else repr(ch)[1:-1] for ch in text)


def _last_report(text: str) -> dict[str, Any]:
    """The last well-formed JSON object line of a (possibly untrusted) report channel."""
    for line in reversed(text.splitlines()):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    return {}


def _error_text(err: Any) -> str:
    if not isinstance(err, dict):
        return "unknown error"
    text = f"{str(err.get('type', 'Error'))[:100]}: {str(err.get('message', ''))[:1000]}".rstrip(": ")
    line = err.get("line")
    if isinstance(line, int) and not isinstance(line, bool):
        text += f" (line {line} of your code)"
    return text


def judge(spec: TestSpec, index: int, reply: dict[str, Any]) -> TestRecord:
    """Turn one executor reply into a verdict. Runs in the trusted caller; expected outputs live only here."""
    if not reply.get("ok"):
        raise SandboxError(f"sandbox error: {reply.get('error')}")
    rec = TestRecord(verdict="passed", seconds=float(reply["seconds"]), index=index,
                     stdout=_b64display(reply["stdout"])[:RECORD_TEXT_CAP],
                     stderr=_b64display(reply["stderr"])[:RECORD_TEXT_CAP])
    report = _last_report(reply.get("report", ""))
    err = report.get("error")
    signal_no = reply.get("signal")
    if spec.testtype == "assert":
        verdict = report.get("verdict")
        if reply["timed_out"]:
            rec.verdict = "time_limit"
        elif reply.get("stdout_overflow") or reply.get("stderr_overflow"):
            rec.verdict = "output_limit"
        elif verdict == "passed":
            rec.verdict = "passed"
        elif verdict == "wrong_answer":
            rec.verdict = "wrong_answer"
            rec.message = str(report.get("assertion") or report.get("message") or "assertion failed")[:1000]
            last = report.get("last_call")
            if isinstance(last, dict):
                rec.output = f"{last.get('name')}{str(last.get('args'))[:500]} returned {str(last.get('result'))[:500]}"
        else:
            e = report.get("error", {"type": "RuntimeError", "message": "the checker did not finish"})
            rec.verdict = "memory_limit" if isinstance(e, dict) and e.get("type") == "MemoryError" else "runtime_error"
            rec.message = _error_text(e)
        return rec
    if isinstance(err, dict) and err.get("type") and reply["timed_out"]:
        # It raised, then hung while its exception was being described (a hostile __str__).
        rec.verdict = "runtime_error"
        rec.message = _error_text(err)
    elif reply["timed_out"] or signal_no == signal.SIGXCPU:
        rec.verdict = "time_limit"
    elif reply.get("stdout_overflow") or reply.get("report_overflow") or reply.get("stderr_overflow"):
        rec.verdict = "output_limit"
    elif isinstance(err, dict) and err.get("type") == "MemoryError":
        rec.verdict = "memory_limit"
        rec.message = _error_text(err)
    elif signal_no is not None or reply.get("exit") != 0:
        rec.verdict = "runtime_error"
        if err:
            rec.message = _error_text(err)
        elif signal_no is not None:
            rec.message = f"killed by signal {signal.Signals(signal_no).name}" if signal_no in signal.Signals._value2member_map_ else f"killed by signal {signal_no}"
        else:
            rec.message = f"exit code {reply.get('exit')}"
        if rec.stderr.strip() and not err:
            rec.message += "\n" + rec.stderr.strip()[-500:]
    elif spec.testtype == "stdin":
        rec.output = rec.stdout
        if not stdout_matches(_b64text(reply["stdout"]), spec.outputs[index]):
            rec.verdict = "wrong_answer"
    else:
        if "result" not in report:
            rec.verdict = "runtime_error"
            rec.message = _error_text(err) if err else "the function did not return a value"
            return rec
        try:
            got = decode_value(report["result"])
        except (ValueError, TypeError, KeyError, RecursionError, OverflowError):
            rec.verdict = "runtime_error"
            rec.message = "the returned value could not be read"
            return rec
        rec.output = _to_json_text(got)
        try:
            expected = _parse_json_text(spec.outputs[index])
        except ValueError as e:
            raise ValueError(f"outputs[{index}]: not valid JSON ({e})") from None
        if not values_equal(got, expected):
            rec.verdict = "wrong_answer"
    return rec


# --------------------------------------------------------------------------------------------- feedback


def _clip(text: str) -> str:
    """A value for feedback: control characters and lone surrogates escaped (``visible``), then at most
    VALUE_LINES lines of VALUE_LINE_CHARS, VALUE_CHARS in all."""
    text = visible(text)
    lines = text.split("\n")
    out = [ln if len(ln) <= VALUE_LINE_CHARS else ln[:VALUE_LINE_CHARS] + " …" for ln in lines[:VALUE_LINES]]
    if len(lines) > VALUE_LINES:
        out.append(f"… ({len(lines) - VALUE_LINES} more lines)")
    s = "\n".join(out)
    return s if len(s) <= VALUE_CHARS else s[:VALUE_CHARS] + " …"


def _block(text: str) -> str:
    """A fenced block whose fence is longer than any backtick run inside, so the content cannot close it."""
    runs = [len(m) for m in re.findall(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return f"{fence}\n{_clip(text.rstrip(chr(10)))}\n{fence}"


def _display_input(spec: TestSpec, index: int) -> str:
    return spec.inputs[index] if spec.testtype != "assert" else ""


def check_code_feedback(code_feedback: str) -> None:
    """Raise ValueError naming ``code_feedback`` unless it is one of CODE_FEEDBACK_MODES."""
    if code_feedback not in CODE_FEEDBACK_MODES:
        raise ValueError(f"code_feedback: got {code_feedback!r}; allowed values are "
                         f"{', '.join(map(repr, CODE_FEEDBACK_MODES))}")


def build_feedback(spec: TestSpec, records: list[TestRecord], *, code_found: bool, truncated: bool,
                   code_feedback: str = "first_failure") -> str | None:
    """Feedback text like the reference: only failing cases, delimited untrusted text, <= 2,000 chars.

    The first crash (runtime error, memory or output limit) in test order, else the first time-out, else up
    to two wrong answers, shortest first: by input + expected output ("first_failure"), or by input + the
    program's output as the reference sorts them ("all_tests"), ties in test order."""
    if not code_found:
        return TRUNCATION_MESSAGE if truncated else FORMAT_MESSAGE
    failed = [r for r in records if r.verdict != "passed"]
    if not failed:
        return None
    n = len(spec)
    crash = next((r for r in failed if r.verdict in CRASHES), None)
    if crash is not None:
        what = {"runtime_error": "raised a runtime error", "memory_limit": "exceeded the memory limit",
                "output_limit": "printed more output than allowed"}[crash.verdict]
        parts = [f"Your code {what} on test {crash.index + 1} of {n}."]
        if crash.message:
            parts.append("Error message (from your program):\n" + _block(crash.message))
        if spec.testtype != "assert":
            parts.append("Last executed input:\n" + _block(_display_input(spec, crash.index)))
        elif crash.output:
            parts.append("Last call:\n" + _block(crash.output))
        return _cap(parts)
    slow = next((r for r in failed if r.verdict == "time_limit"), None)
    if slow is not None:
        parts = [f"Your code exceeded the time limit ({spec.time_limit:g} s) on test {slow.index + 1} of {n}."]
        if spec.testtype != "assert":
            parts.append("Input:\n" + _block(_display_input(spec, slow.index)))
        return _cap(parts)
    wrong = [r for r in failed if r.verdict == "wrong_answer"]
    if spec.testtype == "assert":
        r = wrong[0]
        parts = ["Your code failed the tests. Failed check:\n" + _block(r.message or "assertion failed")]
        if r.output:
            parts.append("Last call (arguments and your return value):\n" + _block(r.output))
        return _cap(parts)
    if code_feedback == "all_tests":
        wrong.sort(key=lambda r: (len(spec.inputs[r.index]) + len(r.output), r.index))
    else:
        wrong.sort(key=lambda r: (len(spec.inputs[r.index]) + len(spec.outputs[r.index]), r.index))
    parts = [f"Your code produced a wrong answer on {len(wrong)} of the {len(records)} tests run"
             f" ({n} in total)."]
    for r in wrong[:2]:
        parts.append(
            f"Test {r.index + 1}:\nInput:\n{_block(spec.inputs[r.index])}\nOutput:\n{_block(r.output)}\n"
            f"Expected:\n{_block(spec.outputs[r.index])}"
        )
    return _cap(parts)


def _cap(parts: list[str]) -> str:
    """Join whole parts while they fit in FEEDBACK_CAP (a cut never splits a fenced block)."""
    out = parts[0][:FEEDBACK_CAP]
    for p in parts[1:]:
        if len(out) + 2 + len(p) > FEEDBACK_CAP:
            break
        out += "\n\n" + p
    return out


# --------------------------------------------------------------------------------------------- evaluation


def _result(spec: TestSpec, records: list[TestRecord], *, sparse: bool, code_found: bool,
            truncated: bool, code_feedback: str) -> CodeResult:
    total = len(spec)
    passed = sum(r.verdict == "passed" for r in records)
    reward = (1.0 if passed == total else 0.0) if sparse else passed / total
    return CodeResult(reward=reward, passed=passed, total=total, tests=records,
                      feedback=build_feedback(spec, records, code_found=code_found, truncated=truncated,
                                              code_feedback=code_feedback))


def _stop_rule(sparse: bool, code_feedback: str, stop_at_first_failure: bool | None):
    """After which test record to stop running the remaining tests of a response."""
    if stop_at_first_failure is not None:
        return (lambda r: r.verdict != "passed") if stop_at_first_failure else (lambda r: False)
    if not sparse:
        return lambda r: False  # the reward is the fraction passed: every test counts
    if code_feedback == "first_failure":
        return lambda r: r.verdict != "passed"
    return lambda r: r.verdict in CRASHES  # the feedback is settled (and the sparse reward is 0)


def _run_batch(runner: Any, spec: TestSpec, code: str, stop_after, records: list[TestRecord]) -> None:
    """Stream all tests of one solution through the executor; judge each reply here as it arrives and ask
    the executor to stop once ``stop_after(record)`` holds. Fills ``records`` in test order."""

    def on_result(index: int, reply: dict[str, Any]) -> bool:
        if index != len(records) or (records and stop_after(records[-1])):
            return False  # a reply that crossed our stop request
        records.append(judge(spec, index, reply))
        return not stop_after(records[-1])

    job = make_job(spec, code, 0)
    del job["input"]
    job.update(op="batch", inputs=list(spec.inputs))
    try:
        runner.batch(job, on_result)
    except SandboxError:
        pass  # the caller runs the remaining tests one by one on the replaced executor


def evaluate(
    response: str,
    tests: TestSpec | dict | str,
    *,
    sparse: bool = True,
    stop_at_first_failure: bool | None = None,
    truncated: bool = False,
    code_feedback: str = "all_tests",
    sandbox: Sandbox | None = None,
) -> CodeResult:
    """Run the last python block of ``response`` against ``tests`` in the sandbox (sequentially).

    sparse: reward 1.0 only when all tests pass (else the fraction passed). code_feedback: how the feedback
    is gathered, "all_tests" (the reference's: a sparse run goes on past wrong answers and time-outs and
    stops at the first runtime error) or "first_failure" (a sparse run stops at the first failing test); see
    CODE_FEEDBACK_MODES. stop_at_first_failure: overrides when to stop (True: at the first failing test,
    False: never). truncated: the response hit the length limit (changes the format-error feedback).
    sandbox: a SandboxPool / SandboxClient (default: the shared pool).
    """
    check_code_feedback(code_feedback)
    spec = TestSpec.parse(tests)
    stop_after = _stop_rule(sparse, code_feedback, stop_at_first_failure)
    code = extract_code(response)
    if code is None:
        return _result(spec, [TestRecord(verdict="format_error")], sparse=sparse, code_found=False,
                       truncated=truncated, code_feedback=code_feedback)
    box = sandbox if sandbox is not None else default_pool()
    records: list[TestRecord] = []
    with box.lease() as runner:  # one slot, one zygote for this solution's tests
        if spec.testtype != "assert" and hasattr(runner, "batch"):
            _run_batch(runner, spec, code, stop_after, records)
        if not records or not stop_after(records[-1]):
            for i in range(len(records), len(spec)):  # no batch support, or the batch broke off
                rec = judge(spec, i, runner.run(make_job(spec, code, i)))
                records.append(rec)
                if stop_after(rec):
                    break
    return _result(spec, records, sparse=sparse, code_found=True, truncated=truncated,
                   code_feedback=code_feedback)


def evaluate_many(
    responses: Sequence[str],
    tests: Sequence[TestSpec | dict | str],
    *,
    sparse: bool = True,
    stop_at_first_failure: bool | None = None,
    truncated: Sequence[bool] | None = None,
    code_feedback: str = "all_tests",
    sandbox: Sandbox | None = None,
) -> list[CodeResult]:
    """``evaluate`` for many responses, run in parallel across the sandbox's slots (order preserved)."""
    check_code_feedback(code_feedback)
    if len(responses) != len(tests):
        raise ValueError(f"tests: {len(tests)} test specs for {len(responses)} responses")
    flags = list(truncated) if truncated is not None else [False] * len(responses)
    box = sandbox if sandbox is not None else default_pool()
    specs = [TestSpec.parse(t) for t in tests]
    with ThreadPoolExecutor(max_workers=max(1, box.slots)) as ex:
        futs = [ex.submit(evaluate, r, s, sparse=sparse, stop_at_first_failure=stop_at_first_failure,
                          truncated=f, code_feedback=code_feedback, sandbox=box)
                for r, s, f in zip(responses, specs, flags, strict=True)]
        return [f.result() for f in futs]
