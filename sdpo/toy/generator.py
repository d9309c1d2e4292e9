"""Toy coding world: seeded small programming problems over integer lists and lowercase words.

A problem is a *composition* of primitives: read the input, apply ``ops`` in order, print the result. Each
primitive has one sentence of statement text, one line of reference code and a Python semantics, so the
statement, the reference solution and the expected outputs always agree. Difficulty is the composition depth
(the number of operations; the final print of a list/string does not count, a final aggregate does).

Example (depth 3)::

    Read one line of space-separated integers from standard input (the line may be empty). Then, in order:
    1. Add 3 to every element.
    2. Keep only the even elements.
    3. Print the sum of the elements (0 if there are none).

    ```python
    xs = list(map(int, input().split()))
    xs = [x + 3 for x in xs]
    xs = [x for x in xs if x % 2 == 0]
    print(sum(xs))
    ```

Splits are deterministic and disjoint by construction:

- every problem has a ``key`` (its canonical op string); a stable hash of the key puts it in one *bucket*:
  ``test`` (10%), ``rl`` (10%, the RL train split) or ``pretrain`` (80%, the pretraining corpus);
- every composition has a ``signature`` (op names without parameters); a stable hash marks ~25% of the
  depth-3 signatures and all depth >= 4 signatures as *held out*. Hard problems (depth 3-4) use only held-out
  signatures; train, test and the pretraining corpus never do.

``write_split(out_dir, n_train, n_test, seed)`` writes ``train.jsonl``, ``test.jsonl`` and ``hard.jsonl`` in
the lasgroup/SDPO row format (``prompt``, ``system``, ``kind``, ``tests`` as a JSON string), loadable by
``sdpo.data.lasgroup``.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpo.data.tasks import Task
from sdpo.envs.code import TestSpec

SYSTEM_PROMPT = "You are a Python programmer. Answer with one ```python code block."
INSTRUCTION = "Write a Python program that solves this. Put it in a ```python block."
DATASET = "toyworld"
FAMILIES = ("list", "str")
MAX_DEPTH = 4
N_TESTS = 8

Value = Any  # list[int] | str | int


@dataclass(frozen=True)
class Prim:
    """One primitive. ``text``/``code`` are format strings over ``{k}`` (int) or ``{c}``/``{d}`` (letters).

    kind: "map" (same family in and out), "final" (prints an aggregate; ends the composition) or "bug" (a
        wrong final that only near-miss attempts use).
    params: the parameter domain, one tuple of values per instance (empty tuple: no parameter).
    """

    name: str
    family: str
    kind: str
    text: str
    code: str
    fn: Callable[..., Value]
    params: tuple[tuple[Any, ...], ...] = ((),)
    slots: tuple[str, ...] = ()


def _ints(lo: int, hi: int) -> tuple[tuple[int], ...]:
    return tuple((k,) for k in range(lo, hi + 1))


_LETTERS = "aeiorstn"  # frequent letters, so letter-parameterised ops usually matter
_PAIRS = tuple((a, b) for a in "aeio" for b in "xyz")


def _cumsum(xs: list[int]) -> list[int]:
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return out


PRIMITIVES: dict[str, Prim] = {p.name: p for p in [
    # integer lists -> integer lists
    Prim("add", "list", "map", "Add {k} to every element.", "xs = [x + {k} for x in xs]",
         lambda xs, k: [x + k for x in xs], _ints(1, 9), ("k",)),
    Prim("sub", "list", "map", "Subtract {k} from every element.", "xs = [x - {k} for x in xs]",
         lambda xs, k: [x - k for x in xs], _ints(1, 9), ("k",)),
    Prim("mul", "list", "map", "Multiply every element by {k}.", "xs = [x * {k} for x in xs]",
         lambda xs, k: [x * k for x in xs], _ints(2, 5), ("k",)),
    Prim("even", "list", "map", "Keep only the even elements.", "xs = [x for x in xs if x % 2 == 0]",
         lambda xs: [x for x in xs if x % 2 == 0]),
    Prim("odd", "list", "map", "Keep only the odd elements.", "xs = [x for x in xs if x % 2 == 1]",
         lambda xs: [x for x in xs if x % 2 == 1]),
    Prim("gt", "list", "map", "Keep only the elements greater than {k}.", "xs = [x for x in xs if x > {k}]",
         lambda xs, k: [x for x in xs if x > k], _ints(0, 9), ("k",)),
    Prim("lt", "list", "map", "Keep only the elements less than {k}.", "xs = [x for x in xs if x < {k}]",
         lambda xs, k: [x for x in xs if x < k], _ints(0, 9), ("k",)),
    Prim("sort", "list", "map", "Sort the elements in ascending order.", "xs = sorted(xs)",
         lambda xs: sorted(xs)),
    Prim("sortd", "list", "map", "Sort the elements in descending order.", "xs = sorted(xs, reverse=True)",
         lambda xs: sorted(xs, reverse=True)),
    Prim("rev", "list", "map", "Reverse the order of the elements.", "xs = xs[::-1]",
         lambda xs: xs[::-1]),
    Prim("take", "list", "map", "Keep only the first {k} elements (all of them if there are fewer).",
         "xs = xs[:{k}]", lambda xs, k: xs[:k], _ints(1, 4), ("k",)),
    Prim("drop", "list", "map", "Remove the first {k} elements (all of them if there are fewer).",
         "xs = xs[{k}:]", lambda xs, k: xs[k:], _ints(1, 3), ("k",)),
    Prim("uniq", "list", "map", "Remove repeated elements, keeping the first occurrence of each.",
         "xs = list(dict.fromkeys(xs))", lambda xs: list(dict.fromkeys(xs))),
    Prim("cumsum", "list", "map", "Replace each element by the sum of itself and all elements before it.",
         "xs = [sum(xs[:i + 1]) for i in range(len(xs))]", _cumsum),
    Prim("abs", "list", "map", "Replace every element by its absolute value.", "xs = [abs(x) for x in xs]",
         lambda xs: [abs(x) for x in xs]),
    Prim("sq", "list", "map", "Square every element.", "xs = [x * x for x in xs]",
         lambda xs: [x * x for x in xs]),
    # integer lists -> one integer (final)
    Prim("sum", "list", "final", "Print the sum of the elements (0 if there are none).", "print(sum(xs))",
         lambda xs: sum(xs)),
    Prim("max", "list", "final", "Print the largest element (0 if there are none).",
         "print(max(xs) if xs else 0)", lambda xs: max(xs) if xs else 0),
    Prim("min", "list", "final", "Print the smallest element (0 if there are none).",
         "print(min(xs) if xs else 0)", lambda xs: min(xs) if xs else 0),
    Prim("len", "list", "final", "Print the number of elements.", "print(len(xs))", lambda xs: len(xs)),
    # bugs only near-miss attempts contain (sdpo.toy.corpus): an unguarded aggregate fails on an empty list
    Prim("max!", "list", "bug", "", "print(max(xs))", lambda xs: max(xs)),
    Prim("min!", "list", "bug", "", "print(min(xs))", lambda xs: min(xs)),
    # words -> words
    Prim("srev", "str", "map", "Reverse the string.", "s = s[::-1]", lambda s: s[::-1]),
    Prim("upper", "str", "map", "Convert the string to upper case.", "s = s.upper()", lambda s: s.upper()),
    Prim("novowel", "str", "map", "Remove every lowercase vowel (a, e, i, o, u).",
         "s = ''.join(ch for ch in s if ch not in 'aeiou')", lambda s: "".join(ch for ch in s if ch not in "aeiou")),
    Prim("remove", "str", "map", "Remove every letter '{c}'.", "s = s.replace('{c}', '')",
         lambda s, c: s.replace(c, ""), tuple((c,) for c in _LETTERS), ("c",)),
    Prim("replace", "str", "map", "Replace every letter '{c}' with '{d}'.", "s = s.replace('{c}', '{d}')",
         lambda s, c, d: s.replace(c, d), _PAIRS, ("c", "d")),
    Prim("ssort", "str", "map", "Sort the characters in ascending order of their character codes.",
         "s = ''.join(sorted(s))", lambda s: "".join(sorted(s))),
    Prim("stake", "str", "map", "Keep only the first {k} characters (all of them if there are fewer).",
         "s = s[:{k}]", lambda s, k: s[:k], _ints(1, 6), ("k",)),
    Prim("sdrop", "str", "map", "Remove the first {k} characters (all of them if there are fewer).",
         "s = s[{k}:]", lambda s, k: s[k:], _ints(1, 4), ("k",)),
    Prim("dup", "str", "map", "Write every character twice (so ab becomes aabb).",
         "s = ''.join(ch * 2 for ch in s)", lambda s: "".join(ch * 2 for ch in s)),
    # words -> one integer (final)
    Prim("count", "str", "final", "Print how many times the letter '{c}' occurs.", "print(s.count('{c}'))",
         lambda s, c: s.count(c), tuple((c,) for c in _LETTERS), ("c",)),
    Prim("slen", "str", "final", "Print the length of the string.", "print(len(s))", lambda s: len(s)),
]}

_READ = {
    "list": ("Read one line of space-separated integers from standard input (the line may be empty). "
             "Then, in order:", "xs = list(map(int, input().split()))"),
    "str": ("Read one line containing a word of lowercase letters from standard input. Then, in order:",
            "s = input().strip()"),
}
_PRINT = {
    "list": ("Print the elements on one line, separated by single spaces (an empty line if there are none).",
             "print(' '.join(map(str, xs)))"),
    "str": ("Print the resulting string.", "print(s)"),
}


@dataclass(frozen=True)
class Op:
    """One primitive with its parameters bound."""

    name: str
    args: tuple[Any, ...] = ()

    @property
    def prim(self) -> Prim:
        return PRIMITIVES[self.name]

    def _fmt(self) -> dict[str, Any]:
        return dict(zip(self.prim.slots, self.args, strict=True))

    def text(self) -> str:
        return self.prim.text.format(**self._fmt())

    def code(self) -> str:
        return self.prim.code.format(**self._fmt())

    def apply(self, value: Value) -> Value:
        return self.prim.fn(value, *self.args)

    def key(self) -> str:
        return self.name + "".join(f":{a}" for a in self.args)


@dataclass
class ToyProblem:
    """One generated problem. ``tests`` is a stdin TestSpec as a plain dict (``sdpo.envs.code.TestSpec``)."""

    family: str
    ops: tuple[Op, ...]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.ops)

    @property
    def key(self) -> str:
        return self.family + "|" + ",".join(op.key() for op in self.ops)

    @property
    def signature(self) -> str:
        return self.family + "|" + ",".join(op.name for op in self.ops)

    @property
    def id(self) -> str:
        return f"{DATASET}/{_digest(self.key)[:12]}"

    @property
    def final(self) -> bool:
        return bool(self.ops) and self.ops[-1].prim.kind != "map"

    def statement(self) -> str:
        read_text, _ = _READ[self.family]
        steps = [op.text() for op in self.ops]
        if not self.final:
            steps.append(_PRINT[self.family][0])
        return read_text + "\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))

    def prompt(self) -> str:
        """The user message."""
        return self.statement() + "\n\n" + INSTRUCTION

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": self.prompt()}]

    def solution_code(self) -> str:
        return program_code(self.family, self.ops)

    def solution(self) -> str:
        """The reference response (what the model should answer)."""
        return response_for(self.solution_code())

    def run(self, raw_input: str) -> str:
        """Expected stdout for one stdin string (the Python semantics of the composition)."""
        return run_ops(self.family, self.ops, raw_input)

    def tests(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs), "testtype": "stdin",
                "fn_name": None, "time_limit": 6.0}

    def to_task(self) -> Task:
        tests: Any = self.tests()
        try:  # the code environment's typed spec when available
            tests = TestSpec.parse(tests)
        except ImportError:  # pragma: no cover - the env module is part of the package
            pass
        return Task(id=self.id, messages=self.messages(), kind="code", tests=tests,
                    meta={"dataset": DATASET, "difficulty": self.depth, "signature": self.signature,
                          "canonical_solution": self.solution_code()})

    def to_row(self, idx: int) -> dict[str, Any]:
        """One lasgroup/SDPO JSONL row (``tests`` as a JSON string, as in the reference datasets)."""
        return {"idx": idx, "dataset": DATASET, "kind": "code", "system": SYSTEM_PROMPT, "prompt": self.prompt(),
                "tests": json.dumps(self.tests()), "difficulty": self.depth, "signature": self.signature,
                "key": self.key, "canonical_solution": self.solution_code()}


def program_code(family: str, ops: Sequence[Op]) -> str:
    """Reference program for a composition (one line per operation)."""
    lines = [_READ[family][1]] + [op.code() for op in ops]
    if not ops or ops[-1].prim.kind == "map":
        lines.append(_PRINT[family][1])
    return "\n".join(lines)


def response_for(code: str) -> str:
    """Wrap a program as the assistant's answer."""
    return f"```python\n{code}\n```"


