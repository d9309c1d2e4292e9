"""The built-in example problems: what the Solve page's problem picker offers on a fresh data dir (``sdpo
serve`` writes them with ``write_examples`` and registers the folder as the ``examples`` dataset) and what
``bench/first_click.py`` times the demo model on.

Three groups, every problem with public tests (reward and feedback) and hidden tests (they decide discovery):

- toy world, easy: the first ``N_EASY`` held-out easy problems of the toy world
  (``sdpo.toy.generator.splits(seed=0)["test"]``, depth 1-3: the first of the 32 that docs/toyworld-results.md
  measures on);
- toy world, hard: the first ``N_HARD`` held-out compositions (``splits(seed=0)["hard"]``, depth 3-4, never seen
  in pretraining);
- classic: a few small problems written by hand (sum of two numbers, reverse a word, ...).

A toy problem's public tests are the first ``N_PUBLIC`` of its 8 tests and its hidden tests all 8 (as ``sdpo data
import-lcb`` does, the hidden set holds every case), so a discovery is what the toy world calls solved.
Every problem is prompted as the toy world prompts (its system message and its closing instruction), the
prompt the demo model was trained on. A classic problem's reference solution is in ``CLASSIC_SOLUTIONS``
(tests run it against its tests); problems.jsonl never holds a solution.

The folder also holds ``train.jsonl`` (the toy world's RL split, ``N_TRAIN`` rows) and ``test.jsonl`` (its
easy test split, ``N_TEST`` rows) in the lasgroup format, so the same dataset is a Train choice too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdpo.toy.generator import INSTRUCTION, SYSTEM_PROMPT, ToyProblem, splits

NAME = "examples"
N_EASY = 8
N_HARD = 8
N_PUBLIC = 4
N_TRAIN = 256
N_TEST = 32
TIME_LIMIT = 6.0

_TOY_WORDS = {"list": "numbers", "str": "word"}
_OP_WORDS = {
    "add": "add", "sub": "subtract", "mul": "multiply", "even": "keep even", "odd": "keep odd",
    "gt": "keep greater", "lt": "keep less", "sort": "sort", "sortd": "sort descending", "rev": "reverse",
    "take": "take first", "drop": "drop first", "uniq": "unique", "cumsum": "running sums", "abs": "absolute",
    "sq": "square", "sum": "sum", "max": "largest", "min": "smallest", "len": "count", "srev": "reverse",
    "upper": "upper case", "novowel": "no vowels", "remove": "remove letter", "replace": "replace letter",
    "ssort": "sort letters", "stake": "take first", "sdrop": "drop first", "dup": "double letters",
    "count": "count letter", "slen": "length",
}


def _spec(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {"inputs": [i for i, _ in pairs], "outputs": [o for _, o in pairs], "testtype": "stdin",
            "fn_name": None, "time_limit": TIME_LIMIT}


def _lines(*values: Any) -> str:
    return "".join(f"{v}\n" for v in values)


def _fizzbuzz(n: int) -> str:
    return _lines(*("FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else i
                    for i in range(1, n + 1)))


# (title, statement, public tests, hidden tests, reference solution)
_CLASSIC: list[tuple[str, str, list[tuple[str, str]], list[tuple[str, str]], str]] = [
    ("Sum of two numbers",
     "Read one line with two integers separated by a space from standard input. Print their sum.",
     [("1 2\n", "3\n"), ("10 -4\n", "6\n"), ("0 0\n", "0\n")],
     [("100 200\n", "300\n"), ("-7 -8\n", "-15\n"), ("123456 654321\n", "777777\n"), ("5 -5\n", "0\n"),
      ("999 1\n", "1000\n")],
     "a, b = map(int, input().split())\nprint(a + b)"),
    ("Reverse a word",
     "Read one line containing a word of lowercase letters from standard input. Print the word reversed.",
     [("abc\n", "cba\n"), ("hello\n", "olleh\n"), ("a\n", "a\n")],
     [("racecar\n", "racecar\n"), ("stressed\n", "desserts\n"), ("ab\n", "ba\n"), ("python\n", "nohtyp\n"),
      ("zzzy\n", "yzzz\n")],
     "print(input().strip()[::-1])"),
    ("Largest number",
     "Read one line of space-separated integers from standard input (the line may be empty). Print the "
     "largest of them, or 0 if there are none.",
     [("3 9 2\n", "9\n"), ("-4 -1 -7\n", "-1\n"), ("\n", "0\n")],
     [("5\n", "5\n"), ("1 2 3 4 5 6\n", "6\n"), ("0 -3\n", "0\n"), ("20 20 19\n", "20\n"), ("-5\n", "-5\n")],
     "xs = list(map(int, input().split()))\nprint(max(xs) if xs else 0)"),
    ("Count the vowels",
     "Read one line containing a word of lowercase letters from standard input. Print how many of its "
     "letters are vowels (a, e, i, o, u).",
     [("banana\n", "3\n"), ("rhythm\n", "0\n"), ("queue\n", "4\n")],
     [("a\n", "1\n"), ("strength\n", "1\n"), ("education\n", "5\n"), ("xyz\n", "0\n"), ("aeiou\n", "5\n")],
     "s = input().strip()\nprint(sum(ch in 'aeiou' for ch in s))"),
    ("FizzBuzz",
     "Read an integer n from standard input. For every i from 1 to n, print one line: FizzBuzz if i is "
     "divisible by both 3 and 5, Fizz if only by 3, Buzz if only by 5, and i itself otherwise.",
     [("5\n", _fizzbuzz(5)), ("1\n", _fizzbuzz(1)), ("15\n", _fizzbuzz(15))],
     [("3\n", _fizzbuzz(3)), ("10\n", _fizzbuzz(10)), ("16\n", _fizzbuzz(16)), ("30\n", _fizzbuzz(30)),
      ("2\n", _fizzbuzz(2))],
     "n = int(input())\nfor i in range(1, n + 1):\n"
     "    print('FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else 'Buzz' if i % 5 == 0 else i)"),
]
CLASSIC_SOLUTIONS: dict[str, str] = {title: sol for title, _, _, _, sol in _CLASSIC}


def _prompt(statement: str) -> str:
    """The statement as the toy world words a prompt (its closing instruction)."""
    return statement.rstrip() + "\n\n" + INSTRUCTION


def toy_title(p: ToyProblem, group: str, number: int) -> str:
    """``"Toy easy 2 (numbers): take first, sort descending"``."""
    return f"Toy {group} {number} ({_TOY_WORDS[p.family]}): " + ", ".join(_OP_WORDS[op.name] for op in p.ops)


def toy_example(p: ToyProblem, group: str, number: int) -> dict[str, Any]:
    """A toy problem as an example problem (public: its first ``N_PUBLIC`` tests; hidden: all of them)."""
    tests = p.tests()
    public = {**tests, "inputs": tests["inputs"][:N_PUBLIC], "outputs": tests["outputs"][:N_PUBLIC]}
    return {"title": toy_title(p, group, number), "statement": p.prompt(), "tests": public, "hidden_tests": tests,
            "starter_code": None, "system": SYSTEM_PROMPT, "id": p.id,
            "meta": {"source": "toyworld", "platform": "toy world", "difficulty": group, "depth": p.depth,
                     "signature": p.signature}}


def classic_examples() -> list[dict[str, Any]]:
    return [{"title": title, "statement": _prompt(statement), "tests": _spec(public), "hidden_tests": _spec(hidden),
             "starter_code": None, "system": SYSTEM_PROMPT, "id": f"classic/{i}",
             "meta": {"source": "classic", "platform": "classic", "difficulty": "easy"}}
            for i, (title, statement, public, hidden, _) in enumerate(_CLASSIC)]


def example_problems() -> list[dict[str, Any]]:
    """The example problems in picker order (toy easy, classic, toy hard), as problem dicts
    (``sdpo.data.problem.Problem.parse`` accepts each). Deterministic."""
    s = splits(0, N_EASY, N_HARD, seed=0)
    easy = [toy_example(p, "easy", i + 1) for i, p in enumerate(s["test"])]
    hard = [toy_example(p, "hard", i + 1) for i, p in enumerate(s["hard"])]
    return easy + classic_examples() + hard


def write_examples(out_dir: str | Path) -> Path:
    """Write ``problems.jsonl`` (``example_problems()``), ``train.jsonl`` and ``test.jsonl`` (module docs) to
    ``out_dir``, replacing what is there; return the folder. Files are written whole then renamed, so a reader
    never sees half a file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = splits(N_TRAIN, N_TEST, 0, seed=0)
    files = {
        "problems.jsonl": [json.dumps(p, ensure_ascii=False) for p in example_problems()],
        "train.jsonl": [json.dumps(p.to_row(i)) for i, p in enumerate(s["train"])],
        "test.jsonl": [json.dumps(p.to_row(i)) for i, p in enumerate(s["test"])],
    }
    for name, lines in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        tmp.replace(out / name)
    return out
