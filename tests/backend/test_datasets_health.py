"""Dataset upload/registration and the system health report, on real databases and a real broker."""

from __future__ import annotations

import json

import pytest

from backend.db import session_scope
from backend.errors import InvalidInput, NotFound
from backend.queue import JobQueue
from backend.services import datasets as D
from backend.services.health import health
from backend.services.workers import list_workers, register_worker, remove_worker

ROWS = b"".join(json.dumps({"prompt": f"q{i}", "tests": []}).encode() + b"\n" for i in range(3))


def test_upload_and_register(db, settings, tmp_path):
    with session_scope(db) as s:
        ds = D.upload_dataset(s, name="mine", content=ROWS + b"\n", test_content=ROWS[: ROWS.index(b"\n") + 1],
                              settings=settings)
        assert (ds.train_rows, ds.test_rows, ds.uploaded) == (3, 1, True)
        folder = tmp_path / "server_ds"
        folder.mkdir()
        (folder / "train.jsonl").write_bytes(ROWS)
        reg = D.register_dataset(s, name="server", path=str(folder))
        assert (reg.train_rows, reg.test_rows, reg.uploaded) == (3, 0, False)
        assert [d.name for d in D.list_datasets(s)] == ["mine", "server"]
        train, test = D.dataset_files(ds)
        assert train.read_bytes() == ROWS + b"\n" and test is not None
    with session_scope(db) as s:
        D.delete_dataset(s, dataset_id=ds.id)
        D.delete_dataset(s, dataset_id=reg.id)
        with pytest.raises(NotFound):
            D.get_dataset_by_name(s, name="mine")
    assert not (settings.datasets_dir / "mine").exists()
    assert (folder / "train.jsonl").exists()  # registered server files are never deleted


def test_sync_builtin_dataset_registers_refreshes_and_leaves_a_users_dataset_alone(db, tmp_path):
    folder = tmp_path / "builtin"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(ROWS)
    with session_scope(db) as s:
        ds = D.sync_builtin_dataset(s, name="examples", path=folder)
        assert (ds.train_rows, ds.test_rows, ds.uploaded) == (3, 0, False)
        first = ds.id
    (folder / "train.jsonl").write_bytes(ROWS[: ROWS.index(b"\n") + 1])  # the server rewrote its files
    (folder / "test.jsonl").write_bytes(ROWS)
    with session_scope(db) as s:
        ds = D.sync_builtin_dataset(s, name="examples", path=str(folder))
        assert (ds.id, ds.train_rows, ds.test_rows) == (first, 1, 3)
        assert ds.bytes == len(ROWS) + ROWS.index(b"\n") + 1
        D.delete_dataset(s, dataset_id=first)
        other = tmp_path / "users"
        other.mkdir()
        (other / "train.jsonl").write_bytes(ROWS)
        D.register_dataset(s, name="examples", path=str(other))
    with session_scope(db) as s:
        assert D.sync_builtin_dataset(s, name="examples", path=folder) is None
        assert [(d.name, d.path, d.train_rows) for d in D.list_datasets(s)] == [
            ("examples", str(other.resolve()), 3)]


@pytest.mark.parametrize("kwargs, field, text", [
    (dict(name="bad name", content=ROWS), "name", "letters, digits"),
    (dict(name="humaneval", content=ROWS), "name", "built-in"),
    (dict(name="x", content=b'{"a": 1}\n{"a": \n'), "file", "line 2 is not valid JSON"),
    (dict(name="x", content=b"[1, 2]\n"), "file", "expected an object"),
    (dict(name="x", content=b"\n\n"), "file", "no rows"),
    (dict(name="x", content=b"x" * 2000), "file", "limited to 1000 bytes"),
])
def test_bad_uploads_are_refused_and_leave_nothing(db, settings, monkeypatch, kwargs, field, text):
    monkeypatch.setenv("SDPO_MAX_UPLOAD_BYTES", "1000")
    from backend.settings import Settings

    small = Settings()
    with session_scope(db) as s:
        with pytest.raises(InvalidInput) as e:
            D.upload_dataset(s, settings=small, **kwargs)
        assert e.value.field == field and text in e.value.message
        assert D.list_datasets(s) == []
    assert not (small.datasets_dir / "x").exists()


def test_register_unknown_path_and_duplicate_name(db, settings, tmp_path):
    with session_scope(db) as s:
        with pytest.raises(InvalidInput, match="does not exist"):
            D.register_dataset(s, name="a", path=str(tmp_path / "missing.jsonl"))
        with pytest.raises(InvalidInput, match="without train.jsonl"):
            D.register_dataset(s, name="a", path=str(tmp_path))
        D.upload_dataset(s, name="a", content=ROWS, settings=settings)
        with pytest.raises(InvalidInput, match="already exists"):
            D.upload_dataset(s, name="a", content=ROWS, settings=settings)


def test_health_reports_db_broker_queue_and_workers(db, settings):
    queue = JobQueue(settings)
    with session_scope(db) as s:
        register_worker(s, worker_id="h:1", hostname="h", pid=1, queue="gpu", info={"gpus": []})
    with session_scope(db) as s:
        h = health(s, settings=settings, queue=queue)
        assert (h.database, h.broker, h.queue, h.queue_length) == ("ok", "ok", "gpu", 0)
        assert [w.id for w in h.workers] == ["h:1"] and h.workers[0].alive
        assert h.jobs_by_status["queued"] == 0 and h.versions["celery"] == "5.7.0"
        remove_worker(s, worker_id="h:1")
        assert list_workers(s, alive_within_s=60) == []


def test_health_reports_a_broken_broker(db, settings, monkeypatch):
    monkeypatch.setenv("SDPO_BROKER_URL", "redis://127.0.0.1:1/0")
    from backend.settings import Settings

    with session_scope(db) as s:
        h = health(s, settings=Settings(), queue=JobQueue(Settings()))
    assert h.database == "ok" and h.broker.startswith("error") and h.queue_length is None