def _format(family: str, value: Value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) + "\n"
    return f"{value}\n"


def run_ops(family: str, ops: Sequence[Op], raw_input: str) -> str:
    """Stdout of ``program_code(family, ops)`` on ``raw_input``, computed in-process without running code."""
    line = raw_input.split("\n", 1)[0]
    value: Value = [int(t) for t in line.split()] if family == "list" else line.strip()
    for op in ops:
        value = op.apply(value)
    return _format(family, value)


# --------------------------------------------------------------------------------------------- splits


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bucket(key: str) -> str:
    """Stable split bucket of a problem key: 'test' (10%), 'rl' (10%) or 'pretrain' (80%)."""
    h = int(_digest("bucket|" + key)[:8], 16) % 10
    return "test" if h == 0 else "rl" if h == 1 else "pretrain"


def held_out(signature: str) -> bool:
    """Whether a composition signature is reserved for the hard held-out set."""
    depth = signature.count(",") + 1
    if depth >= 4:
        return True
    if depth < 3:
        return False
    return int(_digest("holdout|" + signature)[:8], 16) % 4 == 0


# ------------------------------------------------------------------------------------------ generation


def _random_list(rng: random.Random) -> list[int]:
    n = rng.choice([0] + [rng.randint(1, 8)] * 9)  # ~10% empty
    return [rng.randint(-5, 20) for _ in range(n)]


