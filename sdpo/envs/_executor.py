"""Sandbox executor: one long-lived process per pool slot (stdlib only, runnable as a script).

Started by ``sdpo.envs.sandbox`` as ``python -I _executor.py CONFIG_JSON`` (a fresh interpreter, never a fork of
the caller). It talks length-prefixed JSON frames over its stdin/stdout and runs one test case per request.
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
Per solution (a forked "warm" child that runs the solution's tests one after the other, each with fresh
module globals and stdin; see ``serve_tests``) or per test case (``run``/``assert``): own session/process
group, a private IPC namespace, rlimits (address space = executor + memory limit, CPU = time limit + 2 s,
processes, file size, open files, no core), ``setresuid`` to the slot uid, ``PR_SET_NO_NEW_PRIVS``, the
seccomp filter, a fresh 0700 scratch directory, an empty environment, stdout/stderr/report pipes drained
concurrently with byte caps, a wall-clock deadline, and afterwards SIGKILL of the process group and of every
process owned by the slot uid (``kill(-1)`` issued from a helper that runs as that uid), then the scratch
directory and everything the slot's uids left in /tmp and /dev/shm are removed.

Weak mode (``SDPO_SANDBOX=weak``): no uid change and no namespaces; rlimits, sessions, scratch, empty
environment, the seccomp filter when libseccomp is there, and the kill of the process group plus every orphan
re-parented to this (sub-reaper) process.
"""

from __future__ import annotations

import base64
import ctypes
import fcntl
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
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
    hidden = []
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
                    shutil.rmtree(e.path, ignore_errors=True)
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


