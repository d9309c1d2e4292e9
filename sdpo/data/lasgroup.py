"""Loaders for lasgroup/SDPO-format datasets (JSON lines) and the reference's train/test splits.

Row format (one JSON object per line, as in lasgroup/SDPO ``datasets/*/{train,test}.json``):

- ``prompt`` (str, required): the user message.
- ``system`` (str | null, optional): a system message placed before the prompt.
- ``kind`` (required): "code" | "mcq" | "tooluse".
- ``tests``: code only (required there): a LiveCodeBench-style test spec as a JSON string or an object;
  "-", "" or null for other kinds.
- ``answer``: mcq: the correct letter; tooluse: a JSON string (or list) of ``{"Action", "Action_Input"}``.
- ``idx`` (optional): the row id; ``dataset`` (optional): the source dataset name.
- ``hidden_tests`` (optional, our extension): held-out tests in the same format as ``tests``.
- anything else (``description``, ``elo``, ``title``, ``contest_date``, ...) is kept in ``Task.meta``
  (except the large ``embedding`` vector, which is dropped).

``Task.id`` is ``"{dataset}/{idx}"`` (or ``str(idx)`` without a dataset, or ``"{file stem}:{line}"`` when the
row has no idx). A malformed line raises ``DatasetError`` naming the file, the line number and the field.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdpo.config import ConfigError
from sdpo.data.tasks import KINDS, Task
from sdpo.envs.code import TestSpec
from sdpo.envs.tooluse import parse_ground_truth

_EMPTY_TESTS = (None, "", "-")
_DROPPED_META = ("embedding",)
_CORE_KEYS = ("prompt", "system", "kind", "tests", "answer", "idx", "hidden_tests")


class DatasetError(ValueError):
    """A dataset row is malformed. ``path``, ``line`` (1-based) and ``field`` say where."""

    def __init__(self, path: str | Path, line: int, field: str, message: str):
        self.path = str(path)
        self.line = line
        self.field = field
        super().__init__(f"{path}:{line}: field {field!r}: {message}")


def _parse_tests(value: Any) -> Any:
    return TestSpec.parse(value)


def row_to_task(row: dict[str, Any], *, source: str | Path = "<row>", line: int = 1) -> Task:
    """Convert one lasgroup-format row to a ``Task`` (raises ``DatasetError`` naming the bad field)."""

    def bad(field: str, message: str) -> DatasetError:
        return DatasetError(source, line, field, message)

    if not isinstance(row, dict):
        raise bad("<row>", f"expected a JSON object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt", "required non-empty string")
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise bad("system", f"expected a string or null, got {type(system).__name__}")
    kind = row.get("kind")
    if kind not in KINDS:
        raise bad("kind", f"got {kind!r}; allowed values are {', '.join(map(repr, KINDS))}")

    tests = hidden = answer = None
    if kind == "code":
        if row.get("tests") in _EMPTY_TESTS:
            raise bad("tests", "required for kind 'code' (a JSON test spec)")
        try:
            tests = _parse_tests(row["tests"])
        except (ValueError, TypeError) as e:
            raise bad("tests", str(e)) from None
        if row.get("hidden_tests") not in _EMPTY_TESTS:
            try:
                hidden = _parse_tests(row["hidden_tests"])
            except (ValueError, TypeError) as e:
                raise bad("hidden_tests", str(e)) from None
        answer = row.get("answer")
    elif kind == "mcq":
        answer = row.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise bad("answer", f"kind 'mcq' needs the correct option letter, got {answer!r}")
        answer = answer.strip()
    else:  # tooluse
        raw = row.get("answer")
        try:
            parse_ground_truth(raw)  # validates
        except ValueError as e:
            raise bad("answer", f"kind 'tooluse': {e}") from None
        answer = json.loads(raw) if isinstance(raw, str) else raw

    idx = row.get("idx")
    dataset = row.get("dataset")
    if idx is None:
        task_id = f"{Path(str(source)).stem}:{line}"
    elif isinstance(dataset, str) and dataset:
        task_id = f"{dataset}/{idx}"
    else:
        task_id = str(idx)
    messages = []
    if system is not None and system.strip():
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    meta = {k: v for k, v in row.items() if k not in _CORE_KEYS and k not in _DROPPED_META}
    if idx is not None:
        meta["idx"] = idx
    return Task(id=task_id, messages=messages, kind=kind, tests=tests, answer=answer, hidden_tests=hidden,
                meta=meta)


def task_to_row(task: Task) -> dict[str, Any]:
    """Inverse of ``row_to_task``: a lasgroup-format row (tests as a JSON string, as the reference writes)."""
    system = next((m["content"] for m in task.messages if m["role"] == "system"), None)
    prompt = next((m["content"] for m in reversed(task.messages) if m["role"] == "user"), None)
    if prompt is None:
        raise ValueError(f"task {task.id!r}: no user message")
    row: dict[str, Any] = {k: v for k, v in task.meta.items()}
    row.setdefault("idx", task.id)
    row.update({"prompt": prompt, "system": system, "kind": task.kind})
    if task.kind == "code":
        row["tests"] = json.dumps(task.tests.to_dict(), ensure_ascii=False)
        if task.hidden_tests is not None:
            row["hidden_tests"] = json.dumps(task.hidden_tests.to_dict(), ensure_ascii=False)
        row.setdefault("answer", task.answer)
    else:
        row["tests"] = "-" if task.kind == "mcq" else None
        row["answer"] = task.answer if task.kind == "mcq" else json.dumps(task.answer, ensure_ascii=False)
    return row


def load_jsonl(path: str | Path) -> list[Task]:
    """Load a lasgroup-format JSON-lines file (blank lines are skipped). A JSON array file is accepted too."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(path, e.lineno, "<json>", f"invalid JSON ({e.msg})") from None
        return [row_to_task(row, source=path, line=i + 1) for i, row in enumerate(rows)]
    tasks = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(path, lineno, "<json>", f"invalid JSON ({e.msg} at column {e.colno})") from None
        tasks.append(row_to_task(row, source=path, line=lineno))
    return tasks


