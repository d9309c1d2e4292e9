"""Sandbox pool for untrusted code: pre-started executor processes, one per slot (see docs/sandbox.md).

The pool never forks the calling process: each slot is a fresh ``python -I sdpo_sandbox/_executor.py``
interpreter (spawned with ``subprocess``), which confines itself once (uid, namespaces) and then forks one
small child per test case. Requests and replies are length-prefixed JSON frames; the same frames travel over a
unix socket when the executor runs as its own service (``sdpo sandbox serve``), so ``SandboxPool`` and
``SandboxClient`` are interchangeable ``Sandbox`` objects.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

EXECUTOR = Path(__file__).with_name("_executor.py")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
ISOLATION_MODES = ("strong", "weak")
DEFAULT_HIDE = ("/run", "/root", "/home", "/srv", "/mnt", "/media", "/opt/secrets")


class ConfigError(ValueError):
    """A sandbox setting is invalid. The message names the field, the value and the fix."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class SandboxError(RuntimeError):
    """The sandbox machinery (not the solution) failed."""


class SandboxUnavailable(RuntimeError):
    """A required isolation primitive is missing; the message says which and how to opt into weak mode."""


@dataclass
class SandboxConfig:
    """Limits and isolation of the sandbox pool.

    slots: concurrent executors (0 = number of CPUs, at least 2).
    isolation: "strong" (root: per-slot uid, network + mount namespaces) or "weak" (rlimits, sessions and
        kills only; for machines without root). Default: env ``SDPO_SANDBOX`` or "strong".
    memory_mb: address space a test may use beyond the executor's own.
    max_output_bytes: stdout cap (beyond it: output_limit); max_stderr_bytes: stderr kept.
    max_processes: processes/threads of the slot uid (RLIMIT_NPROC). max_file_mb: largest file written.
    scratch_mb: size of the slot's private tmpfs /tmp (all scratch files together).
    uid_base: first unprivileged uid; slot uids are uid_base..uid_base+999, checker uids +1000.
    hide_paths: extra directories to cover (the project dir, SDPO_DATA_DIR, /run, /root, /home are always).
    reply_slack_s: how long past a test's time limit the caller waits for an executor before restarting it.
    """

    slots: int = 0
    isolation: str = field(default_factory=lambda: os.environ.get("SDPO_SANDBOX", "strong"))
    memory_mb: int = 1024
    max_output_bytes: int = 8 << 20
    max_stderr_bytes: int = 64 << 10
    max_processes: int = 32
    max_file_mb: int = 16
    scratch_mb: int = 128
    uid_base: int = 60000
    hide_paths: tuple[str, ...] = ()
    reply_slack_s: float = 30.0

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATION_MODES:
            raise ConfigError("isolation", f"got {self.isolation!r}; allowed values are {ISOLATION_MODES}")
        for name, lo in (("slots", 0), ("memory_mb", 64), ("max_output_bytes", 1024), ("max_stderr_bytes", 0),
                         ("max_processes", 1), ("max_file_mb", 1), ("scratch_mb", 1), ("uid_base", 1000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(name, f"got {v!r}; expected an integer >= {lo}")
        if self.uid_base + 2000 > 2**31:
            raise ConfigError("uid_base", f"got {self.uid_base}; uid_base + 2000 must stay below 2**31")
        if not isinstance(self.reply_slack_s, (int, float)) or self.reply_slack_s <= 0:
            raise ConfigError("reply_slack_s", f"got {self.reply_slack_s!r}; expected seconds > 0")
        self.hide_paths = tuple(str(p) for p in self.hide_paths)
        if self.slots == 0:
            self.slots = max(2, os.cpu_count() or 2)

    def executor_config(self) -> dict[str, Any]:
        data_dir = os.environ.get("SDPO_DATA_DIR", str(PROJECT_ROOT / "var"))
        hide = [str(PROJECT_ROOT), str(Path(data_dir).resolve()), *DEFAULT_HIDE, *self.hide_paths]
        keep = sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
        return {
            "strong": self.isolation == "strong",
            "memory_mb": self.memory_mb,
            "max_output_bytes": self.max_output_bytes,
            "max_stderr_bytes": self.max_stderr_bytes,
            "max_processes": self.max_processes,
            "max_file_mb": self.max_file_mb,
            "scratch_mb": self.scratch_mb,
            "uid_base": self.uid_base,
            "lock_dir": "/tmp/sdpo-sandbox-locks",
            "hide": hide,
            "keep": keep,
        }


class Runner(Protocol):
    def run(self, job: dict[str, Any]) -> dict[str, Any]: ...


class Sandbox(Protocol):
    """Runs test-case jobs (dicts with ``mode``, ``code``, ``input``, ``time_limit``, ``fn_name``) and returns the
    executor's replies.

    ``run`` uses any free slot with a fresh process per test. ``lease()`` holds one slot for the tests of one
    solution: they run one after the other in a warm process of that solution (LiveCodeBench style: fresh
    module globals and stdin per test; a test that crashes, times out or overflows ends the process and the
    next test starts a new one), which is retired with everything it started when the lease ends.
    """

    slots: int

    def run(self, job: dict[str, Any]) -> dict[str, Any]: ...

    def lease(self) -> AbstractContextManager[Runner]: ...


# ------------------------------------------------------------------------------------------- framing


def _send(sock_or_fd: Any, obj: Any) -> None:
    data = json.dumps(obj).encode()
    payload = struct.pack(">I", len(data)) + data
    if isinstance(sock_or_fd, socket.socket):
        sock_or_fd.sendall(payload)
    else:
        view = memoryview(payload)
        while view:
            view = view[os.write(sock_or_fd, view):]


def _recv_exact(src: Any, n: int, deadline: float | None) -> bytes:
    import time

    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("sandbox executor did not answer in time")
            r, _, _ = select.select([src], [], [], left)
            if not r:
                continue
        b = src.recv(min(n - got, 1 << 20)) if isinstance(src, socket.socket) else os.read(src, min(n - got, 1 << 20))
        if not b:
            raise EOFError("sandbox connection closed")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _recv(src: Any, deadline: float | None = None) -> Any:
    (n,) = struct.unpack(">I", _recv_exact(src, 4, deadline))
    return json.loads(_recv_exact(src, n, deadline))


# ------------------------------------------------------------------------------------------- pool


class _CallerError(Exception):
    """The caller's own callback raised during a batch (the executor finished the protocol and is fine)."""

    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error


class _Slot:
    """One executor process."""

    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(EXECUTOR)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
            start_new_session=True, cwd="/",
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        import time

        try:
            _send(self.wfd, cfg.executor_config())
            hello = _recv(self.rfd, time.monotonic() + 60)
        except (EOFError, TimeoutError, OSError) as e:
            self.close()
            raise SandboxUnavailable(f"sandbox executor failed to start ({e})") from None
        if not hello.get("ok"):
            self.close()
            raise SandboxUnavailable(
                f"strong sandbox isolation is unavailable: {hello.get('error')}. Run as root on Linux with "
                "namespaces available (as in CI), or opt into the documented weaker mode with "
                "SDPO_SANDBOX=weak / SandboxConfig(isolation='weak') (see docs/sandbox.md)."
            )
        self.info = hello
        # An executor that has handled an ``assert`` job had its trusted check code in memory; freed memory is
        # not wiped, so it never forks another solution process (``needs_fresh``): the pool replaces it first.
        self.tainted = False

    def needs_fresh(self, job: dict[str, Any]) -> bool:
        """Whether ``job`` would fork a solution from this executor's memory after it held trusted text."""
        return self.tainted and job.get("mode") in ("stdin", "functional")

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        import time

        if job.get("mode") == "assert":
            self.tainted = True
        _send(self.wfd, job)
        return _recv(self.rfd, time.monotonic() + float(job.get("time_limit", 6.0)) + self.cfg.reply_slack_s)

    def batch(self, job: dict[str, Any], on_result: Callable[[int, dict[str, Any]], bool]) -> None:
        """Send a batch job; call ``on_result(index, reply)`` per streamed reply; when it returns False, ask
        the executor to stop (replies that still arrive are passed on too). Raises on executor failure."""
        import time

        _send(self.wfd, job)
        stop_sent = False
        error: BaseException | None = None
        wait = float(job.get("time_limit", 6.0)) + self.cfg.reply_slack_s
        while True:
            frame = _recv(self.rfd, time.monotonic() + wait)
            if not frame.get("ok"):
                raise SandboxError(f"sandbox executor failed: {frame.get('error')}")
            if frame.get("end"):
                break
            keep_going = False
            if error is None:
                try:
                    keep_going = on_result(int(frame["index"]), frame)
                except BaseException as e:  # finish the protocol first, then re-raise
                    error = e
            if not keep_going and not stop_sent:
                _send(self.wfd, {"op": "stop"})
                stop_sent = True
        if error is not None:
            raise _CallerError(error)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    _send(self.wfd, {"op": "exit"})
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()


class SandboxPool:
    """A pool of pre-started executors; ``run`` is thread-safe (one job per slot at a time)."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.slots = self.config.slots
        self._free: queue.Queue[_Slot] = queue.Queue()
        self._all: list[_Slot] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            for _ in range(self.slots):
                s = _Slot(self.config)
                self._all.append(s)
                self._free.put(s)
        except BaseException:
            self.close()
            raise

    @property
    def info(self) -> dict[str, Any]:
        """What the first executor reports it enforces."""
        return self._all[0].info if self._all else {}

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError("sandbox pool is closed")
        if job.get("op") not in (None, "run"):
            return {"ok": False, "error": f"unsupported op {job.get('op')!r} outside a lease"}
        slot = self._free.get()
        try:
            if slot.needs_fresh(job):
                slot = self._replace(slot)
            for attempt in (1, 2):
                try:
                    return slot.run(job)
                except (EOFError, TimeoutError, OSError, ValueError) as e:
                    # The executor died or hung: replace it, retry once on the fresh one, then give up.
                    slot = self._replace(slot)
                    if attempt == 2:
                        return {"ok": False, "error": f"sandbox executor failed twice: {e}"}
            raise AssertionError("unreachable")
        finally:
            self._free.put(slot)

    @contextmanager
    def lease(self) -> Iterator[_Lease]:
        """Hold one slot (and its warm solution process) for the tests of one solution."""
        if self._closed:
            raise RuntimeError("sandbox pool is closed")
        held = _Lease(self, self._free.get())
        try:
            yield held
        finally:
            held.close()

    def _replace(self, slot: _Slot) -> _Slot:
        try:
            slot.proc.kill()
        except OSError:
            pass
        slot.close()
        new = _Slot(self.config)
        with self._lock:
            self._all[self._all.index(slot)] = new
        return new

    def close(self) -> None:
        self._closed = True
        for s in self._all:
            s.close()
        self._all = []

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lease:
    """One slot held by one caller; jobs run in the slot's warm process."""

    def __init__(self, pool: SandboxPool, slot: _Slot):
        self.pool, self.slot = pool, slot
        self.warm = False  # a warm process may be left (a batch retires its own)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        job = {**job, "warm": True}
        self.warm = True
        self._fresh_for(job)
        for attempt in (1, 2):
            try:
                return self.slot.run(job)
            except (EOFError, TimeoutError, OSError, ValueError) as e:
                self.slot = self.pool._replace(self.slot)
                if attempt == 2:
                    return {"ok": False, "error": f"sandbox executor failed twice: {e}"}
        raise AssertionError("unreachable")

    def batch(self, job: dict[str, Any], on_result: Callable[[int, dict[str, Any]], bool]) -> None:
        """Run a batch job (all tests of one solution, streamed; see ``_Slot.batch``). If the executor dies
        the slot is replaced and SandboxError raised; the caller then runs the remaining tests one by one.
        An exception raised by ``on_result`` itself (the caller's judging) propagates as it is, and the
        executor, which finished the batch normally, is kept."""
        self._fresh_for(job)
        try:
            self.slot.batch(job, on_result)
        except _CallerError as e:
            raise e.error from None
        except SandboxError:
            self.slot = self.pool._replace(self.slot)
            raise
        except (EOFError, TimeoutError, OSError, ValueError) as e:
            self.slot = self.pool._replace(self.slot)
            raise SandboxError(f"sandbox executor failed during a batch: {e}") from None

    def _fresh_for(self, job: dict[str, Any]) -> None:
        if self.slot.needs_fresh(job):
            self.slot = self.pool._replace(self.slot)

    def close(self) -> None:
        if self.warm:
            try:
                self.slot.run({"op": "retire"})
            except (EOFError, TimeoutError, OSError, ValueError):
                self.slot = self.pool._replace(self.slot)
        self.pool._free.put(self.slot)


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_pool() -> Sandbox:
    """The process-wide sandbox, created on first use: a ``SandboxClient`` when ``SDPO_SANDBOX_SOCKET`` names
    a running ``sdpo sandbox serve`` socket, else an embedded ``SandboxPool`` (closed at exit)."""
    global _default
    with _default_lock:
        if _default is None:
            path = os.environ.get("SDPO_SANDBOX_SOCKET")
            if path:
                _default = SandboxClient(path)
            else:
                pool = SandboxPool()
                atexit.register(pool.close)
                _default = pool
        return _default


# ------------------------------------------------------------------------------------------- service


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
        import time

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
        import time

        s = self._sock()
        wait = float(job.get("time_limit", 6.0)) + self.slack
        try:
            _send(s, job)
            stop_sent = False
            error: BaseException | None = None
            while True:
                frame = _recv(s, time.monotonic() + wait)
                if not frame.get("ok"):
                    raise SandboxError(f"sandbox service failed: {frame.get('error')}")
                if frame.get("end"):
                    break
                keep_going = False
                if error is None:
                    try:
                        keep_going = on_result(int(frame["index"]), frame)
                    except BaseException as e:
                        error = e
                if not keep_going and not stop_sent:
                    _send(s, {"op": "stop"})
                    stop_sent = True
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