def _random_word(rng: random.Random) -> str:
    letters = _LETTERS * 2 + "bcdlmpu"
    return "".join(rng.choice(letters) for _ in range(rng.randint(1, 10)))


def random_input(family: str, rng: random.Random) -> str:
    if family == "list":
        return " ".join(map(str, _random_list(rng))) + "\n"
    return _random_word(rng) + "\n"


def random_ops(family: str, depth: int, rng: random.Random) -> tuple[Op, ...]:
    """A random composition of ``depth`` operations (the last one may be a final aggregate)."""
    maps = [p for p in PRIMITIVES.values() if p.family == family and p.kind == "map"]
    finals = [p for p in PRIMITIVES.values() if p.family == family and p.kind == "final"]
    ops: list[Op] = []
    with_final = rng.random() < 0.5
    for i in range(depth):
        pool = finals if (with_final and i == depth - 1) else maps
        prim = rng.choice(pool)
        ops.append(Op(prim.name, rng.choice(prim.params)))
    return tuple(ops)


def _make_tests(family: str, ops: tuple[Op, ...], rng: random.Random, n_tests: int) -> tuple[list, list]:
    inputs: list[str] = []
    for _ in range(n_tests * 4):
        x = random_input(family, rng)
        if x not in inputs:
            inputs.append(x)
        if len(inputs) == n_tests:
            break
    return inputs, [run_ops(family, ops, x) for x in inputs]


