"""Sandbox executor: one long-lived process per pool slot (stdlib only, runnable as a script).

Started by ``sdpo_sandbox.pool`` as ``python -I _executor.py`` (a fresh interpreter, never a fork of the caller).
It talks length-prefixed JSON frames over its stdin/stdout (the first one is its configuration) and runs one
test case per request.
Nothing here is imported by untrusted code; untrusted code only ever runs in children of this process, after
they dropped to the slot's unprivileged uid.

Strong mode (root required), set up once at start:
  * uid/gid: one free uid per slot (``uid_base + k``, reserved with an ``flock`` so concurrent pools on the
    machine never share one) for the solution, and ``uid + 1000`` for the trusted checker of ``assert`` tests.
  * namespaces: a new network namespace (loopback down: 127.0.0.1 and abstract sockets unreachable) and a new
    mount namespace where /tmp is a small private tmpfs (with a sticky 1777 directory of it bound over
    /dev/shm) and /var/tmp a tiny read-only one, and the project directory, the data directory, /run, /root
    and /home are covered by empty read-only tmpfs mounts (the Python installation is bound back read-only so
    imports work).
  * a seccomp deny-list filter (``SeccompFilter``, built with libseccomp through ctypes; refuses to start
    without it), loaded by every child before it runs untrusted code.
Per solution (``stdin``/``functional``): a zygote (``zygote``), pid 1 of a PID namespace and an IPC namespace
of its own, with its own session, rlimits (address space = executor + memory limit, CPU = time limit + 2 s,
processes, file size, open files, no core), ``setresuid`` to the slot uid, ``PR_SET_PDEATHSIG``,
``PR_SET_NO_NEW_PRIVS`` and the seccomp filter; it compiles the solution and forks one fresh process per test
(fds 0-3, module state, argv, environment and a 0700 scratch directory of its own), then kills and reaps
everything the test started before it answers. The executor drains each test's stdout/stderr/report pipes
with byte caps (``Capture``, ``await_run``), enforces the wall-clock deadline by killing the whole namespace
(``waitpid`` on its init returns once every process in it is gone), and afterwards removes the scratch
directory and everything the slot's uids left in /tmp and /dev/shm. ``assert`` tests: the solution in a
fresh interpreter (pid 1 of a namespace of its own) and the trusted check code in a checker of another uid.

Weak mode (``SDPO_SANDBOX=weak``): no uid change and no namespaces; rlimits, sessions, scratch, empty
environment, the seccomp filter when libseccomp is there, and the kill of every descendant (the zygote and
this process are child sub-reapers) before a verdict.
"""

from __future__ import annotations

import base64
import ctypes
import fcntl
import gc
import json
import os
import resource
import select
import signal
import struct
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
# Every namespace flag clone(2) takes (CLONE_NEWTIME exists for unshare/clone3 only; both are denied whole).
CLONE_NAMESPACE_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
                         "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                         "CLONE_NEWNET": 0x40000000}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38

SHM_DIR = "/tmp/.sdpo-shm"  # strong mode: bound over /dev/shm
SHARED_WRITABLE = ("/tmp", SHM_DIR)
VISIBLE_TOP_LEVEL = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "sys", "tmp"}
MAX_FRAME = 1 << 30
REPORT_CAP = 16 << 20
STACK_BYTES = 256 << 20

_libc = ctypes.CDLL(None, use_errno=True)

# Imported once here so the forked children start with them cached (LiveCodeBench's implicit imports).
PRELUDE_MODULES = (
    "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random", "statistics",
    "itertools", "functools", "operator", "io", "json", "typing", "fractions", "decimal", "array",
)
for _m in PRELUDE_MODULES:
    __import__(_m)
import builtins  # noqa: E402
import traceback  # noqa: E402

# --------------------------------------------------------------------------------------------- value codec
# Values cross process boundaries as tagged JSON (never pickle): every value is [tag, payload]. Decoding builds
# only plain builtins, so nothing the solution returns can carry behaviour (no custom __eq__).


def encode_value(v, depth: int = 0):
    """Encode a Python value as tagged JSON; unknown objects become opaque ["o", type name]."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    if v is None:
        return ["n"]
    if isinstance(v, bool):
        return ["b", bool(v)]
    if isinstance(v, int):
        return ["i", hex(int(v))]
    if isinstance(v, float):
        return ["f", float.__repr__(float(v))]
    if isinstance(v, str):
        return ["s", str.__str__(v)]
    if isinstance(v, (bytes, bytearray)):
        return ["y", bytes(v).decode("latin-1")]
    if isinstance(v, complex):
        return ["c", [float.__repr__(v.real), float.__repr__(v.imag)]]
    if isinstance(v, tuple):
        return ["t", [encode_value(x, depth + 1) for x in tuple.__iter__(v)]]
    if isinstance(v, list):
        return ["l", [encode_value(x, depth + 1) for x in list.__iter__(v)]]
    if isinstance(v, dict):
        return ["d", [[encode_value(k, depth + 1), encode_value(x, depth + 1)] for k, x in dict.items(v)]]
    if isinstance(v, frozenset):
        return ["fs", [encode_value(x, depth + 1) for x in frozenset.__iter__(v)]]
    if isinstance(v, set):
        return ["set", [encode_value(x, depth + 1) for x in set.__iter__(v)]]
    mod = getattr(type(v), "__module__", "")
    if mod == "numpy" and hasattr(v, "tolist"):
        return encode_value(v.tolist(), depth + 1)
    name = type.__getattribute__(type(v), "__name__")
    return ["o", str.__str__(name) if isinstance(name, str) else "object"]


class Opaque:
    """A value that could not be encoded; equal to nothing but itself."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name} object>"


def _float(s: str) -> float:
    return float(s)


def decode_value(t, depth: int = 0):
    """Inverse of encode_value; raises ValueError on anything malformed."""
    if depth > 200 or not isinstance(t, list) or not t or not isinstance(t[0], str):
        raise ValueError("malformed value")
    tag = t[0]
    p = t[1] if len(t) > 1 else None
    if tag == "n":
        return None
    if tag == "b" and isinstance(p, bool):
        return p
    if tag == "i" and isinstance(p, str):
        return int(p, 16)
    if tag == "f" and isinstance(p, str):
        return _float(p)
    if tag == "s" and isinstance(p, str):
        return p
    if tag == "y" and isinstance(p, str):
        return p.encode("latin-1")
    if tag == "c" and isinstance(p, list) and len(p) == 2:
        return complex(_float(p[0]), _float(p[1]))
    if tag in ("t", "l", "set", "fs") and isinstance(p, list):
        items = [decode_value(x, depth + 1) for x in p]
        return {"t": tuple, "l": list, "set": set, "fs": frozenset}[tag](items)
    if tag == "d" and isinstance(p, list):
        out = {}
        for kv in p:
            if not isinstance(kv, list) or len(kv) != 2:
                raise ValueError("malformed dict item")
            out[decode_value(kv[0], depth + 1)] = decode_value(kv[1], depth + 1)
        return out
    if tag == "o" and isinstance(p, str):
        return Opaque(p[:100])
    raise ValueError(f"unknown value tag {tag!r}")


