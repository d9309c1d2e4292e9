"""The Solve page's problem picker: problems of registered datasets that hold a ``problems.jsonl``.

``sdpo data import-lcb FILE --out DIR`` writes ``DIR/train.jsonl``, ``DIR/test.jsonl`` and
``DIR/problems.jsonl`` (one problem per line in the engine's problem format: title, statement, tests,
hidden_tests, starter_code, id, meta). Registering ``DIR`` as a dataset makes it a Train choice (train/test
files) and, through these services, a source of problems to solve. The file is read as plain JSON; the engine
validates a chosen problem when it is submitted (``backend.services.problems.create_problem``).

A problem is addressed by ``(dataset_id, index)``: ``index`` is the 0-based position among the non-blank
lines of ``problems.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from backend.errors import InvalidInput
from backend.jsonl import read_objects
from backend.models import Dataset
from backend.services.datasets import get_dataset, list_datasets

PROBLEMS_FILE = "problems.jsonl"


@dataclass(frozen=True)
class ProblemChoice:
    """One entry of the problem picker."""

    dataset_id: int
    dataset: str
    index: int
    title: str
    difficulty: str | None = None
    platform: str | None = None

    @property
    def key(self) -> str:
        """``"<dataset_id>:<index>"``, the picker's value (see ``parse_choice_key``)."""
        return f"{self.dataset_id}:{self.index}"

    @property
    def label(self) -> str:
        """``"dataset · #index title (platform, difficulty)"`` for the dropdown."""
        extra = ", ".join(x for x in (self.platform, self.difficulty) if x)
        return f"{self.dataset} · #{self.index} {self.title}" + (f" ({extra})" if extra else "")


def parse_choice_key(key: Any) -> tuple[int, int]:
    """``(dataset_id, index)`` of a ``ProblemChoice.key``; ``InvalidInput("problem")`` otherwise."""
    text = str(key or "").strip()
    ds, sep, idx = text.partition(":")
    if not sep or not ds.isdigit() or not idx.isdigit():
        raise InvalidInput("problem", f"got {key!r}; choose a problem from the list (refresh it if it is empty)")
    return int(ds), int(idx)


def problems_file(ds: Dataset) -> Path | None:
    """``<dataset folder>/problems.jsonl`` if the dataset is a folder holding one, else None."""
    path = Path(ds.path) / PROBLEMS_FILE
    return path if path.is_file() else None


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, problem dict) of each non-blank line; ``InvalidInput("problems")`` names a bad line."""
    for index, (_, row) in enumerate(read_objects(path, field="problems", what="a problem object")):
        yield index, row


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def list_dataset_problems(session: Session, *, dataset_id: int | None = None, limit: int = 500) -> list[ProblemChoice]:
    """Picker entries of the registered datasets holding a ``problems.jsonl`` (all of them, or only
    ``dataset_id``), in dataset-name then file order, at most ``limit`` in all.

    Raises ``NotFound`` for an unknown ``dataset_id``, ``InvalidInput("limit")`` for a limit below 1 and
    ``InvalidInput("problems")`` naming the file and line of a broken ``problems.jsonl``.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput("limit", f"got {limit!r}; expected a whole number >= 1")
    datasets = [get_dataset(session, dataset_id=dataset_id)] if dataset_id is not None else list_datasets(session)
    out: list[ProblemChoice] = []
    for ds in datasets:
        path = problems_file(ds)
        if path is None:
            continue
        for index, row in _rows(path):
            if len(out) >= limit:
                return out
            meta = row.get("meta")
            if not isinstance(meta, dict):
                meta = {}
            title = _text(row.get("title")) or f"problem {index}"
            out.append(ProblemChoice(dataset_id=ds.id, dataset=ds.name, index=index, title=title,
                                     difficulty=_text(meta.get("difficulty", row.get("difficulty"))),
                                     platform=_text(meta.get("platform", row.get("platform")))))
    return out


def load_dataset_problem(session: Session, *, dataset_id: int, index: int) -> dict[str, Any]:
    """The problem dict at ``index`` of the dataset's ``problems.jsonl`` (as stored; the engine validates
    it on submission).

    Raises ``NotFound("dataset")`` for an unknown dataset, ``InvalidInput("dataset_id")`` when the dataset
    has no ``problems.jsonl``, ``InvalidInput("index")`` for an index that is not one of its problems and
    ``InvalidInput("problems")`` for a broken line.
    """
    ds = get_dataset(session, dataset_id=dataset_id)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidInput("index", f"got {index!r}; expected a whole number >= 0")
    path = problems_file(ds)
    if path is None:
        raise InvalidInput("dataset_id", f"dataset {ds.name!r} has no {PROBLEMS_FILE} (import one with "
                           "'sdpo data import-lcb FILE --out DIR' and register DIR)")
    n = 0
    for i, row in _rows(path):
        if i == index:
            return row
        n = i + 1
    raise InvalidInput("index", f"got {index}; dataset {ds.name!r} has {n} problems"
                       + (f" (0-{n - 1})" if n else ""))