def _informative(family: str, ops: tuple[Op, ...], inputs: list[str], outputs: list[str]) -> bool:
    """Reject degenerate compositions: few distinct outputs, immediate repeats ("sort, sort"), or an operation
    whose removal changes no test output (so every step of the statement is checked by the tests)."""
    if len(set(outputs)) < 3:
        return False
    names = [op.name for op in ops]
    if any(a == b for a, b in zip(names, names[1:], strict=False)):
        return False
    for i in range(len(ops)):
        rest = ops[:i] + ops[i + 1:]
        if [run_ops(family, rest, x) for x in inputs] == outputs:
            return False
    return True


def generate_problem(rng: random.Random, *, depth: int, family: str | None = None,
                     accept: Callable[[ToyProblem], bool] | None = None,
                     n_tests: int = N_TESTS, max_tries: int = 10_000) -> ToyProblem:
    """Draw one informative problem of the given depth (and family), optionally filtered by ``accept``."""
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth: got {depth!r}; expected 1..{MAX_DEPTH}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family: got {family!r}; allowed values are {FAMILIES}")
    for _ in range(max_tries):
        fam = family or rng.choice(FAMILIES)
        ops = random_ops(fam, depth, rng)
        problem = ToyProblem(fam, ops)
        if accept is not None and not accept(problem):
            continue
        problem.inputs, problem.outputs = _make_tests(fam, ops, rng, n_tests)
        if _informative(fam, ops, problem.inputs, problem.outputs):
            return problem
    raise RuntimeError(f"no acceptable problem of depth {depth} after {max_tries} tries")


def in_bucket(name: str) -> Callable[[ToyProblem], bool]:
    """Filter: problems of a bucket whose composition is not held out."""
    return lambda p: not held_out(p.signature) and bucket(p.key) == name