def reap() -> None:
    """Collect every exited child (we are a child sub-reaper, so orphans land here)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _has_children() -> bool:
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def kill_orphans() -> None:
    """Weak mode: SIGKILL every descendant still alive (orphans are re-parented to us, the sub-reaper)."""
    me = os.getpid()
    for _ in range(50):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
            if ppid == me:
                found = True
                try:
                    os.kill(int(name), signal.SIGKILL)
                except OSError:
                    pass
        reap()
        if not found:
            return
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------- child side


def _build_prelude() -> dict:
    g: dict = {"__builtins__": builtins}
    src = "".join(f"from {m} import *\nimport {m}\n" for m in PRELUDE_MODULES + ("sys",))
    exec(compile(src + "from builtins import *\n", "<prelude>", "exec"), g)
    return g


_PRELUDE = _build_prelude()


def _prelude_globals(name: str) -> dict:
    """Module globals LiveCodeBench gives a solution: star imports of common modules, then the builtins."""
    g = dict(_PRELUDE)
    g.update(__name__=name, stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr)
    return g


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


def error_info(exc: BaseException) -> dict:
    """Type, line and (guarded, truncated) message of an untrusted exception."""
    info = _describe(exc)
    try:
        msg = str(exc)
        if not isinstance(msg, str):
            msg = "<unprintable>"
    except BaseException:
        msg = "<unprintable>"
    info["message"] = msg[:2000]
    return info


def _report_error(chan: int, exc: BaseException) -> None:
    info = _describe(exc)
    _report(chan, {"error": info})  # the type first: a hostile __str__ may never return
    try:
        msg = str(exc)
        if not isinstance(msg, str):
            msg = "<unprintable>"
    except BaseException:
        msg = "<unprintable>"
    info["message"] = msg[:2000]
    _report(chan, {"error": info})


_STREAMS: list = []


def _std_streams() -> None:
    """Fresh sys.stdin/stdout/stderr on fds 0-2 (kept in _STREAMS too, so they are flushed even when the
    solution rebinds sys.stdout)."""
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False,
                                       buffering=1)
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


def run_solution(job: dict, chan: int) -> int:
    """Run the solution for one stdin/functional test in this (already confined) process; exit code."""
    sys.set_int_max_str_digits(0)
    sys.setrecursionlimit(50000)
    _thread_stack()
    _std_streams()
    try:
        code = compile(job["code"], "<solution>", "exec")
    except BaseException as e:
        _report_error(chan, e)
        return 1
    return _run_loaded(code, job, chan, job["input"])


def _program_end() -> None:
    """What the interpreter does when a program's main module is done (``Py_FinalizeEx``: first
    ``threading._shutdown``, then the atexit handlers), without ending this process: wait for every non-daemon
    thread (threads that start threads included), then run and clear the atexit handlers. The executor's
    deadline still applies: a thread that never ends is a time limit, as it would be for a real process."""
    import threading

    try:
        me = threading.current_thread()
        while True:
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


def _main_module(g: dict):
    """A real ``__main__`` module whose namespace is ``g`` (so pickle finds the solution's functions, as
    ``multiprocessing`` needs), installed in ``sys.modules`` for this test."""
    import types

    mod = types.ModuleType("__main__")
    mod.__dict__.update(g)
    sys.modules["__main__"] = mod
    return mod.__dict__


def _run_loaded(code, job: dict, chan: int, args_text: str) -> int:
    """Run an already compiled solution once (fresh module globals); the exit code it would have had.

    stdin programs end as a real process would: the module code returns (or raises SystemExit, or an
    exception), then the non-daemon threads are waited for and the atexit handlers run (``_program_end``),
    then the streams are flushed. Functional tests end when the call returns; handlers registered meanwhile
    are dropped (LiveCodeBench calls the function and reads its return value only)."""
    functional = job["mode"] == "functional"
    g = _prelude_globals("solution" if functional else "__main__")
    if not functional:
        g = _main_module(g)
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


def serve_tests(job: dict, ctl_fd: int, chan: int) -> int:
    """A warm solution process (LiveCodeBench style: all tests of one solution in one process, each with
    fresh module globals and a fresh stdin). Compiles once, then per control message: the input arrives as
    a memfd, the test runs in-process, and ``{"done": nonce, "exit": code}`` closes it on the report pipe.
    Everything here is as untrusted as the solution: the executor only uses it to find the end of a test."""
    import socket

    sys.set_int_max_str_digits(0)
    sys.setrecursionlimit(50000)
    _thread_stack()
    ctl = socket.socket(fileno=ctl_fd)
    try:
        code, err = compile(job["code"], "<solution>", "exec"), None
    except BaseException as e:
        code, err = None, e
    while True:
        msg, fds, _, _ = socket.recv_fds(ctl, 4096, 1)
        if not msg or not fds:
            return 0
        nonce = json.loads(msg)["nonce"]
        os.dup2(fds[0], 0)
        os.close(fds[0])
        args_text = ""
        if job["mode"] == "functional":
            args_text = os.pread(0, os.fstat(0).st_size, 0).decode("utf-8", "surrogateescape")
        _std_streams()
        if code is None:
            _report_error(chan, err)
            rc = 1
        else:
            rc = _run_loaded(code, job, chan, args_text)
        write_line(chan, {"done": nonce, "exit": rc})


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

    parts = [encode_value, Opaque, _float, decode_value, write_line, _describe, error_info, _std_streams,
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

    g = {"__name__": "check", "__builtins__": builtins}
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


class Executor:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.strong = cfg["strong"]
        self.enforced: list[str] = []
        self.uid = self.checker_uid = None
        self.runs = 0
        self.warm: dict | None = None
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
            self.uid, self.lock_fd = reserve_uid(cfg)
            self.checker_uid = self.uid + 1000
            kill_uid(self.uid)  # leftovers of a previous holder of this uid that was itself killed
            kill_uid(self.checker_uid)
            self.enforced += setup_namespaces(cfg)
            self.enforced += [f"uid {self.uid} (checker {self.checker_uid})", "IPC namespace per run"]
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
            atexit.register(shutil.rmtree, self.scratch_root, True)
        os.chmod(self.scratch_root, 0o711)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.base_as = self._vm_size()
        self.enforced += ["rlimits", "setsid", "scratch dir", "empty environment"]

    @staticmethod
    def _vm_size() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        return 0

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

    def _spawn(self, fds: dict[int, int], uid: int | None, time_limit: float, scratch: str | None,
               body, nofile: int = 64) -> int:
        pid = os.fork()
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
                    # A private IPC namespace per run: SysV shared memory, semaphores, message queues and
                    # POSIX message queues it creates die with its last process.
                    _check(_libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")
                self._confine(uid, time_limit, scratch, nofile)
                code = body()
            except BaseException:
                code = 126
            finally:
                os._exit(code)
        return pid

    # ------------------------------------------------------------------ warm solution processes

    def _start_warm(self, job: dict, key: tuple) -> dict:
        import socket

        self.runs += 1
        scratch = f"{self.scratch_root}/run-{self.runs}"
        os.mkdir(scratch, 0o700)
        if self.uid is not None:
            os.chown(scratch, self.uid, self.uid)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ch_r, ch_w = os.pipe()
        for fd in (out_r, err_r, ch_r):
            os.set_blocking(fd, False)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        devnull = os.open(os.devnull, os.O_RDONLY)
        pid = self._spawn({0: devnull, 1: out_w, 2: err_w, 3: ch_w, 4: theirs.fileno()}, self.uid,
                          job["time_limit"], scratch, lambda: serve_tests(job, 4, 3))
        for fd in (out_w, err_w, ch_w, devnull):
            os.close(fd)
        theirs.close()
        return {"key": key, "pid": pid, "pidfd": os.pidfd_open(pid), "ctl": mine, "scratch": scratch,
                "pipes": {"stdout": out_r, "stderr": err_r, "report": ch_r}, "time_limit": job["time_limit"]}

    def retire(self) -> None:
        """Stop the warm solution process (and everything it started); remove its scratch dir."""
        w, self.warm = self.warm, None
        if w is None:
            return
        status: dict[int, int] = {}
        self._kill_all([w["pid"]], status)
        w["ctl"].close()
        for fd in [w["pidfd"], *w["pipes"].values()]:
            os.close(fd)
        shutil.rmtree(w["scratch"], ignore_errors=True)
        self._clean_shared()

    def _cpu_seconds(self, pid: int) -> float:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run_warm(self, job: dict, stop_fd: int | None = None) -> dict | None:
        """One stdin/functional test in the warm process of this solution (started on first use).

        stop_fd: during a batch, the caller's request pipe; a ``{"op": "stop"}`` frame arriving there ends
        the test at once (returns None).
        """
        key = (job["mode"], job["code"], job.get("fn_name"), job["time_limit"])
        if self.warm is not None and self.warm["key"] != key:
            self.retire()
        if self.warm is None:
            self.warm = self._start_warm(job, key)
        w = self.warm
        inp = os.memfd_create("stdin")
        os.write(inp, job["input"].encode("utf-8", "surrogateescape"))
        os.lseek(inp, 0, os.SEEK_SET)
        nonce = os.urandom(8).hex()
        t0 = time.monotonic()
        try:
            import socket

            socket.send_fds(w["ctl"], [json.dumps({"nonce": nonce}).encode()], [inp])
        except OSError:
            pass  # the process is gone: its pidfd reports it below
        os.close(inp)
        caps = {"stdout": self.cfg["max_output_bytes"], "stderr": self.cfg["max_stderr_bytes"],
                "report": REPORT_CAP}
        bufs = {k: bytearray() for k in w["pipes"]}
        totals = {k: 0 for k in w["pipes"]}
        overflow = {k: False for k in w["pipes"]}
        done = None
        dead_status = None
        timed_out = False
        deadline = t0 + job["time_limit"]
        poller = select.poll()
        fd_name = {fd: k for k, fd in w["pipes"].items()}
        live = set(fd_name)
        for fd in fd_name:
            poller.register(fd, select.POLLIN)
        poller.register(w["pidfd"], select.POLLIN)
        if stop_fd is not None:
            poller.register(stop_fd, select.POLLIN)
        marker = f'{{"done": "{nonce}"'.encode()

        def pump(fd: int) -> bool:
            """Read what is there; False on overflow past the kill threshold."""
            k = fd_name[fd]
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    return True
                if not chunk:
                    if fd in live:
                        live.discard(fd)
                        poller.unregister(fd)
                    return True
                room = caps[k] - len(bufs[k])
                bufs[k] += chunk[:room]
                totals[k] += len(chunk)
                if len(chunk) > room:
                    overflow[k] = True
                    limit = self.cfg["max_output_bytes"] if k == "stderr" else 0
                    if totals[k] > limit:
                        return False

        killed = False
        while done is None and dead_status is None:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            events = poller.poll(max(1, int((deadline - now) * 1000) + 1))
            for fd, _ in events:
                if fd == w["pidfd"]:
                    dead_status = os.waitpid(w["pid"], 0)[1]
                    poller.unregister(fd)
                elif fd == stop_fd:
                    _expect_stop(stop_fd)
                    self.retire()
                    return None
                elif not pump(fd):
                    killed = True
            if killed:
                break
            if marker in bufs["report"]:
                at = bufs["report"].index(marker)
                end = bufs["report"].find(b"\n", at)
                if end >= 0:
                    try:
                        done = json.loads(bytes(bufs["report"][at:end]))
                    except ValueError:
                        done = {"exit": 1}
                    del bufs["report"][at:]
        seconds = time.monotonic() - t0
        if done is not None:  # the test's output is in the pipes by now: collect it
            for fd in fd_name:
                if not pump(fd):
                    killed = True
        exit_code = None
        if done is not None and not killed:
            rc = done.get("exit")
            exit_code = rc if isinstance(rc, int) and not isinstance(rc, bool) and 0 <= rc < 256 else 1
        if done is None or killed:
            if dead_status is None:
                status: dict[int, int] = {}
                self._kill_all([w["pid"]], status)
                dead_status = status[w["pid"]]
            # Anything the dying process wrote is still in the pipes.
            for fd in fd_name:
                pump(fd)
            self.warm["pid"] = -1
            self._retire_dead()
        elif job.get("last") or self._cpu_seconds(w["pid"]) > 1.0:
            self.retire()  # done with this solution, or its CPU-time rlimit no longer covers a whole test
        signal_no = None
        if exit_code is None and dead_status is not None:
            if os.WIFSIGNALED(dead_status):
                signal_no = os.WTERMSIG(dead_status)
            else:
                exit_code = os.WEXITSTATUS(dead_status) if os.WIFEXITED(dead_status) else None
        return {
            "ok": True, "exit": exit_code, "signal": signal_no, "timed_out": timed_out,
            "seconds": round(seconds, 6),
            "stdout": base64.b64encode(bytes(bufs["stdout"])).decode(),
            "stderr": base64.b64encode(bytes(bufs["stderr"])).decode(),
            "stdout_overflow": overflow["stdout"],
            "stderr_overflow": totals["stderr"] > self.cfg["max_output_bytes"],
            "report_overflow": overflow["report"],
            "report": bytes(bufs["report"]).decode("utf-8", "replace"),
        }

    def run_batch(self, job: dict, rfd: int, wfd: int) -> None:
        """All tests of one solution in its warm process, streaming one reply frame per test (with its
        ``index``) and a final ``{"end": true}``. The caller judges each reply and sends ``{"op": "stop"}`` at
        the first failure it wants to stop at; a test still running then is killed. Only inputs come in."""
        try:
            for i, inp in enumerate(job["inputs"]):
                if select.select([rfd], [], [], 0)[0]:
                    _expect_stop(rfd)
                    break
                reply = self.run_warm({**job, "input": inp}, stop_fd=rfd)
                if reply is None:
                    break
                reply["index"] = i
                write_frame(wfd, reply)
        finally:
            self.retire()
        write_frame(wfd, {"ok": True, "end": True})

    def _retire_dead(self) -> None:
        w, self.warm = self.warm, None
        reap()
        if _has_children():
            if self.strong:
                kill_uid(self.uid)
            else:
                kill_orphans()
            reap()
        w["ctl"].close()
        for fd in [w["pidfd"], *w["pipes"].values()]:
            os.close(fd)
        shutil.rmtree(w["scratch"], ignore_errors=True)
        self._clean_shared()

    def _clean_shared(self) -> None:
        """Strong mode, once nothing of the slot runs: remove what its uids left in /tmp and /dev/shm."""
        if self.strong:
            clean_shared_dirs([self.uid, self.checker_uid])

    # ------------------------------------------------------------------ one process per test

    def run(self, job: dict) -> dict:
        if job.get("op") == "retire":
            self.retire()
            return {"ok": True}
        if job.get("warm") and job["mode"] in ("stdin", "functional"):
            return self.run_warm(job)
        self.retire()
        self.runs += 1
        scratch = f"{self.scratch_root}/run-{self.runs}"
        os.mkdir(scratch, 0o700)
        if self.uid is not None:
            os.chown(scratch, self.uid, self.uid)
        try:
            if job["mode"] == "assert":
                return self._run_assert(job, scratch)
            return self._run_plain(job, scratch)
        finally:
            reap()
            if _has_children():  # defensive: _supervise already swept
                kill_uid(self.uid) if self.strong else kill_orphans()
                reap()
            shutil.rmtree(scratch, ignore_errors=True)
            self._clean_shared()

    def _run_plain(self, job: dict, scratch: str) -> dict:
        inp = os.memfd_create("stdin")
        data = job["input"].encode("utf-8", "surrogateescape") if job["mode"] == "stdin" else b""
        os.write(inp, data)
        os.lseek(inp, 0, os.SEEK_SET)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ch_r, ch_w = os.pipe()
        t0 = time.monotonic()
        pid = self._spawn({0: inp, 1: out_w, 2: err_w, 3: ch_w}, self.uid, job["time_limit"], scratch,
                          lambda: run_solution(job, 3))
        for fd in (inp, out_w, err_w, ch_w):
            os.close(fd)
        res = self._supervise([pid], {"stdout": out_r, "stderr": err_r, "report": ch_r}, job, t0)
        return res

    def _run_assert(self, job: dict, scratch: str) -> dict:
        src = os.memfd_create("solution")
        os.write(src, job["code"].encode("utf-8", "surrogateescape"))
        os.lseek(src, 0, os.SEEK_SET)
        devnull = os.open(os.devnull, os.O_RDWR)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        down_r, down_w = os.pipe()  # checker -> solution
        up_r, up_w = os.pipe()  # solution -> checker
        rep_r, rep_w = os.pipe()  # checker -> executor
        t0 = time.monotonic()
        codec = self.source
        exe = sys.executable

        def solution_body() -> int:
            os.execv(exe, [exe, "-I", "-c", ASSERT_RUNNER, codec])

        sol = self._spawn({0: devnull, 1: out_w, 2: err_w, 3: down_r, 4: up_w, 5: src}, self.uid,
                          job["time_limit"], scratch, solution_body)

        def checker_body() -> int:
            _prctl(PR_SET_DUMPABLE, 0)
            return run_checker(job, 3, 4, 5)

        chk = self._spawn({0: devnull, 1: devnull, 2: devnull, 3: down_w, 4: up_r, 5: rep_w},
                          self.checker_uid, job["time_limit"], None, checker_body)
        for fd in (src, devnull, out_w, err_w, down_r, down_w, up_r, up_w, rep_w):
            os.close(fd)
        return self._supervise([chk, sol], {"stdout": out_r, "stderr": err_r, "report": rep_r}, job, t0,
                               wait_for=1)

    def _supervise(self, pids: list[int], pipes: dict[str, int], job: dict, t0: float,
                   wait_for: int | None = None) -> dict:
        """Drain the pipes with caps until the main process(es) exit or the deadline passes."""
        caps = {"stdout": self.cfg["max_output_bytes"], "stderr": self.cfg["max_stderr_bytes"],
                "report": REPORT_CAP}
        bufs = {k: bytearray() for k in pipes}
        overflow = {k: False for k in pipes}
        totals = {k: 0 for k in pipes}
        deadline = t0 + job["time_limit"]
        pidfds = {os.pidfd_open(p): p for p in pids}
        status: dict[int, int] = {}
        must_exit = pids[:wait_for] if wait_for else pids
        open_fds = {fd: k for k, fd in pipes.items()}
        timed_out = False
        killed_for_output = False
        poller = select.poll()
        for fd in list(open_fds) + list(pidfds):
            poller.register(fd, select.POLLIN)
        end_seconds = None
        while True:
            if all(p in status for p in must_exit):
                if end_seconds is None:
                    end_seconds = time.monotonic() - t0
                    self._kill_all(pids, status)
                if not open_fds:
                    break
                drain_deadline = time.monotonic() + 1.0
                self._drain(poller, open_fds, bufs, caps, overflow, drain_deadline)
                break
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                end_seconds = now - t0
                self._kill_all(pids, status)
                break
            events = poller.poll(max(1, int((deadline - now) * 1000) + 1))
            for fd, _ in events:
                if fd in pidfds:
                    p = pidfds.pop(fd)
                    poller.unregister(fd)
                    os.close(fd)
                    if p not in status:
                        try:
                            status[p] = os.waitpid(p, 0)[1]
                        except ChildProcessError:
                            status[p] = 0
                elif fd in open_fds:
                    k = open_fds[fd]
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        poller.unregister(fd)
                        os.close(fd)
                        del open_fds[fd]
                        continue
                    room = caps[k] - len(bufs[k])
                    bufs[k] += chunk[:room]
                    totals[k] += len(chunk)
                    if len(chunk) > room:
                        overflow[k] = True
                        limit = self.cfg["max_output_bytes"] if k == "stderr" else 0
                        if totals[k] > limit and not killed_for_output:
                            killed_for_output = True
                            end_seconds = time.monotonic() - t0
                            self._kill_all(pids, status)
            if killed_for_output:
                break
        for fd in list(pidfds):
            os.close(fd)
        for fd in list(open_fds):
            os.close(fd)
        for p in pids:
            if p not in status:
                try:
                    _, st = os.waitpid(p, 0)
                    status[p] = st
                except ChildProcessError:
                    status[p] = 0
        main = status[pids[-1]]
        return {
            "ok": True,
            "exit": os.WEXITSTATUS(main) if os.WIFEXITED(main) else None,
            "signal": os.WTERMSIG(main) if os.WIFSIGNALED(main) else None,
            "timed_out": timed_out,
            "seconds": round(end_seconds if end_seconds is not None else time.monotonic() - t0, 6),
            "stdout": base64.b64encode(bytes(bufs["stdout"])).decode(),
            "stderr": base64.b64encode(bytes(bufs["stderr"])).decode(),
            "stdout_overflow": overflow["stdout"],
            "stderr_overflow": totals["stderr"] > self.cfg["max_output_bytes"],
            "report_overflow": overflow["report"],
            "report": bytes(bufs["report"]).decode("utf-8", "replace"),
        }

    def _kill_all(self, pids: list[int], status: dict[int, int]) -> None:
        """SIGKILL the process groups, collect the main processes, then everything left of the slot.

        Orphans are re-parented to this process (a child sub-reaper), so when it has no children left
        nothing the test started survives; only otherwise is the per-uid sweep needed.
        """
        for p in pids:
            try:
                os.killpg(p, signal.SIGKILL)
            except OSError:
                pass
        for p in pids:
            if p not in status:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    status[p] = os.waitpid(p, 0)[1]
                except ChildProcessError:
                    status[p] = 0
        reap()
        if _has_children():
            if self.strong:
                kill_uid(self.uid)
                if len(pids) > 1:
                    kill_uid(self.checker_uid)
            else:
                kill_orphans()
            reap()

    @staticmethod
    def _drain(poller, open_fds, bufs, caps, overflow, deadline) -> None:
        while open_fds and time.monotonic() < deadline:
            events = poller.poll(max(1, int((deadline - time.monotonic()) * 1000)))
            for fd, _ in events:
                if fd not in open_fds:
                    continue
                k = open_fds[fd]
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    poller.unregister(fd)
                    os.close(fd)
                    del open_fds[fd]
                    continue
                room = caps[k] - len(bufs[k])
                bufs[k] += chunk[:room]
                if len(chunk) > room:
                    overflow[k] = True


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
    cfg = json.loads(sys.argv[1])
    rfd, wfd = sys.stdin.fileno(), sys.stdout.fileno()
    # Keep the protocol fds away from 0/1 so a child's dup2 targets never collide with them.
    rfd, wfd = os.dup(rfd), os.dup(wfd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
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