# ------------------------------------------------------------------------------------------- framing


def write_frame(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    buf = struct.pack(">I", len(data)) + data
    view = memoryview(buf)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            raise EOFError("pipe closed")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_frame(fd: int):
    (n,) = struct.unpack(">I", _read_exact(fd, 4))
    if n > MAX_FRAME:
        raise ValueError("frame too large")
    return json.loads(_read_exact(fd, n))


# ------------------------------------------------------------------------------------------- system helpers


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def setup_namespaces(cfg: dict) -> list[str]:
    """Strong mode: private network + mount namespaces for this executor and all its children."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare(CLONE_NEWNS|CLONE_NEWNET)")
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    enforced = ["network namespace (no interfaces up)", "mount namespace"]
    # The Python installation may live under /tmp (a checkout there with its .venv): bind it aside, cover /tmp
    # with the private tmpfs, then move it back read-only.
    in_tmp = sorted({os.path.realpath(p) for p in cfg["keep"]
                     if os.path.isdir(p) and _under(os.path.realpath(p), "/tmp")})
    staged_tmp = []
    for i, k in enumerate(in_tmp):
        if any(_under(k, other) for other in in_tmp if other != k):
            continue  # already inside another kept path
        st = f"/dev/.sdpo-keep-{os.getpid()}-{i}"
        os.mkdir(st, 0o700)
        _mount(k, st, None, MS_BIND | MS_REC)
        staged_tmp.append((st, k))
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['scratch_mb']}m,mode=1777")
    for st, k in staged_tmp:
        os.makedirs(k, mode=0o755, exist_ok=True)
        _mount(st, k, None, MS_MOVE)
        os.rmdir(st)
        _mount(None, k, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    if os.path.isdir("/var/tmp") and not os.path.islink("/var/tmp"):
        _mount("tmpfs", "/var/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    if os.path.isdir("/dev/shm") and not os.path.islink("/dev/shm"):
        # POSIX shared memory and semaphores (multiprocessing) need a writable /dev/shm: a sticky 1777
        # directory of the private /tmp tmpfs (so it shares the scratch_mb budget), emptied of the slot's
        # files after every run like /tmp (``clean_shared_dirs``).
        os.mkdir(SHM_DIR, 0o700)
        os.chmod(SHM_DIR, 0o1777)
        _mount(SHM_DIR, "/dev/shm", None, MS_BIND)
        _mount(None, "/dev/shm", None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    try:  # other users' processes (their command lines, environments) become invisible
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        enforced.append("/proc with hidepid=2")
    except OSError as e:
        enforced.append(f"host /proc visible ({e.strerror})")
    keep = [os.path.realpath(p) for p in cfg["keep"] if os.path.isdir(p)]
    hidden: list[str] = []
    # Everything at the top level that is not the operating system is covered (the data of this machine:
    # /work, /opt, /srv, /var, /home, /root, /run, ...); the Python installation is bound back read-only.
    top = [f"/{n}" for n in sorted(os.listdir("/")) if n not in VISIBLE_TOP_LEVEL]
    for raw in list(cfg["hide"]) + top:
        if not os.path.isdir(raw) or os.path.islink(raw):
            continue
        h = os.path.realpath(raw)
        if h == "/" or any(_under(h, k) for k in keep):
            continue
        if any(_under(h, x) for x in hidden):
            continue
        inner = [k for k in keep if _under(k, h)]
        staged = []
        for i, k in enumerate(inner):
            st = f"/tmp/.keep-{len(hidden)}-{i}"
            os.mkdir(st, 0o700)
            _mount(k, st, None, MS_BIND | MS_REC)
            staged.append((st, k))
        _mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        for st, k in staged:
            os.makedirs(k, exist_ok=True)
            _mount(st, k, None, MS_MOVE)
            os.rmdir(st)
            _mount(None, k, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        _mount(None, h, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        hidden.append(h)
    enforced.append("hidden: " + ", ".join(hidden))
    return enforced


# ------------------------------------------------------------------------------------------- seccomp
# A deny-list filter built with libseccomp (Debian's libseccomp2, the maintained C library; no Python binding
# needed) and loaded into every confined child before it runs anything untrusted. Everything not listed is
# allowed: threads, fork/vfork, clone without namespace flags, subprocess, sockets other than the two families.

SECCOMP_LIBRARY = "libseccomp.so.2"
SECCOMP_DENY = (  # -> EPERM
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
    "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd", "open_by_handle_at", "name_to_handle_at",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "lookup_dcookie", "syslog", "vhangup", "iopl", "ioperm",
)
SECCOMP_REQUIRED = (  # must be known to the loaded libseccomp, else strong mode refuses to start
    "unshare", "setns", "mount", "umount2", "pivot_root", "ptrace", "process_vm_readv", "process_vm_writev",
    "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
    "perf_event_open", "kexec_load", "init_module", "finit_module", "delete_module", "userfaultfd",
    "open_by_handle_at", "clone", "clone3", "socket",
)
SECCOMP_DENY_SOCKET_FAMILIES = {"AF_NETLINK": 16, "AF_PACKET": 17}  # socket(domain, ...) -> EPERM
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def SCMP_ACT_ERRNO(errno_value: int) -> int:  # noqa: N802 (the C macro's name)
    return 0x00050000 | (errno_value & 0x0000FFFF)


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class SeccompUnavailable(RuntimeError):
    pass


class SeccompFilter:
    """The sandbox's seccomp filter, built once in the executor; ``load()`` installs it in a forked child.

    ``denied`` lists (name, number, errno, condition) of every rule, for the report and the tests.
    """

    def __init__(self, library: str = SECCOMP_LIBRARY):
        import errno

        try:
            lib = ctypes.CDLL(library, use_errno=True)
        except OSError as e:
            raise SeccompUnavailable(
                f"the seccomp filter needs {library} (install the libseccomp2 package: apt-get install "
                f"libseccomp2): {e}") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_ScmpArgCmp)]
        lib.seccomp_load.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_export_pfc.restype = ctypes.c_int
        lib.seccomp_export_pfc.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.lib = lib
        numbers = {}
        for name in dict.fromkeys(SECCOMP_DENY + SECCOMP_REQUIRED):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr >= 0:
                numbers[name] = nr
            elif name in SECCOMP_REQUIRED:
                raise SeccompUnavailable(f"{library} does not know the syscall {name!r} (too old a libseccomp2)")
        self.ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        if not self.ctx:
            raise SeccompUnavailable("seccomp_init failed")
        self.denied: list[tuple[str, int, int, str]] = []
        eperm = SCMP_ACT_ERRNO(errno.EPERM)
        for name in SECCOMP_DENY:
            if name in numbers:
                self._rule(name, numbers[name], eperm, errno.EPERM)
        for flag, bit in CLONE_NAMESPACE_FLAGS.items():  # clone(flags, ...): flags is arg 0 on x86-64
            self._rule("clone", numbers["clone"], eperm, errno.EPERM, (0, SCMP_CMP_MASKED_EQ, bit, bit), flag)
        # clone3 passes its flags in a struct a filter cannot read: deny it whole with ENOSYS, so glibc (threads,
        # posix_spawn) falls back to clone, where the rule above applies.
        self._rule("clone3", numbers["clone3"], SCMP_ACT_ERRNO(errno.ENOSYS), errno.ENOSYS)
        for family, value in SECCOMP_DENY_SOCKET_FAMILIES.items():
            # The kernel reads the domain as a 32-bit int: compare the low 32 bits only (a plain 64-bit EQ
            # would let 0x1_0000_0010 through as AF_NETLINK).
            self._rule("socket", numbers["socket"], eperm, errno.EPERM,
                       (0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, value), family)

    def _rule(self, name: str, nr: int, action: int, err: int, cmp: tuple | None = None, what: str = "") -> None:
        args = (_ScmpArgCmp * 1)(_ScmpArgCmp(*cmp)) if cmp else None
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, 1 if cmp else 0, args)
        if rc < 0:
            raise SeccompUnavailable(f"seccomp_rule_add({name}{' ' + what if what else ''}) failed: "
                                     f"{os.strerror(-rc)}")
        self.denied.append((name, nr, err, what))

    def load(self) -> None:
        """Install the filter in this process (and all it will start); it cannot be removed afterwards."""
        rc = self.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")

    def pfc(self) -> str:
        """The filter as libseccomp's pseudo filter code (human-readable), for inspection."""
        fd = os.memfd_create("seccomp-pfc")
        try:
            rc = self.lib.seccomp_export_pfc(self.ctx, fd)
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_pfc: {os.strerror(-rc)}")
            return os.pread(fd, os.fstat(fd).st_size, 0).decode()
        finally:
            os.close(fd)


def rmtree(path: str) -> None:
    """Remove a directory tree, never following a symlink (what solutions leave is untrusted); errors are
    ignored. (Not shutil.rmtree: importing shutil maps six more shared libraries into this process, and every
    mapping makes each fork of it, one per test, slower.)"""
    try:
        for _top, dirs, files, fd in os.fwalk(path, topdown=False, follow_symlinks=False):
            for name in files:
                try:
                    os.unlink(name, dir_fd=fd)
                except OSError:
                    pass
            for name in dirs:
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError:
                    try:
                        os.unlink(name, dir_fd=fd)  # a symlink to a directory
                    except OSError:
                        pass
        os.rmdir(path)
    except OSError:
        pass


def clean_shared_dirs(uids: list[int]) -> None:
    """Remove every entry of the shared writable directories (/tmp, /dev/shm: sticky, 1777) owned by one of
    ``uids``, so nothing a solution wrote there outlives its run (another solution of the slot would see it,
    or find the tmpfs full). Only call it once every process of those uids is dead. Anything of theirs is
    at the top level: below it they can only write into directories they own."""
    for d in SHARED_WRITABLE:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
                if st.st_uid not in uids:
                    continue
                if e.is_dir(follow_symlinks=False):
                    rmtree(e.path)
                else:
                    os.unlink(e.path)
            except OSError:
                pass


def reserve_uid(cfg: dict) -> tuple[int, int]:
    """Reserve one free slot uid for the lifetime of this process (flock on a lock file)."""
    lock_dir = cfg["lock_dir"]
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    for k in range(1000):
        uid = cfg["uid_base"] + k
        fd = os.open(os.path.join(lock_dir, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return uid, fd  # the fd stays open (and locked) until this executor exits
    raise RuntimeError("no free sandbox uid")


def kill_uid(uid: int) -> None:
    """SIGKILL every process owned by ``uid``: a helper becomes that uid and calls kill(-1).

    kill(-1) holds the task list lock while it walks it, so nothing can fork past it. The helper checks
    that it really is ``uid`` (never root) before sending anything.
    """
    if uid <= 0:
        raise ValueError("refusing to sweep uid 0")
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if os.getuid() == uid and os.geteuid() == uid and uid != 0:
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _children_of(parent: int) -> list[int]:
    """The pids whose parent is ``parent`` (from /proc)."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rfind(b")") + 2:].split()[1]) == parent:
            kids.append(int(name))
    return kids


def kill_orphans() -> None:
    """SIGKILL and reap every child of this process, a child sub-reaper (each round re-parents the next
    generation of orphans to it), until none is left."""
    me = os.getpid()
    while True:
        for pid in _children_of(me):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.001)


# ------------------------------------------------------------------------------------------- child side


def _build_prelude() -> dict:
    g: dict = {"__builtins__": builtins}
    src = "".join(f"from {m} import *\nimport {m}\n" for m in PRELUDE_MODULES + ("sys",))
    exec(compile(src + "from builtins import *\n", "<prelude>", "exec"), g)
    return g


_PRELUDE = _build_prelude()
_MAIN = __import__("types").ModuleType("__main__")
_MAIN.__dict__.update(_PRELUDE)
_SOLUTION_GLOBALS = {**_PRELUDE, "__name__": "solution"}


def _describe(exc: BaseException) -> dict:
    """Type, message and solution line of an exception (guarded: the exception is untrusted)."""
    try:
        tname = str(type.__getattribute__(type(exc), "__name__"))[:100]
    except BaseException:
        tname = "Exception"
    line = None
    try:
        for fr in traceback.extract_tb(exc.__traceback__):
            if fr.filename == "<solution>":
                line = fr.lineno
    except BaseException:
        pass
    return {"type": tname, "line": line}


def _report(chan: int, obj) -> None:
    try:
        write_line(chan, obj)
    except BaseException:
        pass


def write_line(fd: int, obj) -> None:
    data = json.dumps(obj).encode() + b"\n"
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _message(exc: BaseException) -> str:
    """The (truncated) message of an untrusted exception, whose __str__ may raise or return a non-string."""
    try:
        msg = str(exc)
        if not isinstance(msg, str):
            msg = "<unprintable>"
    except BaseException:
        msg = "<unprintable>"
    return msg[:2000]


def error_info(exc: BaseException) -> dict:
    """Type, line and (guarded, truncated) message of an untrusted exception."""
    info = _describe(exc)
    info["message"] = _message(exc)
    return info


def _report_error(chan: int, exc: BaseException) -> None:
    info = _describe(exc)
    _report(chan, {"error": info})  # the type first: a hostile __str__ may never return
    info["message"] = _message(exc)
    _report(chan, {"error": info})


_STREAMS: list = []


def _std_streams() -> None:
    """Fresh sys.stdin/stdout/stderr on fds 0-2 (kept in _STREAMS too, so they are flushed even when the
    solution rebinds sys.stdout)."""
    # As CPython on POSIX: stdin splits lines at "\n" only (no newline translation), stdout writes "\n".
    # (typeshed marks sys.__stdin__ & co. final; a fresh interpreter of the sandbox rebinds them on purpose)
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", newline="\n",  # type: ignore[misc]
                                     closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="surrogateescape",  # type: ignore[misc]
                                       newline="\n", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace",  # type: ignore[misc]
                                       closefd=False, buffering=1)
    _STREAMS[:] = [sys.stdout, sys.stderr]


def _thread_stack() -> None:
    """New threads get 16 MiB stacks (not RLIMIT_STACK, which would eat the address-space limit)."""
    import _thread

    _thread.stack_size(16 << 20)


def _flush() -> None:
    for s in (sys.stdout, sys.stderr, *_STREAMS):
        try:
            s.flush()
        except BaseException:
            pass


def _program_end() -> None:
    """What the interpreter does when a program's main module is done (``Py_FinalizeEx``: first
    ``threading._shutdown``, then the atexit handlers), without ending this process: wait for every non-daemon
    thread (threads that start threads included), then run and clear the atexit handlers. The executor's
    deadline still applies: a thread that never ends is a time limit, as it would be for a real process.
    (A program that never imported ``threading`` has no thread to wait for: CPython does not wait for threads
    of ``_thread`` either.)"""
    threading = sys.modules.get("threading")
    try:
        me = threading.current_thread() if threading is not None else None
        while threading is not None:
            pending = [t for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]
            if not pending:
                break
            for t in pending:
                t.join()
    except BaseException:
        pass
    try:
        import atexit

        atexit._run_exitfuncs()  # runs and clears them; a failing handler is printed to stderr and skipped
    except BaseException:
        pass


def solution_globals(mode: str) -> dict:
    """The module globals of a run of the solution: LiveCodeBench's prelude (star imports of common modules,
    then the builtins). A stdin program runs in a real ``__main__`` module installed in ``sys.modules`` (so
    pickle finds its functions, as ``multiprocessing`` needs); a functional one runs as ``solution``.

    Built once, here: every run happens in a fresh fork of this process, where they are pristine, so a run
    uses them as they are. (A copy would touch every prelude object, and every page it touches is a
    copy-on-write fault in the fork.)"""
    if mode == "functional":
        return _SOLUTION_GLOBALS
    sys.modules["__main__"] = _MAIN
    return _MAIN.__dict__


def _run_loaded(code, job: dict, chan: int, args_text: str, g: dict) -> int:
    """Run an already compiled solution once in the module globals ``g`` (``solution_globals``); the exit
    code it would have had.

    stdin programs end as a real process would: the module code returns (or raises SystemExit, or an
    exception), then the non-daemon threads are waited for and the atexit handlers run (``_program_end``),
    then the streams are flushed. Functional tests end when the call returns; handlers registered meanwhile
    are dropped (LiveCodeBench calls the function and reads its return value only)."""
    functional = job["mode"] == "functional"
    g.update(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr)  # the prelude's names from sys
    try:
        import atexit

        atexit._clear()  # only the solution's own handlers (none of an earlier test's, none of the executor's)
    except BaseException:
        pass
    rc = 0
    try:
        exec(code, g)
        if functional:
            args = [json.loads(line) for line in args_text.split("\n") if line.strip()]
            sol = g.get("Solution")
            fn = getattr(sol(), job["fn_name"]) if isinstance(sol, type) else g[job["fn_name"]]
            result = fn(*args)
            _flush()
            _report(chan, {"result": encode_value(result)})
    except SystemExit as e:
        if functional:
            _flush()
            _report(chan, {"error": {"type": "SystemExit", "line": None,
                                     "message": "the solution called exit() instead of returning"}})
            return 1
        c = e.code
        if c is None or c == 0 or c is False:
            rc = 0
        elif isinstance(c, int):
            rc = c & 0xFF or 1
        else:
            _report(chan, {"error": {"type": "SystemExit", "line": None, "message": str(c)[:2000]}})
            rc = 1
    except BaseException as e:
        _flush()
        _report_error(chan, e)
        if functional:
            return 1
        rc = 1
    if not functional:
        _program_end()
    _flush()
    return rc


def sweep(pid_ns: bool) -> None:
    """Kill and reap every other process of the solution (the zygote calls it after each test), so that when it
    returns nothing a test started exists any more, zombies included.

    pid_ns (strong mode): the caller is pid 1 of the solution's own PID namespace, so ``kill(-1)`` reaches every
    other process in it (the kernel walks the task list under its lock: nothing forks past it) and every orphan
    in it is re-parented to the caller; waitpid reporting no child left means no process of the namespace
    is left. Otherwise (weak mode) the caller is a child sub-reaper: its children are killed and reaped until
    none is left (each round re-parents the next generation to it)."""
    if pid_ns:
        while True:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    kill_orphans()


IPC_RMID = 0


def remove_sysv_ipc() -> None:
    """Remove every System V shared memory segment, semaphore set and message queue of the caller's IPC
    namespace (strong mode: the solution's own), so that a test never finds one left by an earlier test."""
    for kind in ("shm", "sem", "msg"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            ident = int(row.split()[1])
            if kind == "shm":
                _libc.shmctl(ident, IPC_RMID, None)
            elif kind == "sem":
                _libc.semctl(ident, 0, IPC_RMID)
            else:
                _libc.msgctl(ident, IPC_RMID, None)


def zygote(job: dict, ctl_fd: int, pid_ns: bool) -> int:
    """The solution's zygote: compiles the solution once and runs each test in a fresh fork of itself.

    It never runs solution code itself, so every test starts from the same state: fresh modules and globals,
    fds 0-3 (stdin, stdout, stderr, report) of its own, a plain ``sys.argv``, an environment without the
    runner's settings, its own scratch directory as cwd, HOME and TMPDIR. Per control message (the test's
    nonce and scratch directory, with its stdin memfd and the write ends of its three pipes) it hands the
    test to a test process, waits for it, kills and reaps everything the test started (``sweep``), removes the
    test's System V IPC objects and answers ``{"done": nonce, "status": wait status}``; then, unless that was
    the last test, it forks the process for the next one, while the caller handles the answer. In strong mode
    the zygote is pid 1 of the solution's own PID namespace (signals from the tests cannot reach it) and not
    dumpable (the tests, same uid, cannot read or write its memory), so what it reports is not under the
    tests' control.
    """
    import socket

    sys.argv[:] = ["main.py"]  # in place: the prelude's star import of sys holds the same list
    sys.orig_argv[:] = [sys.executable, "main.py"]
    sys.set_int_max_str_digits(0)
    sys.setrecursionlimit(50000)
    _thread_stack()
    import atexit

    atexit._clear()
    if pid_ns and os.getpid() != 1:
        return 125
    _prctl(PR_SET_DUMPABLE, 0)
    if not pid_ns:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    ctl = socket.socket(fileno=ctl_fd)
    try:
        code, err = compile(job["code"], "<solution>", "exec"), None
    except BaseException as e:
        code, err = None, e
    # Every object so far is shared with the test processes (fork): a garbage collection that walked them
    # would write to (and so copy) every page they are on, in the zygote and in each test process alike.
    gc.freeze()
    spare = None
    more = True
    while True:
        if spare is None and more:  # ahead of the test: overlaps with the caller's handling of the last answer
            try:
                spare = _fork_test_process(job, code, err)
            except OSError:
                spare = None  # tried again when the test arrives
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 4096, 4)
        except OSError:
            return 0
        if not msg:
            return 0
        req = json.loads(msg)
        if len(fds) != 4:
            return 1
        if spare is None:
            try:
                spare = _fork_test_process(job, code, err)
            except OSError as e:
                for fd in fds:
                    os.close(fd)
                ctl.send(json.dumps({"done": req["nonce"], "error": f"fork failed: {e}"}).encode())
                continue
        (pid, chan), spare = spare, None
        try:
            socket.send_fds(chan, [msg], fds)
        except OSError:
            pass  # it died: its wait status says how
        chan.close()
        for fd in fds:
            os.close(fd)
        status = os.waitpid(pid, 0)[1]
        sweep(pid_ns)
        if pid_ns:
            remove_sysv_ipc()
        more = not req.get("last")
        ctl.send(json.dumps({"done": req["nonce"], "status": status}).encode())


def _fork_test_process(job: dict, code, err: BaseException | None):
    """Fork the process for the next test: it prepares its module globals, then waits for its test on a
    socket of its own. Returns (pid, the zygote's end of that socket)."""
    import socket

    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        rc = 126
        try:
            here.close()
            rc = _test_process(job, code, err, there)
        finally:
            os._exit(rc)
    there.close()
    return pid, here


def _test_process(job: dict, code, err: BaseException | None, chan) -> int:
    """One test in a fresh fork of the zygote; returns the exit code the program would have had."""
    import resource as _resource
    import socket

    g = solution_globals(job["mode"])  # before the test arrives
    msg, fds, _, _ = socket.recv_fds(chan, 4096, 4)
    if not msg or len(fds) != 4:
        return 0  # no test for this process (the zygote is done)
    req = json.loads(msg)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(4, _resource.getrlimit(_resource.RLIMIT_NOFILE)[1])
    _prctl(PR_SET_DUMPABLE, 1)  # its own processes may read its /proc files (the zygote stays undumpable)
    os.chdir(req["scratch"])
    os.environ["HOME"] = os.environ["TMPDIR"] = req["scratch"]
    _std_streams()
    if err is not None:  # the solution did not compile (``code`` is None)
        _report_error(3, err)
        return 1
    args_text = ""
    if job["mode"] == "functional":
        args_text = os.pread(0, os.fstat(0).st_size, 0).decode("utf-8", "surrogateescape")
    return _run_loaded(code, job, 3, args_text, g)


ASSERT_RUNNER = r'''
import json, os, sys
sys.set_int_max_str_digits(0)
sys.setrecursionlimit(50000)
ns = {}
exec(compile(sys.argv[1], "<codec>", "exec"), ns)
ns["_thread_stack"]()
enc, dec, write_line, error_info, std = (ns["encode_value"], ns["decode_value"], ns["write_line"],
    ns["error_info"], ns["_std_streams"])
src = b"".join(iter(lambda: os.read(5, 1 << 20), b"")).decode("utf-8", "surrogateescape")
os.close(5)
std()
import builtins
g = {"__name__": "solution", "__builtins__": builtins}
try:
    exec(compile(src, "<solution>", "exec"), g)
except BaseException as e:
    write_line(4, {"error": error_info(e)})
    os._exit(1)
write_line(4, {"ready": True})
rd = os.fdopen(3, "rb", buffering=0)
buf = b""
while True:
    line = rd.readline()
    if not line:
        os._exit(0)
    req = json.loads(line)
    try:
        fn = g[req["call"]]
        res = fn(*[dec(a) for a in req["args"]], **{k: dec(v) for k, v in req["kwargs"].items()})
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        write_line(4, {"result": enc(res)})
    except SystemExit:
        write_line(4, {"error": {"type": "SystemExit", "line": None,
                                  "message": "the solution called exit() instead of returning"}})
    except BaseException as e:
        write_line(4, {"error": error_info(e)})
'''


def _check_line(exc: BaseException, source: str) -> str | None:
    """Source line of the innermost frame of the (trusted) check code in a traceback."""
    lines = source.splitlines()
    for fr in reversed(traceback.extract_tb(exc.__traceback__)):
        if fr.filename == "<check>" and fr.lineno and 0 < fr.lineno <= len(lines):
            return lines[fr.lineno - 1].strip()[:500]
    return None


def codec_source() -> str:
    """The few helpers the fresh solution interpreter of an ``assert`` test needs, as source text."""
    import inspect

    parts: list = [encode_value, Opaque, _float, decode_value, write_line, _describe, _message, error_info, _std_streams,
                   _thread_stack]
    head = "import builtins, json, os, sys, traceback\n\n_STREAMS = []\n\n"
    return head + "\n\n".join(inspect.getsource(f) for f in parts)


class CandidateError(Exception):
    """The solution raised (or died) while the trusted check called it."""


def run_checker(job: dict, down: int, up: int, report: int) -> int:
    """Trusted side of an ``assert`` test: run check(candidate) where candidate calls go to the solution
    process over pipes, and only decoded plain values come back."""
    import ast

    up_f = os.fdopen(up, "rb", buffering=0)
    state: dict = {"last": None}

    def read_msg():
        line = up_f.readline(REPORT_CAP)
        if not line:
            raise CandidateError("the solution process exited")
        return json.loads(line)

    try:
        first = read_msg()
    except CandidateError as e:
        _report(report, {"verdict": "runtime_error", "error": {"type": "RuntimeError", "message": str(e)}})
        return 0
    if "error" in first:  # a module-level error in the solution
        _report(report, {"verdict": "runtime_error", "error": first["error"]})
        return 0
    if not first.get("ready"):
        _report(report, {"verdict": "runtime_error", "error": {"type": "ProtocolError", "message": "no ready"}})
        return 0

    class Proxy:
        def __init__(self, name: str):
            self.__name__ = name

        def __call__(self, *args, **kwargs):
            msg = {"call": self.__name__, "args": [encode_value(a) for a in args],
                   "kwargs": {str(k): encode_value(v) for k, v in kwargs.items()}}
            state["last"] = {"name": self.__name__, "args": repr(args)[:500]}
            write_line(down, msg)
            rep = read_msg()
            if "error" in rep:
                raise CandidateError(rep["error"])
            if "result" not in rep:
                raise CandidateError({"type": "ProtocolError", "message": "no result"})
            value = decode_value(rep["result"])
            state["last"]["result"] = repr(value)[:500]
            return value

    g: dict = {"__name__": "check", "__builtins__": builtins}
    try:
        tree = ast.parse(job["assert_code"])
        exec(compile(tree, "<check>", "exec"), g)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                if node.id not in g and not hasattr(builtins, node.id):
                    g[node.id] = Proxy(node.id)
        g["check"](Proxy(job["fn_name"]))
    except CandidateError as e:
        err = e.args[0] if isinstance(e.args[0], dict) else {"type": "RuntimeError", "message": str(e.args[0])}
        _report(report, {"verdict": "runtime_error", "error": err, "last_call": state["last"]})
        return 0
    except AssertionError as e:
        line = _check_line(e, job["assert_code"])
        _report(report, {"verdict": "wrong_answer", "assertion": line, "message": str(e)[:500],
                         "last_call": state["last"]})
        return 0
    except BaseException as e:
        line = _check_line(e, job["assert_code"])
        _report(report, {"verdict": "wrong_answer", "assertion": line,
                         "message": f"{type(e).__name__}: {e}"[:500], "last_call": state["last"]})
        return 0
    _report(report, {"verdict": "passed"})
    return 0


# ------------------------------------------------------------------------------------------- executor


class Capture:
    """The stdout, stderr and report pipes of one run (read ends, non-blocking), drained with caps: stdout keeps
    ``max_output_bytes`` and any byte beyond it is an overflow; stderr keeps ``max_stderr_bytes`` and more than
    ``max_output_bytes`` in all is an overflow; the report channel keeps REPORT_CAP, beyond it an overflow."""

    def __init__(self, pipes: dict[str, int], cfg: dict):
        self.name = {fd: k for k, fd in pipes.items()}
        self.open = set(self.name)
        self.keep = {"stdout": cfg["max_output_bytes"], "stderr": cfg["max_stderr_bytes"], "report": REPORT_CAP}
        self.limit = {"stdout": cfg["max_output_bytes"], "stderr": cfg["max_output_bytes"], "report": REPORT_CAP}
        self.bufs = {k: bytearray() for k in pipes}
        self.total = {k: 0 for k in pipes}

    def pump(self, fd: int) -> bool:
        """Read what is there; False once a pipe went past its limit (the run must be stopped)."""
        k = self.name[fd]
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return True
            if not chunk:
                self.open.discard(fd)
                return True
            room = self.keep[k] - len(self.bufs[k])
            if room > 0:
                self.bufs[k] += chunk[:room]
            self.total[k] += len(chunk)
            if self.total[k] > self.limit[k]:
                return False

    def finish(self, deadline: float) -> None:
        """Read every pipe to its end (its writers are gone), or until the deadline."""
        while self.open and time.monotonic() < deadline:
            poller = select.poll()
            for fd in self.open:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                self.pump(fd)

    def overflow(self, k: str) -> bool:
        return self.total[k] > self.limit[k]

    def close(self) -> None:
        for fd in self.name:
            os.close(fd)

    def fields(self) -> dict:
        return {
            "stdout": base64.b64encode(bytes(self.bufs["stdout"])).decode(),
            "stderr": base64.b64encode(bytes(self.bufs["stderr"])).decode(),
            "stdout_overflow": self.overflow("stdout"),
            "stderr_overflow": self.overflow("stderr"),
            "report_overflow": self.overflow("report"),
            "report": bytes(self.bufs["report"]).decode("utf-8", "replace"),
        }


def await_run(cap: Capture, deadline: float, events: dict[int, str], stop_fd: int | None = None) -> str:
    """Drain a run's pipes until one of ``events`` (fd -> name) is readable (returns its name), the deadline
    passes ("timeout"), a stop request arrives on ``stop_fd`` ("stop") or a pipe overflows ("overflow")."""
    poller = select.poll()
    for fd in [*cap.open, *events] + ([stop_fd] if stop_fd is not None else []):
        poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        ready = poller.poll(max(1, int(left * 1000) + 1))
        for fd, _ in ready:  # output first: what arrived with the end of the run belongs to it
            if fd in cap.name:
                if not cap.pump(fd):
                    return "overflow"
                if fd not in cap.open:
                    poller.unregister(fd)
        for fd, _ in ready:
            if fd in events:
                return events[fd]
            if fd == stop_fd:
                return "stop"


class _Zygote:
    """The executor's handle on a solution's zygote process (see ``zygote``)."""

    def __init__(self, key: tuple, pid: int, ctl):
        self.key, self.pid, self.ctl = key, pid, ctl
        self.pidfd = os.pidfd_open(pid)


class Executor:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.strong = cfg["strong"]
        self.pid = os.getpid()
        self.enforced: list[str] = []
        self.uid = self.checker_uid = None
        self.runs = 0
        self.warm: _Zygote | None = None
        self.source = codec_source()  # read now: the file is hidden once the namespaces are set up
        # Built before the namespaces too (the library's directory might be covered); required in strong mode.
        self.seccomp: SeccompFilter | None = None
        seccomp_error = None
        try:
            self.seccomp = SeccompFilter(cfg.get("seccomp_library", SECCOMP_LIBRARY))
        except SeccompUnavailable as e:
            if self.strong:
                raise RuntimeError(str(e)) from None
            seccomp_error = e
        if self.strong:
            if os.geteuid() != 0:
                raise RuntimeError("strong isolation needs root (to switch to per-slot uids and create "
                                   "namespaces)")
            # Every solution runs in a PID namespace of its own (see ``_fork``): check that we can make one.
            self.pid_ns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
            _check(_libc.setns(self.pid_ns_fd, CLONE_NEWPID), "setns(CLONE_NEWPID)")
            self.uid, self.lock_fd = reserve_uid(cfg)
            self.checker_uid = self.uid + 1000
            kill_uid(self.uid)  # leftovers of a previous holder of this uid that was itself killed
            kill_uid(self.checker_uid)
            self.enforced += setup_namespaces(cfg)
            self.enforced += [f"uid {self.uid} (checker {self.checker_uid})",
                              "PID and IPC namespace per solution"]
        if self.seccomp is not None:
            self.enforced.append(f"seccomp deny-list ({len(self.seccomp.denied)} rules)")
        else:
            self.enforced.append(f"no seccomp filter ({seccomp_error})")
        if self.strong:  # /tmp is this executor's private tmpfs
            self.scratch_root = "/tmp/sdpo-sandbox"
            os.makedirs(self.scratch_root, mode=0o711, exist_ok=True)
        else:
            import atexit
            import tempfile

            self.scratch_root = tempfile.mkdtemp(prefix="sdpo-sandbox-")
            atexit.register(rmtree, self.scratch_root)
        os.chmod(self.scratch_root, 0o711)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.base_as = self._vm_size()
        self.enforced += ["rlimits", "setsid", "scratch dir per test", "empty environment"]

    @staticmethod
    def _vm_size() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        return 0

    # ------------------------------------------------------------------ confined processes

    def _confine(self, uid: int | None, time_limit: float, scratch: str | None, nofile: int = 64) -> None:
        """In a fresh child: limits, then drop to ``uid``. Never returns on failure (exits 125)."""
        cfg = self.cfg
        cpu = int(time_limit) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        fs = cfg["max_file_mb"] << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (fs, fs))
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if uid is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_processes"], cfg["max_processes"]))
        try:
            resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES, STACK_BYTES))
        except (ValueError, OSError):
            pass
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if os.getuid() != uid:
                os._exit(125)
        # Dies with the executor (armed after the uid switch, which clears it). Its parent is the executor, or
        # outside its PID namespace (then getppid() is 0); anything else means the executor is already gone.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() not in (self.pid, 0):
            os._exit(125)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if self.seccomp is not None:
            self.seccomp.load()
        os.umask(0o077)
        if scratch:
            os.chdir(scratch)
        os.environ.clear()
        home = scratch or "/"
        os.environ.update({"HOME": home, "TMPDIR": home, "PATH": "/usr/local/bin:/usr/bin:/bin",
                           "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
        mem = self.base_as + (cfg["memory_mb"] << 20)
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    def _fork(self, pid_ns: bool) -> int:
        """os.fork(); with ``pid_ns`` the child is pid 1 of a new PID namespace (and everything it starts lives
        in that namespace): killing it makes the kernel kill the whole namespace, and waitpid returns only once
        every process in it is gone. unshare(CLONE_NEWPID) only sets where our next child goes, so we go back
        to our own namespace for later children right after the fork."""
        if not pid_ns:
            return os.fork()
        _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        try:
            pid = os.fork()
        except BaseException:
            _check(_libc.setns(self.pid_ns_fd, CLONE_NEWPID), "setns(CLONE_NEWPID)")
            raise
        if pid != 0:
            _check(_libc.setns(self.pid_ns_fd, CLONE_NEWPID), "setns(CLONE_NEWPID)")
        return pid

    def _spawn(self, fds: dict[int, int], uid: int | None, time_limit: float, scratch: str | None,
               body, nofile: int = 64, pid_ns: bool = False) -> int:
        pid = self._fork(pid_ns)
        if pid == 0:
            code = 126
            try:
                os.setsid()
                # Move the wanted fds to their slots, then close everything else.
                tmp = {target: fcntl.fcntl(src, fcntl.F_DUPFD, 100) for target, src in fds.items()}
                for target, src in tmp.items():
                    os.dup2(src, target)
                os.closerange(max(fds) + 1, 1 << 16)
                if self.strong:
                    # A private IPC namespace: SysV shared memory, semaphores, message queues and POSIX message
                    # queues it creates die with its last process.
                    _check(_libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")
                self._confine(uid, time_limit, scratch, nofile)
                code = body()
            except BaseException:
                code = 126
            finally:
                os._exit(code)
        return pid

    def _kill_tree(self, pid: int) -> int:
        """SIGKILL ``pid`` and everything it started; return its wait status once all of it is gone and reaped.

        Strong mode: ``pid`` is pid 1 of its own PID namespace, so the kernel kills the whole namespace and
        reports ``pid``'s exit only after every process in it has exited and been reaped. Weak mode: its
        session, then every descendant, which were re-parented to this sub-reaper."""
        for kill in ((os.kill,) if self.strong else (os.killpg, os.kill)):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            status = os.waitpid(pid, 0)[1]
        except ChildProcessError:
            status = 0
        if not self.strong:
            kill_orphans()
        return status

    def _scratch(self) -> str:
        self.runs += 1
        path = f"{self.scratch_root}/run-{self.runs}"
        os.mkdir(path, 0o700)
        if self.uid is not None:
            os.chown(path, self.uid, self.uid)
        return path

    def _cleanup(self, scratch: str) -> None:
        """After a test (nothing of it runs any more): remove its scratch dir and, in strong mode, whatever the
        slot's uids left in /tmp and /dev/shm, so the next test starts from empty writable areas."""
        rmtree(scratch)
        if self.strong:
            clean_shared_dirs([u for u in (self.uid, self.checker_uid) if u is not None])

    @staticmethod
    def _pipes() -> tuple[dict[str, int], list[int]]:
        """Fresh stdout, stderr and report pipes: ({name: read end (non-blocking)}, [write ends])."""
        reads, writes = {}, []
        for k in ("stdout", "stderr", "report"):
            r, w = os.pipe()
            os.set_blocking(r, False)
            reads[k] = r
            writes.append(w)
        return reads, writes

    # ------------------------------------------------------------------ stdin / functional: the zygote

    def _start_zygote(self, job: dict, key: tuple) -> _Zygote:
        import socket

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        devnull = os.open(os.devnull, os.O_RDWR)
        pid = self._spawn({0: devnull, 1: devnull, 2: devnull, 3: theirs.fileno()}, self.uid, job["time_limit"],
                          None, lambda: zygote(job, 3, self.strong), pid_ns=self.strong)
        os.close(devnull)
        theirs.close()
        return _Zygote(key, pid, mine)

    def retire(self) -> int | None:
        """Kill the solution's zygote and everything of it (returns its wait status once all are gone)."""
        z, self.warm = self.warm, None
        if z is None:
            return None
        status = self._kill_tree(z.pid)
        z.ctl.close()
        os.close(z.pidfd)
        return status

    def run_warm(self, job: dict, stop_fd: int | None = None, retried: bool = False) -> dict | None:
        """One stdin/functional test: a fresh fork of the solution's zygote (started on first use), its own
        stdin, pipes and scratch dir. The reply is sent only when the test and everything it started are gone.

        stop_fd: during a batch, the caller's request pipe; a ``{"op": "stop"}`` frame arriving there ends the
        test at once (returns None).
        """
        import socket

        key = (job["mode"], job["code"], job.get("fn_name"), job["time_limit"])
        if self.warm is not None and self.warm.key != key:
            self.retire()
        if self.warm is None:
            self.warm = self._start_zygote(job, key)
        z = self.warm
        scratch = self._scratch()
        inp = os.memfd_create("stdin")
        os.write(inp, job["input"].encode("utf-8", "surrogateescape"))
        os.lseek(inp, 0, os.SEEK_SET)
        reads, writes = self._pipes()
        nonce = os.urandom(8).hex()
        t0 = time.monotonic()
        try:
            msg = {"nonce": nonce, "scratch": scratch, "last": bool(job.get("last"))}
            socket.send_fds(z.ctl, [json.dumps(msg).encode()], [inp, *writes])
        except OSError:
            pass  # the zygote is gone: its pidfd says so
        for fd in (inp, *writes):
            os.close(fd)
        cap = Capture(reads, self.cfg)
        deadline = t0 + job["time_limit"]
        outcome = await_run(cap, deadline, {z.ctl.fileno(): "done", z.pidfd: "died"}, stop_fd)
        status = error = None
        if outcome == "done":
            try:
                done = json.loads(z.ctl.recv(4096) or b"null")
            except (OSError, ValueError):
                done = None
            if not isinstance(done, dict) or done.get("done") != nonce:
                outcome = "died"
            elif "error" in done:
                error = str(done["error"])
            else:
                status = done.get("status")
        seconds = time.monotonic() - t0
        if outcome == "done":
            cap.finish(time.monotonic() + 1.0)  # the test's processes are gone: this reads to the end
        if outcome != "done" or cap.open or cap.overflow("stdout") or cap.overflow("stderr"):
            zstatus = self.retire()  # the whole namespace, waited for
            cap.finish(time.monotonic() + 1.0)
            if outcome == "died":
                status = zstatus
        cap.close()
        self._cleanup(scratch)
        if outcome == "stop":
            return None
        if outcome == "died" and not retried:
            # The zygote never runs solution code and its tests cannot signal it (strong mode): its death is the
            # machine's doing (e.g. the OOM killer). Run the test again in a fresh one, once.
            return self.run_warm(job, stop_fd, retried=True)
        if error is not None:
            return {"ok": False, "error": f"sandbox zygote: {error}"}
        if job.get("last"):
            self.retire()
        exit_code = signal_no = None
        if isinstance(status, int):
            if os.WIFEXITED(status):
                exit_code = os.WEXITSTATUS(status)
            elif os.WIFSIGNALED(status):
                signal_no = os.WTERMSIG(status)
        return {"ok": True, "exit": exit_code, "signal": signal_no, "timed_out": outcome == "timeout",
                "seconds": round(seconds, 6), **cap.fields()}

    def run_batch(self, job: dict, rfd: int, wfd: int) -> None:
        """All tests of one solution, streaming one reply frame per test (with its ``index``) and a final
        ``{"end": true}``. The caller judges each reply and sends ``{"op": "stop"}`` at the first failure it
        wants to stop at; a test still running then is killed. Only inputs come in."""
        try:
            for i, inp in enumerate(job["inputs"]):
                if select.select([rfd], [], [], 0)[0]:
                    _expect_stop(rfd)
                    break
                last = i == len(job["inputs"]) - 1
                reply = self.run_warm({**job, "input": inp, "last": last}, stop_fd=rfd)
                if reply is None:
                    break
                reply["index"] = i
                write_frame(wfd, reply)
        finally:
            self.retire()
        write_frame(wfd, {"ok": True, "end": True})

    # ------------------------------------------------------------------ requests

    def run(self, job: dict) -> dict:
        if job.get("op") == "retire":
            self.retire()
            return {"ok": True}
        if job["mode"] in ("stdin", "functional"):
            if not job.get("warm"):  # one test on its own: a zygote of its own, retired right after
                self.retire()
                job = {**job, "last": True}
            return self.run_warm(job)  # type: ignore[return-value]  # None only with a stop_fd
        self.retire()
        scratch = self._scratch()
        try:
            return self._run_assert(job, scratch)
        finally:
            self._cleanup(scratch)

    def _run_assert(self, job: dict, scratch: str) -> dict:
        """An ``assert`` test: the solution in a fresh interpreter (pid 1 of its own PID namespace in strong
        mode), the trusted check code in a checker process of another uid; the verdict is the checker's."""
        src = os.memfd_create("solution")
        os.write(src, job["code"].encode("utf-8", "surrogateescape"))
        os.lseek(src, 0, os.SEEK_SET)
        devnull = os.open(os.devnull, os.O_RDWR)
        reads, (out_w, err_w, rep_w) = self._pipes()
        down_r, down_w = os.pipe()  # checker -> solution
        up_r, up_w = os.pipe()  # solution -> checker
        t0 = time.monotonic()
        codec = self.source
        exe = sys.executable

        def solution_body() -> int:
            os.execv(exe, [exe, "-I", "-c", ASSERT_RUNNER, codec])

        sol = self._spawn({0: devnull, 1: out_w, 2: err_w, 3: down_r, 4: up_w, 5: src}, self.uid,
                          job["time_limit"], scratch, solution_body, pid_ns=self.strong)

        def checker_body() -> int:
            _prctl(PR_SET_DUMPABLE, 0)
            return run_checker(job, 3, 4, 5)

        chk = self._spawn({0: devnull, 1: devnull, 2: devnull, 3: down_w, 4: up_r, 5: rep_w},
                          self.checker_uid, job["time_limit"], None, checker_body)
        for fd in (src, devnull, out_w, err_w, rep_w, down_r, down_w, up_r, up_w):
            os.close(fd)
        # The checker's report pipe is the third capture pipe; its exit ends the test.
        cap = Capture(reads, self.cfg)
        chk_fd = os.pidfd_open(chk)
        outcome = await_run(cap, t0 + job["time_limit"], {chk_fd: "exit"})
        seconds = time.monotonic() - t0
        self._kill_tree(sol)
        try:
            os.kill(chk, signal.SIGKILL)
        except OSError:
            pass
        os.waitpid(chk, 0)
        os.close(chk_fd)
        cap.finish(time.monotonic() + 1.0)
        cap.close()
        return {"ok": True, "exit": None, "signal": None, "timed_out": outcome == "timeout",
                "seconds": round(seconds, 6), **cap.fields()}


def _expect_stop(rfd: int) -> None:
    frame = read_frame(rfd)
    if not (isinstance(frame, dict) and frame.get("op") == "stop"):
        raise ValueError("protocol error: only a stop request may arrive during a batch")


def _raise_stack_and_reexec() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard)
    if soft != resource.RLIM_INFINITY and soft < want and "--reexec" not in sys.argv:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))
        os.execv(sys.executable, [sys.executable, "-I", __file__, *sys.argv[1:], "--reexec"])