def is_hard(p: ToyProblem) -> bool:
    return held_out(p.signature)


def generate(n: int, *, seed: int, depths: Sequence[int], accept: Callable[[ToyProblem], bool] | None = None,
             unique: bool = True) -> list[ToyProblem]:
    """``n`` problems with depths cycling through ``depths`` (deterministic given ``seed``)."""
    rng = random.Random(seed)
    out: list[ToyProblem] = []
    seen: set[str] = set()
    i = 0
    while len(out) < n:
        p = generate_problem(rng, depth=depths[i % len(depths)], accept=accept)
        i += 1
        if unique and p.key in seen:
            if i > 50 * n + 1000:
                raise RuntimeError(f"could not draw {n} distinct problems for depths {list(depths)}")
            continue
        seen.add(p.key)
        out.append(p)
    return out


def stream(*, seed: int, depths: Sequence[int] = (1, 2, 3), split: str = "pretrain") -> Iterator[ToyProblem]:
    """Endless problems of one bucket (never held-out compositions), depths cycling."""
    rng = random.Random(seed)
    accept = in_bucket(split)
    i = 0
    while True:
        yield generate_problem(rng, depth=depths[i % len(depths)], accept=accept)
        i += 1


def splits(n_train: int, n_test: int, n_hard: int, *, seed: int = 0,
           depths: Sequence[int] = (1, 2, 3), hard_depths: Sequence[int] = (3, 4)) -> dict[str, list[ToyProblem]]:
    """The RL train split (bucket 'rl'), the easy test split (bucket 'test') and the hard held-out set."""
    return {
        "train": generate(n_train, seed=seed * 1000 + 1, depths=depths, accept=in_bucket("rl")),
        "test": generate(n_test, seed=seed * 1000 + 2, depths=depths, accept=in_bucket("test")),
        "hard": generate(n_hard, seed=seed * 1000 + 3, depths=hard_depths, accept=is_hard),
    }


def write_split(out_dir: str | Path, n_train: int = 512, n_test: int = 128, seed: int = 0, *,
                n_hard: int = 64) -> dict[str, Path]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``hard.jsonl`` (lasgroup rows) and return their paths."""
    for name, n in (("n_train", n_train), ("n_test", n_test), ("n_hard", n_hard)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name}: got {n!r}; expected an integer >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, problems in splits(n_train, n_test, n_hard, seed=seed).items():
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(p.to_row(i)) + "\n" for i, p in enumerate(problems)))
        paths[name] = path
    return paths


# ------------------------------------------------------------------------------------ running programs

_HARNESS = r"""
import io, json, sys, contextlib
job = json.loads(sys.stdin.read())
try:
    code = compile(job["code"], "<solution>", "exec")
except BaseException as e:  # noqa: BLE001
    print(json.dumps([{"stdout": "", "error": f"{type(e).__name__}: {e}"} for _ in job["inputs"]]))
    raise SystemExit(0)
results = []
for raw in job["inputs"]:
    out = io.StringIO()
    sys.stdin = io.StringIO(raw)
    try:
        with contextlib.redirect_stdout(out):
            exec(code, {"__name__": "__main__"})
        results.append({"stdout": out.getvalue(), "error": None})
    except BaseException as e:  # noqa: BLE001 - report any failure of the program
        results.append({"stdout": out.getvalue(), "error": f"{type(e).__name__}: {e}"})
sys.stdout = sys.__stdout__
print(json.dumps(results))
"""


def run_program(code: str, inputs: Sequence[str], *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Run a stdin program on each input in ONE fresh Python subprocess (trusted or toy code only: this is
    not a sandbox). Returns ``[{"stdout": str, "error": str | None}]``; on a timeout or a crash of the
    harness every entry carries the error."""
    job = json.dumps({"code": code, "inputs": list(inputs)})
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _HARNESS], input=job, capture_output=True,
                              text=True, timeout=timeout)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return [{"stdout": "", "error": "Time Limit Exceeded"} for _ in inputs]
    except (json.JSONDecodeError, IndexError):
        return [{"stdout": "", "error": "harness failed: " + proc.stderr[-300:]} for _ in inputs]


def outputs_match(got: str, expected: str) -> bool:
    """Line-by-line comparison ignoring trailing whitespace (as the code environment compares stdin tests)."""
    a = [line.rstrip() for line in got.rstrip().splitlines()]
    b = [line.rstrip() for line in expected.rstrip().splitlines()]
    return a == b
