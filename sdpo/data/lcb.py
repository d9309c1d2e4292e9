"""LiveCodeBench import: ``code_generation_lite`` JSON lines -> tasks and problems, safely.

Each LiveCodeBench row has ``question_title``, ``question_content``, ``platform``, ``question_id``,
``contest_id``, ``contest_date`` (ISO date-time), ``starter_code``, ``difficulty``, ``public_test_cases``
(a JSON list of ``{"input", "output", "testtype"}``), ``private_test_cases`` (the same list as JSON, or
``base64(zlib(pickle(json_string)))``) and ``metadata`` (JSON with ``func_name`` for functional problems).

Conversion (following lasgroup/SDPO ``data/utils/livecodebench.py``, but keeping public *and* private tests):

- prompt (``prompt="ours"``, the default): ``sdpo.data.problem.code_messages``: the statement, plus the starter
  code's signature (``self`` removed) when there is starter code; a system message asks for one Python code
  block. ``prompt="reference"``: the reference's single user message, its ``CODE_PROMPT`` around the same
  statement and signature line (:func:`reference_code_messages`), no system message; the problems of
  problems.jsonl then carry ``meta.prompt = "reference"`` so that a solve prompts the same way.
- tests: public then private cases, ``testtype`` "stdin" or "functional" (one type per problem),
  ``fn_name`` = ``metadata.func_name``, ``time_limit`` = 6 s (``TIME_LIMIT``).
- the pickle layer is never given to ``pickle.loads``: its opcodes are checked first against a whitelist
  that can only build one plain ``str`` (no imports, no calls), then a restricted unpickler that refuses
  every global decodes it. Anything else is a ``LcbError`` naming the file, line and question_id.

Splits: by contest date (``cutoff``: questions before it -> train, on/after -> test), or, without a
cutoff, the reference's LiveCodeBench v6 setup: the same questions in both files, train with a seeded
fraction of each question's tests (``sdpo.data.lasgroup.split_tests``), test with all of them.
The reference's v6 window is ``since=2025-02-01, until=2025-05-01``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import pickletools
import shutil
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdpo.data.lasgroup import check_fraction, split_tests, task_to_row
from sdpo.data.problem import Problem, code_messages, parse_signature
from sdpo.data.tasks import Task
from sdpo.envs.code import TestSpec

TIME_LIMIT = 6.0
PROMPTS = ("ours", "reference")
#: The reference's code prompt, verbatim (lasgroup/SDPO data/format/prompts.py:3, ``CODE_PROMPT``), which its
#: LiveCodeBench import wraps around each problem (data/format/code.py:26). Its "1 second" is its own wording;
#: the tests' time limit is ``TIME_LIMIT`` there as here.
REFERENCE_CODE_PROMPT = (
    "You are a coding expert. You will be given a coding problem, and you need to write a correct Python program "
    "that matches the specification and passes all tests. The time limit is 1 second. You may start by outlining "
    "your thought process. In the end, please provide the complete code in a code block enclosed with ``` ```."
    "\n\n{problem}"
)
DATASET = "livecodebench"
MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024

# Opcodes a pickle of one plain str can consist of (protocols 0-5); nothing here imports or calls.
_STR_PICKLE_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT",
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
})
_STR_OPCODES = frozenset({"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"})


class LcbError(ValueError):
    """A LiveCodeBench row cannot be imported; the message names the row and the field."""


class _StrOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global and persistent id (defence in depth after the opcode check)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def unpickle_str(data: bytes) -> str:
    """Decode a pickle that holds exactly one plain ``str``; anything else raises ValueError.

    The opcode stream is validated (``pickletools.genops`` only parses) before any unpickling happens.
    """
    strings = 0
    ops = pickletools.genops(data)
    while True:
        try:
            op, _arg, pos = next(ops)
        except StopIteration:
            break
        except Exception as e:  # malformed stream: genops raises various errors
            raise ValueError(f"malformed pickle ({type(e).__name__}: {e})") from None
        if op.name not in _STR_PICKLE_OPCODES:
            raise ValueError(f"pickle opcode {op.name} at byte {pos} is not allowed (only a plain str is)")
        strings += op.name in _STR_OPCODES
    if strings != 1:
        raise ValueError(f"expected a pickle of one str, found {strings} strings")
    try:
        value = _StrOnlyUnpickler(io.BytesIO(data)).load()
    except Exception as e:
        raise ValueError(f"unpickling failed ({type(e).__name__}: {e})") from None
    if type(value) is not str:
        raise ValueError(f"expected a pickled str, got {type(value).__name__}")
    return value


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, MAX_DECOMPRESSED_BYTES)
    if d.unconsumed_tail:
        raise ValueError(f"decompressed data exceeds {MAX_DECOMPRESSED_BYTES} bytes")
    if not d.eof:
        raise ValueError("truncated zlib stream")
    return out


def decode_test_cases(value: Any) -> list[dict[str, Any]]:
    """Test cases of a ``public_test_cases``/``private_test_cases`` value: a JSON list (string or already
    parsed), or base64 of zlib of a pickled JSON string. Raises ValueError explaining what is wrong."""
    if isinstance(value, list):
        cases = value
    elif not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    elif not value.strip():
        cases = []
    elif value.lstrip().startswith("["):
        try:
            cases = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid JSON ({e.msg})") from None
    else:
        try:
            raw = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"neither a JSON list nor valid base64 ({e})") from None
        try:
            inflated = _inflate(raw)
        except zlib.error as e:
            raise ValueError(f"base64 payload is not zlib data ({e})") from None
        text = unpickle_str(inflated)
        try:
            cases = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"decoded payload is not JSON ({e.msg})") from None
    if not isinstance(cases, list):
        raise ValueError(f"expected a list of test cases, got {type(cases).__name__}")
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("input"), str) or not isinstance(
            case.get("output"), str
        ):
            raise ValueError(f"case {i}: expected an object with string 'input' and 'output'")
    return cases


def parse_date(value: Any) -> datetime:
    """A naive (UTC) datetime from an ISO date or date-time string (or a datetime)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO date: {value!r}") from None
    else:
        raise ValueError(f"expected an ISO date string, got {type(value).__name__}")
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def reference_code_messages(statement: str, starter_code: str | None = None,
                            fn_name: str | None = None) -> list[dict[str, str]]:
    """The reference's LiveCodeBench prompt: one user message, ``REFERENCE_CODE_PROMPT`` around the statement
    and, with starter code, "Your solution should have the following signature: ```python ...```" (lasgroup/SDPO
    data/utils/livecodebench.py:44-46; ``self`` removed as its data/preprocess.py:69-71 does)."""
    problem = statement
    sig = parse_signature(starter_code, fn_name) if starter_code and starter_code.strip() else None
    if sig:
        problem += f"\n\nYour solution should have the following signature: ```python\n{sig}\n```"
    return [{"role": "user", "content": REFERENCE_CODE_PROMPT.format(problem=problem)}]


