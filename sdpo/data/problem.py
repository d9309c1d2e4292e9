"""The problem format of test-time solving and the code prompt shared with dataset importers.

A problem is a JSON object::

    {"title": "Two sums", "statement": "markdown ...",
     "tests": {"inputs": [...], "outputs": [...], "testtype": "stdin" | "functional", "fn_name": ...,
               "time_limit": 6},
     "hidden_tests": {... same shape ...},      # optional; without it the public tests decide
     "starter_code": "class Solution: ...",    # optional
     "system": "You are ...",                  # optional; default CODE_SYSTEM_PROMPT
     "id": "abc123", "meta": {...}}            # optional

``Problem.parse`` rejects an invalid problem with a ``ValueError`` whose message starts with the field name
(``tests.outputs: ...``). Rows of LiveCodeBench (``sdpo.data.lcb``) and of lasgroup-format datasets
(``Problem.from_row``) convert to it.

The prompt follows the reference's LiveCodeBench prompt (lasgroup/SDPO ``data/utils/livecodebench.py``): the
statement, then, when there is starter code, the function signature the solution must have (``self``
removed, as the reference's preprocessing does), as the user message; the instruction to answer with one
Python code block goes in the system message. A problem may bring its own system message (``system``): the
built-in toy-world examples use the toy world's, the one the demo model was trained with.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sdpo.data.lasgroup import row_to_task
from sdpo.data.tasks import Task
from sdpo.envs.code import TestSpec

CODE_SYSTEM_PROMPT = (
    "You are an expert Python programmer. You will be given a programming problem; write a correct and "
    "efficient Python 3 program that satisfies the specification and passes all tests. You may first "
    "explain your reasoning briefly. End your answer with the complete solution in a single "
    "```python ... ``` code block. If a function signature is given, implement that function; otherwise "
    "read the input from standard input and print the answer to standard output."
)

MAX_TITLE_CHARS = 500
MAX_STATEMENT_BYTES = 100_000
MAX_STARTER_CODE_BYTES = 20_000
MAX_SYSTEM_BYTES = 20_000
MAX_TEST_CASES = 10_000
MAX_TESTS_BYTES = 256 * 1024 * 1024

_KNOWN_KEYS = ("title", "statement", "tests", "hidden_tests", "starter_code", "system", "id", "meta")


def parse_signature(starter_code: str, fn_name: str | None = None) -> str | None:
    """The ``def`` line(s) of the function to implement in ``starter_code``, without ``self``.

    Picks the ``def`` of ``fn_name`` when given and present, else the first ``def``; a multi-line signature
    is kept up to its closing ``:``. Returns None when the starter code has no ``def``.

    >>> parse_signature("class Solution:\\n    def add(self, a: int, b: int) -> int:\\n        ")
    'def add(a: int, b: int) -> int:'
    """
    defs = [m.start() for m in re.finditer(r"(?m)^[ \t]*def[ \t]+\w+", starter_code)]
    if not defs:
        return None
    start = defs[0]
    if fn_name:
        for pos in defs:
            if re.match(rf"[ \t]*def[ \t]+{re.escape(fn_name)}\b", starter_code[pos:]):
                start = pos
                break
    text = starter_code[start:].lstrip()
    depth = 0
    end = len(text)
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == ":" and depth == 0:
            end = i + 1
            break
    sig = " ".join(text[:end].split())
    sig = re.sub(r"\(\s*self\s*,\s*", "(", sig)
    sig = re.sub(r"\(\s*self\s*\)", "()", sig)
    return sig.replace("( ", "(").replace(" )", ")")


def code_user_prompt(statement: str, starter_code: str | None = None, fn_name: str | None = None) -> str:
    """The user message of a code question: the statement, then the required signature if any."""
    prompt = statement.rstrip()
    sig = parse_signature(starter_code, fn_name) if starter_code and starter_code.strip() else None
    if sig:
        prompt += f"\n\nYour solution should have the following signature:\n```python\n{sig}\n```"
    return prompt


def code_messages(statement: str, starter_code: str | None = None, fn_name: str | None = None, *,
                  system: str | None = None) -> list[dict[str, str]]:
    """System + user messages of a code question (``system``, default ``CODE_SYSTEM_PROMPT``, and
    ``code_user_prompt``)."""
    return [
        {"role": "system", "content": system or CODE_SYSTEM_PROMPT},
        {"role": "user", "content": code_user_prompt(statement, starter_code, fn_name)},
    ]


def _spec(value: Any, name: str) -> Any:
    if isinstance(value, str):
        if len(value.encode("utf-8", "surrogatepass")) > MAX_TESTS_BYTES:
            raise ValueError(f"{name}: larger than {MAX_TESTS_BYTES} bytes")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not valid JSON ({e.msg})") from None
    if not isinstance(value, (dict, TestSpec)):
        raise ValueError(f"{name}: expected an object with inputs/outputs/testtype, got {type(value).__name__}")
    if isinstance(value, dict):
        for key in ("inputs", "outputs"):
            if (key in value or value.get("testtype") != "assert") and not isinstance(value.get(key), list):
                raise ValueError(f"{name}.{key}: expected a list of strings, got {type(value.get(key)).__name__}")
    try:
        spec = TestSpec.parse(value)
    except TypeError as e:
        raise ValueError(f"{name}: {e}") from None
    except ValueError as e:
        raise ValueError(f"{name}.{e}") from None
    if len(spec) < 1:
        raise ValueError(f"{name}.inputs: at least one test case is required")
    if len(spec.inputs) > MAX_TEST_CASES:
        raise ValueError(f"{name}.inputs: {len(spec.inputs)} test cases; at most {MAX_TEST_CASES} are allowed")
    size = sum(len(s) for s in spec.inputs) + sum(len(s) for s in spec.outputs)
    if size > MAX_TESTS_BYTES:
        raise ValueError(f"{name}: test data of {size} characters; at most {MAX_TESTS_BYTES} are allowed")
    return spec


@dataclass
class Problem:
    """One coding problem for test-time solving. See the module docs for the JSON form.

    tests: public tests (reward and feedback); hidden_tests: held-out tests that decide discovery (None:
        the public tests decide); starter_code: code the solution must complete (LeetCode-style), or None.
    system: the system message of the prompt, or None for ``CODE_SYSTEM_PROMPT``.
    """

    title: str
    statement: str
    tests: Any
    hidden_tests: Any = None
    starter_code: str | None = None
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    system: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.title, str) or not self.title.strip():
            raise ValueError(f"title: required non-empty string, got {self.title!r}")
        if len(self.title) > MAX_TITLE_CHARS:
            raise ValueError(f"title: {len(self.title)} characters; at most {MAX_TITLE_CHARS} are allowed")
        if not isinstance(self.statement, str) or not self.statement.strip():
            raise ValueError("statement: required non-empty string")
        size = len(self.statement.encode("utf-8", "surrogatepass"))
        if size > MAX_STATEMENT_BYTES:
            raise ValueError(f"statement: {size} bytes of UTF-8; at most {MAX_STATEMENT_BYTES} are allowed")
        self.tests = _spec(self.tests, "tests")
        if self.hidden_tests is not None:
            self.hidden_tests = _spec(self.hidden_tests, "hidden_tests")
        if self.starter_code is not None:
            if not isinstance(self.starter_code, str):
                raise ValueError(f"starter_code: expected a string or null, got {type(self.starter_code).__name__}")
            size = len(self.starter_code.encode("utf-8", "surrogatepass"))
            if size > MAX_STARTER_CODE_BYTES:
                raise ValueError(f"starter_code: {size} bytes; at most {MAX_STARTER_CODE_BYTES} are allowed")
            if not self.starter_code.strip():
                self.starter_code = None
        if self.system is not None:
            if not isinstance(self.system, str):
                raise ValueError(f"system: expected a string or null, got {type(self.system).__name__}")
            size = len(self.system.encode("utf-8", "surrogatepass"))
            if size > MAX_SYSTEM_BYTES:
                raise ValueError(f"system: {size} bytes; at most {MAX_SYSTEM_BYTES} are allowed")
            if not self.system.strip() or self.system == CODE_SYSTEM_PROMPT:
                self.system = None
        if self.id is not None and not isinstance(self.id, str):
            self.id = str(self.id)
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta: expected an object, got {type(self.meta).__name__}")

    @classmethod
    def parse(cls, obj: dict[str, Any] | str) -> Problem:
        """Parse a problem from a dict or a JSON string; ValueError names the bad field."""
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise ValueError(f"problem: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"problem: expected a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(_KNOWN_KEYS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown field; known fields are {', '.join(_KNOWN_KEYS)}")
        for name in ("title", "statement", "tests"):
            if name not in obj:
                raise ValueError(f"{name}: required field is missing")
        return cls(
            title=obj["title"],
            statement=obj["statement"],
            tests=obj["tests"],
            hidden_tests=obj.get("hidden_tests"),
            starter_code=obj.get("starter_code"),
            system=obj.get("system"),
            id=obj.get("id"),
            meta=obj.get("meta") or {},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form accepted by ``parse``."""
        out: dict[str, Any] = {
            "title": self.title,
            "statement": self.statement,
            "tests": self.tests.to_dict(),
            "hidden_tests": self.hidden_tests.to_dict() if self.hidden_tests is not None else None,
            "starter_code": self.starter_code,
        }
        if self.system is not None:
            out["system"] = self.system
        if self.id is not None:
            out["id"] = self.id
        if self.meta:
            out["meta"] = self.meta
        return out

    def messages(self) -> list[dict[str, str]]:
        """The chat prompt: ``system`` (default ``CODE_SYSTEM_PROMPT``) then the statement with the starter-code
        signature; with ``meta["prompt"] == "reference"`` the reference's single user message
        (``sdpo.data.lcb``)."""
        if self.meta.get("prompt") == "reference":
            from sdpo.data.lcb import reference_code_messages  # sdpo.data.lcb imports this module

            return reference_code_messages(self.statement, self.starter_code, self.tests.fn_name)
        return code_messages(self.statement, self.starter_code, self.tests.fn_name, system=self.system)

    def to_task(self) -> Task:
        """A code ``Task`` (tests = public tests, hidden_tests kept; title/statement/starter code in meta)."""
        meta = dict(self.meta)
        meta.update(title=self.title, statement=self.statement, starter_code=self.starter_code)
        return Task(id=self.id or self.title, messages=self.messages(), kind="code", tests=self.tests,
                    hidden_tests=self.hidden_tests, meta=meta)

    @classmethod
    def from_task(cls, task: Task) -> Problem:
        """Problem of a code task: title/statement/starter code from ``task.meta`` when present, else the
        task id and the user message."""
        if task.kind != "code":
            raise ValueError(f"kind: only code tasks convert to a problem, got {task.kind!r}")
        statement = task.meta.get("statement")
        if not statement:
            statement = next((m["content"] for m in reversed(task.messages) if m["role"] == "user"), "")
        title = task.meta.get("title") or task.id
        meta = {k: v for k, v in task.meta.items() if k not in ("title", "statement", "starter_code")}
        system = next((m["content"] for m in task.messages if m["role"] == "system"), None)
        return cls(title=str(title), statement=statement, tests=task.tests, hidden_tests=task.hidden_tests,
                   starter_code=task.meta.get("starter_code"), id=task.id, meta=meta, system=system)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Problem:
        """Problem of a lasgroup-format code row (see ``sdpo.data.lasgroup``)."""
        return cls.from_task(row_to_task(row))


def load_problem(path: str) -> Problem:
    """Read a problem JSON file."""
    with open(path, encoding="utf-8") as f:
        return Problem.parse(f.read())
