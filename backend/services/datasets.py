"""Dataset services: upload a JSONL file (size-limited), register a path on the server, list, get, delete.

A dataset is one JSONL file of rows (one JSON object per line, e.g. the lasgroup/SDPO format) or a folder
holding ``train.jsonl`` and optionally ``test.jsonl``. Rows are counted and every line is checked to be a
JSON object when the dataset is added, so a training job never starts on a broken file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.errors import InvalidInput, NotFound
from backend.models import Dataset
from backend.settings import Settings
from backend.text import first_surrogate

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,119}$")
BUILTIN = ("humaneval",)


def _check_name(session: Session, name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput("name", f"got {name!r}; use 1-120 letters, digits, '_', '.', '-' (starting with a "
                           "letter or digit)")
    if name in BUILTIN:
        raise InvalidInput("name", f"{name!r} is a built-in dataset; choose another name")
    if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise InvalidInput("name", f"a dataset named {name!r} already exists")


def count_jsonl_rows(path: Path, *, field: str = "file") -> int:
    """Number of rows of a JSONL file; raises ``InvalidInput`` naming the first bad line: not UTF-8, not
    JSON, not an object, or holding a lone surrogate escape (``"\\ud800"``: no text, a tokenizer refuses it)."""
    n = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidInput(field, f"{path.name} line {lineno} is not UTF-8 text (byte 0x{raw[e.start]:02x} "
                                   f"at column {e.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInput(field, f"{path.name} line {lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InvalidInput(field, f"{path.name} line {lineno} is a {type(row).__name__}, expected an object")
            bad = first_surrogate(row)
            if bad:
                raise InvalidInput(field, f"{path.name} line {lineno} holds a lone surrogate escape ({bad}), which "
                                   "is not text; remove it or pair it")
            n += 1
    if n == 0:
        raise InvalidInput(field, f"{path.name} has no rows")
    return n


def _files(path: Path) -> tuple[Path, Path | None]:
    if path.is_file():
        return path, None
    train = path / "train.jsonl"
    if not train.is_file():
        raise InvalidInput("path", f"{path} is a folder without train.jsonl; give a .jsonl file or a folder "
                           "holding train.jsonl (and optionally test.jsonl)")
    test = path / "test.jsonl"
    # an empty test.jsonl (e.g. ``sdpo data import-lcb --cutoff`` after every contest) means no test split
    return train, (test if test.is_file() and test.stat().st_size > 0 else None)


def upload_dataset(session: Session, *, name: str, content: bytes, settings: Settings,
                   test_content: bytes | None = None) -> Dataset:
    """Store uploaded JSONL bytes under ``<data_dir>/datasets/<name>/`` and register them."""
    _check_name(session, name)
    total = len(content) + len(test_content or b"")
    if total > settings.max_upload_bytes:
        raise InvalidInput("file", f"{total} bytes; uploads are limited to {settings.max_upload_bytes} bytes "
                           "(SDPO_MAX_UPLOAD_BYTES); register a server path for larger datasets")
    folder = settings.datasets_dir / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        (folder / "train.jsonl").write_bytes(content)
        train_rows = count_jsonl_rows(folder / "train.jsonl")
        test_rows = 0
        if test_content is not None:
            (folder / "test.jsonl").write_bytes(test_content)
            test_rows = count_jsonl_rows(folder / "test.jsonl", field="test_file")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    ds = Dataset(name=name, path=str(folder), format="jsonl", train_rows=train_rows, test_rows=test_rows,
                 bytes=total, uploaded=True)
    session.add(ds)
    session.flush()
    return ds


def register_dataset(session: Session, *, name: str, path: str) -> Dataset:
    """Register an existing JSONL file or folder on the server (not copied)."""
    _check_name(session, name)
    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidInput("path", f"{path} does not exist on the server")
    p = p.resolve()
    train, test = _files(p)
    train_rows = count_jsonl_rows(train, field="path")
    test_rows = count_jsonl_rows(test, field="path") if test else 0
    size = train.stat().st_size + (test.stat().st_size if test else 0)
    ds = Dataset(name=name, path=str(p), format="jsonl", train_rows=train_rows, test_rows=test_rows,
                 bytes=size, uploaded=False)
    session.add(ds)
    session.flush()
    return ds


def sync_builtin_dataset(session: Session, *, name: str, path: str | Path) -> Dataset | None:
    """Register the file or folder at ``path`` as ``name``, or refresh the row counts and size of the dataset
    registered as ``name`` at that path (the server rewrites its built-in datasets at every start). A dataset
    named ``name`` at another path is the user's: it is left alone and None is returned."""
    p = Path(path).expanduser().resolve()
    ds = session.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        return register_dataset(session, name=name, path=str(p))
    if Path(ds.path).resolve() != p:
        return None
    train, test = _files(p)
    ds.train_rows = count_jsonl_rows(train, field="path")
    ds.test_rows = count_jsonl_rows(test, field="path") if test else 0
    ds.bytes = train.stat().st_size + (test.stat().st_size if test else 0)
    session.flush()
    return ds


def get_dataset(session: Session, *, dataset_id: int) -> Dataset:
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        raise NotFound("dataset", dataset_id)
    return ds


def get_dataset_by_name(session: Session, *, name: str) -> Dataset:
    ds = session.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        raise NotFound("dataset", name)
    return ds


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.name)))


def dataset_files(ds: Dataset) -> tuple[Path, Path | None]:
    """(train file, test file or None) of a dataset."""
    return _files(Path(ds.path))


def dataset_config(ds: Dataset) -> dict[str, str | None]:
    """The train-config keys that point a training job at ``ds`` (lasgroup JSONL files; no built-in).

    ``tests/workers`` checks that the engine's ``TrainConfig`` accepts exactly these keys.
    """
    train, test = dataset_files(ds)
    return {"dataset": None, "train_file": str(train), "test_file": str(test) if test else None}


def delete_dataset(session: Session, *, dataset_id: int) -> None:
    """Remove a dataset; uploaded files are deleted, registered server paths are left alone."""
    ds = get_dataset(session, dataset_id=dataset_id)
    if ds.uploaded:
        shutil.rmtree(ds.path, ignore_errors=True)
    session.delete(ds)
    session.flush()
