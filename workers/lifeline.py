"""Processes that die with the worker that started them.

``python -m workers.lifeline PARENT_PID CMD [ARGS...]`` sets the Linux parent-death signal
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``), checks that its parent is still ``PARENT_PID`` (it could have died
before the signal was set) and execs ``CMD``; the setting survives ``exec``, so ``CMD`` is killed the moment
its parent dies, however the parent died (SIGKILL, OOM killer). The worker starts ``torchrun`` this way
(``workers.runner.run_train_ranks``); each rank sets the signal for itself too (its parent is torchrun, whose
ranks run in sessions of their own) and watches the worker's pid (``watch_pid``) in case the chain broke
while it started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return True


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    if Path("/proc/self/stat").exists():  # Linux: the state letter follows the parenthesised command name
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch_pid(pid: int, interval_s: float = 1.0) -> threading.Thread:
    """A daemon thread that ends this process (exit code 1) once ``pid`` is gone."""

    def run() -> None:
        while pid_alive(pid):
            time.sleep(interval_s)
        os._exit(1)

    t = threading.Thread(target=run, name=f"watch-{pid}", daemon=True)
    t.start()
    return t


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m workers.lifeline PARENT_PID CMD [ARGS...]", file=sys.stderr)
        return 2
    parent, cmd = int(argv[0]), argv[1:]
    set_parent_death_signal()
    if os.getppid() != parent:
        return 1  # the parent died before the signal was set
    os.execvp(cmd[0], cmd)
    return 1  # pragma: no cover - execvp does not return


if __name__ == "__main__":  # pragma: no cover - process entry
    sys.exit(main(sys.argv[1:]))