def main() -> None:
    _raise_stack_and_reexec()
    rfd, wfd = sys.stdin.fileno(), sys.stdout.fileno()
    # Keep the protocol fds away from 0/1 so a child's dup2 targets never collide with them.
    rfd, wfd = os.dup(rfd), os.dup(wfd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    # The configuration is the first frame (not an argument: nothing of it shows in the command line that
    # every process forked from here carries in /proc/PID/cmdline).
    cfg = read_frame(rfd)
    try:
        ex = Executor(cfg)
    except BaseException as e:
        write_frame(wfd, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        sys.exit(3)
    write_frame(wfd, {"ok": True, "uid": ex.uid, "checker_uid": ex.checker_uid, "pid": os.getpid(),
                      "strong": ex.strong, "enforced": ex.enforced})
    while True:
        try:
            job = read_frame(rfd)
        except EOFError:
            return
        if job.get("op") == "exit":
            return
        if job.get("op") == "stop":  # a stop that crossed the end of its batch
            continue
        if job.get("op") == "batch":
            try:
                ex.run_batch(job, rfd, wfd)
            except BaseException as e:
                write_frame(wfd, {"ok": False, "error": f"{type(e).__name__}: {e}"})
            continue
        try:
            reply = ex.run(job)
        except BaseException as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        write_frame(wfd, reply)


if __name__ == "__main__":
    main()
