"""The code sandbox: OS-level isolation for untrusted programs (see docs/sandbox.md).

A ``SandboxPool`` keeps pre-started executor processes (``_executor.py``, stdlib only), one per slot, that run
test cases in confined, namespaced processes and report what happened (exit status, output, time); a
``SandboxClient`` talks to the same pool served on a unix socket by ``serve`` (``sdpo sandbox serve``). Judging
(expected outputs, verdicts, feedback) is the caller's business: this package imports nothing of the project.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from sdpo_sandbox.pool import (
    ConfigError,
    Sandbox,
    SandboxConfig,
    SandboxError,
    SandboxPool,
    SandboxUnavailable,
)
from sdpo_sandbox.service import SandboxClient, serve

__all__ = ["ConfigError", "Sandbox", "SandboxClient", "SandboxConfig", "SandboxError", "SandboxPool",
           "SandboxUnavailable", "decode_value", "default_pool", "serve"]


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


def decode_value(tagged: Any) -> Any:
    """A value from an executor reply (tagged JSON, e.g. a functional test's return value) as plain builtins;
    raises ValueError on anything malformed."""
    from sdpo_sandbox._executor import decode_value as decode  # the executor's codec, loaded on first use

    return decode(tagged)