def prompt_messages(prompt: str, statement: str, starter_code: str | None = None,
                    fn_name: str | None = None) -> list[dict[str, str]]:
    """The messages of a code question in ``prompt`` style: "ours" (system + user) or "reference"."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt: got {prompt!r}; allowed values are {', '.join(map(repr, PROMPTS))}")
    if prompt == "reference":
        return reference_code_messages(statement, starter_code, fn_name)
    return code_messages(statement, starter_code, fn_name)


def row_to_task(row: dict[str, Any], *, where: str = "<row>", prompt: str = "ours") -> Task:
    """Convert one LiveCodeBench row to a code ``Task`` with all (public + private) tests.

    ``Task.id`` is ``"livecodebench/{question_id}"``; meta keeps title, statement, starter_code, platform,
    contest_id, contest_date (ISO), difficulty, dataset and idx (= question_id), and ``prompt`` when it is
    "reference" (the messages' style, see the module docstring).
    """
    if not isinstance(row, dict):
        raise LcbError(f"{where}: expected a JSON object, got {type(row).__name__}")
    qid = row.get("question_id")
    if not isinstance(qid, (str, int)) or str(qid).strip() == "":
        raise LcbError(f"{where}: field 'question_id': required")
    qid = str(qid)

    def bad(field: str, message: str) -> LcbError:
        return LcbError(f"{where} (question_id {qid}): field {field!r}: {message}")

    statement = row.get("question_content")
    if not isinstance(statement, str) or not statement.strip():
        raise bad("question_content", "required non-empty string")
    title = row.get("question_title") or qid
    starter = row.get("starter_code") or ""
    if not isinstance(starter, str):
        raise bad("starter_code", f"expected a string, got {type(starter).__name__}")
    try:
        date = parse_date(row.get("contest_date"))
    except ValueError as e:
        raise bad("contest_date", str(e)) from None
    meta_raw = row.get("metadata") or "{}"
    try:
        metadata = json.loads(meta_raw) if isinstance(meta_raw, str) else meta_raw
    except json.JSONDecodeError as e:
        raise bad("metadata", f"invalid JSON ({e.msg})") from None
    if not isinstance(metadata, dict):
        raise bad("metadata", f"expected a JSON object, got {type(metadata).__name__}")
    fn_name = metadata.get("func_name") or None

    cases: list[dict[str, Any]] = []
    for field in ("public_test_cases", "private_test_cases"):
        try:
            cases += decode_test_cases(row.get(field) or "[]")
        except ValueError as e:
            raise bad(field, str(e)) from None
    if not cases:
        raise bad("private_test_cases", "the problem has no test cases")
    types = {c.get("testtype", "stdin") for c in cases}
    if len(types) != 1 or not types <= {"stdin", "functional"}:
        raise bad("private_test_cases", f"testtype must be one of 'stdin'/'functional' for all cases, got {sorted(types)}")
    testtype = types.pop()
    if testtype == "functional" and not fn_name:
        raise bad("metadata", "functional tests need metadata.func_name")
    try:
        tests = TestSpec(inputs=[c["input"] for c in cases], outputs=[c["output"] for c in cases],
                         testtype=testtype, fn_name=fn_name, time_limit=TIME_LIMIT)
    except ValueError as e:
        raise bad("private_test_cases", str(e)) from None

    meta = {
        "dataset": DATASET,
        "idx": qid,
        "title": str(title),
        "statement": statement,
        "starter_code": starter or None,
        "platform": row.get("platform"),
        "contest_id": row.get("contest_id"),
        "contest_date": date.isoformat(),
        "difficulty": row.get("difficulty"),
    }
    if prompt == "reference":
        meta["prompt"] = prompt
    return Task(id=f"{DATASET}/{qid}", messages=prompt_messages(prompt, statement, starter, fn_name), kind="code",
                tests=tests, meta=meta)


def iter_rows(paths: Iterable[str | Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", row)`` for every row of LiveCodeBench JSON-lines files (or JSON arrays)."""
    for path in map(Path, paths):
        with path.open(encoding="utf-8") as f:
            first = f.read(1)
            while first and first.isspace():
                first = f.read(1)
            f.seek(0)
            if first == "[":
                try:
                    rows = json.load(f)
                except json.JSONDecodeError as e:
                    raise LcbError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
                for i, row in enumerate(rows, start=1):
                    yield f"{path}[{i - 1}]", row
                continue
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LcbError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
                yield f"{path}:{lineno}", row


def iter_tasks(paths: Iterable[str | Path], *, since: datetime | str | None = None,
               until: datetime | str | None = None, duplicates: list[str] | None = None,
               prompt: str = "ours") -> Iterator[Task]:
    """Tasks of all rows with ``since <= contest_date < until`` (either bound optional), in file order,
    converted one row at a time (memory stays bounded by the largest row).

    A question_id seen before (e.g. in overlapping release files) is skipped and, when ``duplicates`` is a
    list, appended to it. prompt: the messages' style ("ours" | "reference").
    """
    lo = parse_date(since) if since is not None else None
    hi = parse_date(until) if until is not None else None
    seen: set[str] = set()
    for where, row in iter_rows(paths):
        task = row_to_task(row, where=where, prompt=prompt)
        date = parse_date(task.meta["contest_date"])
        if (lo is not None and date < lo) or (hi is not None and date >= hi):
            continue
        if task.id in seen:
            if duplicates is not None:
                duplicates.append(task.id)
            continue
        seen.add(task.id)
        yield task


def load_tasks(paths: Iterable[str | Path], *, since: datetime | str | None = None,
               until: datetime | str | None = None) -> tuple[list[Task], int]:
    """All tasks of ``iter_tasks`` as a list, and the number of duplicates skipped."""
    dups: list[str] = []
    tasks = list(iter_tasks(paths, since=since, until=until, duplicates=dups))
    return tasks, len(dups)


def to_problems(tasks: Sequence[Task], *, fraction: float = 0.5, seed: int = 0) -> list[Problem]:
    """Problems for test-time solving: tests = the seeded ``fraction`` of each question's tests (the same
    draw as ``split_tests``), hidden_tests = all tests."""
    train, _ = split_tests(tasks, fraction, seed)
    return [Problem.from_task(t) for t in train]


@dataclass
class ImportSummary:
    """Counts of one ``import_lcb`` run and where the files went."""

    rows: int
    duplicates: int
    train: int
    test: int
    problems: int
    train_tests: int
    test_tests: int
    out_dir: str
    split: str

    def lines(self) -> list[str]:
        return [
            f"imported {self.rows} problems ({self.duplicates} duplicates skipped), split by {self.split}",
            f"train.jsonl: {self.train} problems, {self.train_tests} tests",
            f"test.jsonl: {self.test} problems, {self.test_tests} tests",
            f"problems.jsonl: {self.problems} problems",
            f"written to {self.out_dir}",
        ]


def import_lcb(paths: Sequence[str | Path], out_dir: str | Path, *, since: datetime | str | None = None,
               until: datetime | str | None = None, cutoff: datetime | str | None = None,
               split_tests_fraction: float = 0.5, seed: int = 0, prompt: str = "ours") -> ImportSummary:
    """Import LiveCodeBench files into ``out_dir``: train.jsonl + test.jsonl (lasgroup format, loadable
    with ``sdpo.data.lasgroup.load_split``) and problems.jsonl (``Problem`` format). See the module docs for
    the split rules. Rows are streamed (one in memory at a time) into temporary files that replace the
    outputs only when every row imported; on an invalid row ``LcbError`` is raised and nothing is written
    (a directory created by this call is removed again).

    train.jsonl rows carry only their own tests (as the reference's train.json); the full set is in
    test.jsonl, and in problems.jsonl as ``hidden_tests``. prompt: "ours" | "reference" (module docstring).
    """
    check_fraction("split_tests", split_tests_fraction, allow_one=True)
    if prompt not in PROMPTS:
        raise LcbError(f"prompt: got {prompt!r}; allowed values are {', '.join(map(repr, PROMPTS))}")
    lo_cut = parse_date(cutoff) if cutoff is not None else None
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    names = ("train", "test", "problems")
    tmp = {n: out / f".{n}.jsonl.partial" for n in names}
    counts = dict.fromkeys(("rows", "train", "test", "train_tests", "test_tests"), 0)
    dups: list[str] = []
    files = {n: tmp[n].open("w", encoding="utf-8") for n in names}

    def put(name: str, obj: dict[str, Any]) -> None:
        files[name].write(json.dumps(obj, ensure_ascii=False) + "\n")

    try:
        for task in iter_tasks(paths, since=since, until=until, duplicates=dups, prompt=prompt):
            counts["rows"] += 1
            (reduced,), _ = split_tests([task], split_tests_fraction, seed)
            try:
                problem = Problem.from_task(reduced)
            except ValueError as e:  # e.g. a statement over the problem size limit
                raise LcbError(f"question_id {task.meta['idx']}: not a valid problem: {e}") from None
            put("problems", problem.to_dict())
            if lo_cut is None:
                train, test = replace(reduced, hidden_tests=None), task
            elif parse_date(task.meta["contest_date"]) < lo_cut:
                train, test = task, None
            else:
                train, test = None, task
            for name, t in (("train", train), ("test", test)):
                if t is not None:
                    put(name, task_to_row(t))
                    counts[name] += 1
                    counts[f"{name}_tests"] += len(t.tests)
    except BaseException:
        for n in names:
            files[n].close()
            tmp[n].unlink(missing_ok=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    for n in names:
        files[n].close()
        tmp[n].replace(out / f"{n}.jsonl")
    if lo_cut is not None:
        split = f"contest date (cutoff {lo_cut.date().isoformat()})"
    else:
        split = f"tests ({split_tests_fraction:g} of each question's tests in train, seed {seed})"
    return ImportSummary(rows=counts["rows"], duplicates=len(dups), train=counts["train"], test=counts["test"],
                         problems=counts["rows"], train_tests=counts["train_tests"],
                         test_tests=counts["test_tests"], out_dir=str(out), split=split)


def find_problem(paths: Sequence[str | Path], question_id: str, *, fraction: float = 0.5,
                 seed: int = 0, prompt: str = "ours") -> Problem:
    """The problem with ``question_id`` in LiveCodeBench files (tests/hidden_tests as in ``to_problems``),
    prompted in ``prompt`` style.

    Only the matching row is converted, so one bad row elsewhere does not prevent finding it. Raises
    KeyError if no row has that id.
    """
    for where, row in iter_rows(paths):
        if isinstance(row, dict) and str(row.get("question_id")) == str(question_id):
            return to_problems([row_to_task(row, where=where, prompt=prompt)], fraction=fraction, seed=seed)[0]
    raise KeyError(f"question_id {question_id!r} not found in {', '.join(map(str, paths))}")
