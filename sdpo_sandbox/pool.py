"""Sandbox pool for untrusted code: pre-started executor processes, one per slot (see docs/sandbox.md).

The pool never forks the calling process: each slot is a fresh ``python -I sdpo_sandbox/_executor.py``
interpreter (spawned with ``subprocess``), which confines itself once (uid, namespaces) and then forks a
zygote per solution and a process per test case. Requests and replies are length-prefixed JSON frames; the
same frames travel over a unix socket when the pool is served as its own service (``sdpo_sandbox.service``),
so ``SandboxPool`` and ``SandboxClient`` are interchangeable ``Sandbox`` objects.
"""

from __future__ import annotations

import json
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
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


def stream_batch(send: Callable[[Any], None], recv: Callable[[], Any], job: dict[str, Any],
                 on_result: Callable[[int, dict[str, Any]], bool]) -> BaseException | None:
    """The caller's side of a streamed batch, over any transport (``send(frame)``, ``recv() -> frame``).

    Sends ``job`` and passes each streamed reply to ``on_result(index, reply)``; when that returns False (or
    raises), asks the executor to stop, once, and goes on reading until the end frame (replies that still
    arrive are passed on too, until ``on_result`` has raised). Returns what ``on_result`` raised, if anything,
    once the protocol is complete (the executor is then fine); raises SandboxError on a failed frame, and the
    transport's errors as they are."""
    send(job)
    stop_sent = False
    error: BaseException | None = None
    while True:
        frame = recv()
        if not frame.get("ok"):
            raise SandboxError(f"sandbox executor failed: {frame.get('error')}")
        if frame.get("end"):
            return error
        keep_going = False
        if error is None:
            try:
                keep_going = on_result(int(frame["index"]), frame)
            except BaseException as e:  # finish the protocol first
                error = e
        if not keep_going and not stop_sent:
            send({"op": "stop"})
            stop_sent = True


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
        if job.get("mode") == "assert":
            self.tainted = True
        _send(self.wfd, job)
        return _recv(self.rfd, time.monotonic() + self._wait(job))

    def batch(self, job: dict[str, Any], on_result: Callable[[int, dict[str, Any]], bool]) -> None:
        """Send a batch job; call ``on_result(index, reply)`` per streamed reply; when it returns False, ask
        the executor to stop (``stream_batch``). Raises on executor failure."""
        wait = self._wait(job)
        error = stream_batch(lambda frame: _send(self.wfd, frame), lambda: _recv(self.rfd, time.monotonic() + wait),
                             job, on_result)
        if error is not None:
            raise _CallerError(error)

    def _wait(self, job: dict[str, Any]) -> float:
        """How long to wait for one reply before taking the executor for dead."""
        return float(job.get("time_limit", 6.0)) + self.cfg.reply_slack_s

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
            slot, reply = self._run_on(slot, job)
            return reply
        finally:
            self._free.put(slot)

    def _run_on(self, slot: _Slot, job: dict[str, Any]) -> tuple[_Slot, dict[str, Any]]:
        """Run ``job`` on ``slot`` (replaced first if it must not fork a solution, see ``_Slot.needs_fresh``);
        if the executor died or hung, replace it and retry once on the fresh one, then give up with an error
        reply. Returns the slot now in use and the reply."""
        if slot.needs_fresh(job):
            slot = self._replace(slot)
        try:
            return slot, slot.run(job)
        except (EOFError, TimeoutError, OSError, ValueError):
            slot = self._replace(slot)
        try:
            return slot, slot.run(job)
        except (EOFError, TimeoutError, OSError, ValueError) as e:
            return self._replace(slot), {"ok": False, "error": f"sandbox executor failed twice: {e}"}

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
        self.warm = True
        self.slot, reply = self.pool._run_on(self.slot, {**job, "warm": True})
        return reply

    def batch(self, job: dict[str, Any], on_result: Callable[[int, dict[str, Any]], bool]) -> None:
        """Run a batch job (all tests of one solution, streamed; see ``_Slot.batch``). If the executor dies
        the slot is replaced and SandboxError raised; the caller then runs the remaining tests one by one.
        An exception raised by ``on_result`` itself (the caller's judging) propagates as it is, and the
        executor, which finished the batch normally, is kept."""
        if self.slot.needs_fresh(job):
            self.slot = self.pool._replace(self.slot)
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

    def close(self) -> None:
        if self.warm:
            try:
                self.slot.run({"op": "retire"})
            except (EOFError, TimeoutError, OSError, ValueError):
                self.slot = self.pool._replace(self.slot)
        self.pool._free.put(self.slot)