def write_jsonl(tasks: Iterable[Task], path: str | Path) -> int:
    """Write tasks as lasgroup-format JSON lines; returns the number of rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for task in tasks:
            f.write(json.dumps(task_to_row(task), ensure_ascii=False) + "\n")
            n += 1
    return n


def load_split(train_path: str | Path, test_path: str | Path) -> tuple[list[Task], list[Task]]:
    """Load a (train, test) pair of lasgroup-format files."""
    return load_jsonl(train_path), load_jsonl(test_path)


def check_fraction(field: str, value: Any, *, allow_one: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, f"got {value!r}; expected a number in (0, 1{']' if allow_one else ')'}")
    if not (0 < value < 1 or (allow_one and value == 1)):
        raise ConfigError(field, f"got {value!r}; expected a number in (0, 1{']' if allow_one else ')'}")


def subset_indices(n: int, fraction: float, rng: random.Random) -> list[int]:
    """Sorted indices of ``max(1, floor(n * fraction))`` of ``n`` items drawn without replacement."""
    keep = max(1, int(n * fraction))
    return sorted(rng.sample(range(n), keep))


def split_tests(tasks: Sequence[Task], fraction: float = 0.5, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """Split each code question's tests (reference ``data/split_tests.py``): returns (train, test).

    For every code task with stdin/functional tests and n test cases, the train copy keeps
    ``k = max(1, floor(n * fraction))`` cases drawn without replacement (in their original order) and gets
    the full spec as ``hidden_tests``; the test copy keeps all n cases (``hidden_tests`` unchanged). The
    draw of each question is seeded by ``(seed, task.id)`` alone, so it does not depend on the order or
    the other tasks. Tasks of other kinds and ``assert`` specs (one opaque test) appear unchanged in both.
    Both lists hold the same questions in the input order.
    """
    check_fraction("fraction", fraction, allow_one=True)
    train, test = [], []
    for task in tasks:
        spec = task.tests
        if task.kind != "code" or spec is None or spec.testtype == "assert":
            train.append(task)
            test.append(task)
            continue
        rng = random.Random(f"split_tests:{seed}:{task.id}")
        keep = subset_indices(len(spec.inputs), fraction, rng)
        sub = TestSpec(inputs=[spec.inputs[i] for i in keep], outputs=[spec.outputs[i] for i in keep],
                       testtype=spec.testtype, fn_name=spec.fn_name, time_limit=spec.time_limit,
                       assert_code=spec.assert_code)
        train.append(replace(task, tests=sub, hidden_tests=spec, meta=dict(task.meta)))
        test.append(replace(task, meta=dict(task.meta)))
    return train, test


def split_tasks(tasks: Sequence[Task], test_fraction: float = 0.1, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """Seeded question split (reference ``data/split_tasks.py``): returns (train, test).

    ``ceil(len(tasks) * test_fraction)`` questions, chosen by ``random.Random(seed)``, go to test (at least
    one stays in train); both lists keep the input order. Requires ``0 < test_fraction < 1`` and >= 2 tasks.
    """
    check_fraction("test_fraction", test_fraction, allow_one=False)
    n = len(tasks)
    if n < 2:
        raise ConfigError("tasks", f"got {n} task(s); a question split needs at least 2")
    n_test = min(n - 1, math.ceil(n * test_fraction))
    chosen = set(random.Random(seed).sample(range(n), n_test))
    return ([t for i, t in enumerate(tasks) if i not in chosen], [t for i, t in enumerate(tasks) if i in chosen])
