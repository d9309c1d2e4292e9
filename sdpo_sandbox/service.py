"""The sandbox as a service: ``serve`` runs a ``SandboxPool`` behind a unix socket (``sdpo sandbox serve``) and
``SandboxClient`` talks to it with the pool's frames, so a trainer that does not run as root (the isolation
needs it) can use the sandbox of a root service on the same host."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sdpo_sandbox.pool import (
    ConfigError,
    SandboxConfig,
    SandboxError,
    SandboxPool,
    _Lease,
    _recv,
    _send,
    stream_batch,
)


class SandboxClient:
    """Talks to ``sdpo sandbox serve --socket PATH``; same ``run`` contract as ``SandboxPool``."""

    def __init__(self, socket_path: str | os.PathLike[str], slots: int | None = None, timeout_slack_s: float = 60.0):
        self.path = str(socket_path)
        self.slack = timeout_slack_s
        self._local = threading.local()
        if slots is None:
            slots = int(self._request({"op": "info"}, 30.0).get("slots", 1))
        self.slots = slots

    def _sock(self) -> socket.socket:
        s = getattr(self._local, "sock", None)
        if s is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.path)
            self._local.sock = s
        return s

    def _request(self, obj: dict[str, Any], wait_s: float) -> dict[str, Any]:
        s = self._sock()
        try:
            _send(s, obj)
            return _recv(s, time.monotonic() + wait_s)
        except (OSError, EOFError, TimeoutError):
            s.close()
            self._local.sock = None
            raise

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._request(job, float(job.get("time_limit", 6.0)) + self.slack)
        except (OSError, EOFError, TimeoutError) as e:
            return {"ok": False, "error": f"sandbox service failed: {e}"}

    def batch(self, job: dict[str, Any], on_result: Callable[[int, dict[str, Any]], bool]) -> None:
        """Stream a batch job through the service (inside ``lease``); same contract as ``_Slot.batch``."""
        s = self._sock()
        wait = float(job.get("time_limit", 6.0)) + self.slack
        try:
            error = stream_batch(lambda frame: _send(s, frame), lambda: _recv(s, time.monotonic() + wait), job,
                                 on_result)
        except (OSError, EOFError, TimeoutError) as e:
            s.close()
            self._local.sock = None
            raise SandboxError(f"sandbox service failed during a batch: {e}") from None
        if error is not None:
            raise error

    @contextmanager
    def lease(self) -> Iterator[SandboxClient]:
        """Hold one of the service's slots on this thread's connection for the tests of one solution."""
        self._request({"op": "lease"}, 600.0)
        try:
            yield self
        finally:
            try:
                self._request({"op": "release"}, 60.0)
            except (OSError, EOFError, TimeoutError):
                pass


def _serve_batch(conn: socket.socket, held: _Lease, job: dict[str, Any]) -> dict[str, Any]:
    """Relay a batch: replies go to the client as they come; a watcher forwards the client's stop."""
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            r, _, _ = select.select([conn], [], [], 0.02)
            if r and not finished.is_set():
                try:
                    msg = _recv(conn)
                except (EOFError, OSError, ValueError):
                    return
                if isinstance(msg, dict) and msg.get("op") == "stop":
                    try:
                        _send(held.slot.wfd, {"op": "stop"})  # a stale stop is ignored by the executor
                    except OSError:
                        return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def relay(index: int, frame: dict[str, Any]) -> bool:
        try:
            _send(conn, frame)
        except OSError:
            return False  # the client went away: stop the batch (the executor is fine)
        return True

    try:
        held.batch(job, relay)
        reply: dict[str, Any] = {"ok": True, "end": True}
    except SandboxError as e:
        reply = {"ok": False, "error": str(e)}
    finally:
        finished.set()
        watcher.join()
    return reply


def serve(socket_path: str | os.PathLike[str], config: SandboxConfig | None = None,
          ready: threading.Event | None = None, stop: threading.Event | None = None, *,
          socket_uid: int | None = None) -> None:
    """Serve a pool on a unix socket (mode 0600): one thread per connection, frames as in the pool.

    socket_uid: hand the socket to this uid (the service runs as root to drop executions to their own uids;
    its clients, the workers, run unprivileged, e.g. uid 1000 in our images). None: the server's own uid."""
    path = str(socket_path)
    if socket_uid is not None and (not isinstance(socket_uid, int) or isinstance(socket_uid, bool)
                                   or socket_uid < 0):
        raise ConfigError("socket_uid", f"got {socket_uid!r}; expected a uid >= 0 (the workers' user)")
    if os.path.exists(path):
        os.unlink(path)
    pool = SandboxPool(config)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        srv.bind(path)
        if socket_uid is not None:
            os.chown(path, socket_uid, -1)
    except BaseException:
        srv.close()
        pool.close()
        raise
    finally:
        os.umask(old)
    srv.listen(64)
    srv.settimeout(0.5)

    def handle(conn: socket.socket) -> None:
        held: _Lease | None = None
        try:
            with conn:
                while True:
                    try:
                        job = _recv(conn)
                    except (EOFError, OSError, ValueError):
                        return
                    if not isinstance(job, dict):
                        return
                    op = job.get("op")
                    if op == "info":
                        reply = {"ok": True, "slots": pool.slots, "info": pool.info}
                    elif op == "lease":
                        if held is None:
                            held = _Lease(pool, pool._free.get())
                        reply = {"ok": True}
                    elif op == "release":
                        if held is not None:
                            held.close()
                            held = None
                        reply = {"ok": True}
                    elif op == "stop":  # crossed the end of its batch
                        continue
                    elif op == "batch":
                        reply = (_serve_batch(conn, held, job) if held is not None
                                 else {"ok": False, "error": "a batch needs a lease"})
                    else:
                        reply = held.run(job) if held is not None else pool.run(job)
                    try:
                        _send(conn, reply)
                    except OSError:
                        return
        finally:
            if held is not None:
                held.close()

    if ready is not None:
        ready.set()
    try:
        while stop is None or not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    finally:
        srv.close()
        pool.close()
        if os.path.exists(path):
            os.unlink(path)
