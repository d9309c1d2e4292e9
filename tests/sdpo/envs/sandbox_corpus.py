"""A corpus of programs with known verdicts, to measure a code runner's false negatives and false positives.

``CORRECT``: programs written the way accepted competitive-programming and LeetCode solutions are written
(every stdin reading style, every exit style, output quirks, deep recursion, scratch files, threads,
``class Solution`` with helpers, CRLF input, input without a final newline ...). A runner must pass every one.
``WRONG``: wrong answers, crashes, hangs, output floods and hostile programs (forged verdicts, reading the
runner's memory, killing it, fork bombs, and programs that would only pass if one test's state leaked into
the next). A runner must fail every one.

Each case is a ``Case(name, code, tests)``: ``code`` is the program, ``tests`` a test spec in the
LiveCodeBench / lasgroup-SDPO format (``inputs``, ``outputs``, ``testtype``, ``fn_name``, ``time_limit``,
``assert_code``). The module has no dependencies, so a comparison script can load it by path.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    code: str
    tests: dict

    def response(self) -> str:
        """The program as a model response (a fenced python block)."""
        return f"Here is my solution.\n\n```python\n{self.code}\n```\n"


def _code(src: str) -> str:
    return textwrap.dedent(src).strip("\n")


def stdin(inputs, outputs, time_limit=6.0) -> dict:
    return {"inputs": list(inputs), "outputs": list(outputs), "testtype": "stdin", "time_limit": time_limit}


def functional(fn_name, inputs, outputs, time_limit=6.0) -> dict:
    """Functional tests: each input holds one JSON argument per line (compact JSON, as LiveCodeBench stores)."""
    ins = ["\n".join(json.dumps(a, separators=(",", ":")) for a in args) for args in inputs]
    outs = [json.dumps(o, separators=(",", ":")) for o in outputs]
    return {"inputs": ins, "outputs": outs, "testtype": "functional", "fn_name": fn_name, "time_limit": time_limit}


def check(fn_name, assert_code, time_limit=6.0) -> dict:
    return {"inputs": [], "outputs": [], "testtype": "assert", "fn_name": fn_name,
            "assert_code": _code(assert_code) + "\n", "time_limit": time_limit}


CORRECT: list[Case] = []
WRONG: list[Case] = []


def ok(name: str, code: str, tests: dict) -> None:
    CORRECT.append(Case(name, _code(code), tests))


def bad(name: str, code: str, tests: dict) -> None:
    WRONG.append(Case(name, _code(code), tests))


# ============================================================================================ problems
# SUM: t test cases, each "a b" -> a + b. Three tests; the last input has no final newline.
SUM = stdin(["3\n1 2\n3 4\n5 6\n", "1\n-7 7\n", "2\n1000000000 1000000000\n0 0"],
            ["3\n7\n11\n", "0\n", "2000000000\n0\n"])
SUM_CRLF = stdin(["3\r\n1 2\r\n3 4\r\n5 6\r\n", "1\r\n-7 7\r\n", "2\r\n1000000000 1000000000\r\n0 0"],
                 ["3\n7\n11\n", "0\n", "2000000000\n0\n"])
# KADANE: n, then n integers -> the maximum subarray sum.
KADANE = stdin(["5\n-2 1 -3 4 -1\n", "1\n-5\n", "8\n2 -1 2 3 -9 4 4 -1\n"], ["4\n", "-5\n", "8\n"])
# PAL: t words -> YES if the word is a palindrome else NO.
PAL = stdin(["4\nabba\nabc\nx\nabca\n", "2\nracecar\nab\n", "1\nzz"],
            ["YES\nNO\nYES\nNO\n", "YES\nNO\n", "YES\n"])
# REV: n lines -> each line's words in reverse order.
REV = stdin(["2\nhello world\na b c\n", "1\nsingle\n", "3\nx y\nkeep  the   words\nlast line here"],
            ["world hello\nc b a\n", "single\n", "y x\nwords the keep\nhere line last\n"])
# SQUARES: n -> the squares 1..n, one per line (a long output for the output-style cases).
SQUARES = stdin(["3\n", "1\n", "6\n"], ["1\n4\n9\n", "1\n", "1\n4\n9\n16\n25\n36\n"])
# MEAN: n numbers -> their mean (a float; 1e-6 tolerance).
MEAN = stdin(["3\n1 2 4\n", "2\n1 2\n", "3\n0 0 1\n"], ["2.3333333333\n", "1.5\n", "0.3333333333\n"])
# CHAIN: a path graph of n nodes given as n-1 edges -> the depth of the deepest node from node 1
# (needs deep recursion for a recursive DFS).
N_CHAIN = 100000
CHAIN = stdin([f"{N_CHAIN}\n" + "".join(f"{i} {i + 1}\n" for i in range(1, N_CHAIN)), "3\n1 2\n1 3\n"],
              [f"{N_CHAIN - 1}\n", "1\n"])
# GRID: shortest path in a grid from top-left to bottom-right ('#' is a wall), -1 if none.
GRID = stdin(["3 3\n...\n.#.\n...\n", "2 2\n.#\n#.\n", "1 1\n.\n"], ["4\n", "-1\n", "0\n"])
# BIG: n numbers -> their sum modulo 998244353 (200,000 numbers: fast input matters).
_BIG_N = 200000
BIG = stdin([f"{_BIG_N}\n" + " ".join(str(i * 7919 % 1000003) for i in range(_BIG_N)) + "\n"],
            [str(sum(i * 7919 % 1000003 for i in range(_BIG_N)) % 998244353) + "\n"])

# ============================================================================================ correct: reading styles
# Every way accepted Python solutions read stdin, on two problems.

ok("sum_input", """
t = int(input())
for _ in range(t):
    a, b = map(int, input().split())
    print(a + b)
""", SUM)
ok("sum_readline_alias", """
import sys
input = sys.stdin.readline
t = int(input())
for _ in range(t):
    a, b = map(int, input().split())
    print(a + b)
""", SUM)
ok("sum_readline_rstrip_lambda", """
import sys
input = lambda: sys.stdin.readline().rstrip("\\r\\n")
for _ in range(int(input())):
    a, b = input().split()
    print(int(a) + int(b))
""", SUM)
ok("sum_stdin_buffer_read_split", """
import sys
data = sys.stdin.buffer.read().split()
t = int(data[0])
out = []
for i in range(t):
    out.append(int(data[1 + 2 * i]) + int(data[2 + 2 * i]))
print("\\n".join(map(str, out)))
""", SUM)
ok("sum_stdin_buffer_readline", """
import sys
input = sys.stdin.buffer.readline
t = int(input())
for _ in range(t):
    a, b = map(int, input().split())
    sys.stdout.write(f"{a + b}\\n")
""", SUM)
ok("sum_open0_read_split", """
a = list(map(int, open(0).read().split()))
t = a[0]
for i in range(t):
    print(a[1 + 2 * i] + a[2 + 2 * i])
""", SUM)
ok("sum_open0_readlines", """
lines = open(0).readlines()
for line in lines[1:]:
    if line.strip():
        a, b = map(int, line.split())
        print(a + b)
""", SUM)
ok("sum_open0_unpacking", """
t, *rest = map(int, open(0).read().split())
for a, b in zip(rest[::2], rest[1::2]):
    print(a + b)
""", SUM)
ok("sum_os_read", """
import os
data = os.read(0, 1 << 25).split()
t = int(data[0])
print("\\n".join(str(int(data[2 * i + 1]) + int(data[2 * i + 2])) for i in range(t)))
""", SUM)
ok("sum_os_read_fstat_bytesio", """
import io, os
input = io.BytesIO(os.read(0, os.fstat(0).st_size)).readline
t = int(input())
for _ in range(t):
    a, b = map(int, input().split())
    print(a + b)
""", SUM)
ok("sum_fileinput", """
import fileinput
lines = [line for line in fileinput.input()]
for line in lines[1:]:
    a, b = map(int, line.split())
    print(a + b)
""", SUM)
ok("sum_for_line_in_stdin", """
import sys
first = True
for line in sys.stdin:
    if first:
        first = False
        continue
    a, b = map(int, line.split())
    print(a + b)
""", SUM)
ok("sum_stdin_read_splitlines", """
import sys
lines = sys.stdin.read().splitlines()
for line in lines[1 : 1 + int(lines[0])]:
    a, b = map(int, line.split())
    print(a + b)
""", SUM)
ok("sum_stdin_readlines", """
import sys
lines = sys.stdin.readlines()
print(*(sum(map(int, l.split())) for l in lines[1:]), sep="\\n")
""", SUM)
ok("sum_token_iterator", """
import sys
it = iter(sys.stdin.read().split())
t = int(next(it))
res = [int(next(it)) + int(next(it)) for _ in range(t)]
print(*res, sep="\\n")
""", SUM)

ok("kadane_input", """
n = int(input())
a = list(map(int, input().split()))
best = cur = a[0]
for x in a[1:]:
    cur = max(x, cur + x)
    best = max(best, cur)
print(best)
""", KADANE)
ok("kadane_readline_alias", """
import sys
input = sys.stdin.readline
n = int(input())
a = [int(x) for x in input().split()]
best, cur = -10**18, 0
for x in a:
    cur = max(x, cur + x)
    best = max(best, cur)
print(best)
""", KADANE)
ok("kadane_stdin_buffer", """
import sys
n, *a = map(int, sys.stdin.buffer.read().split())
best = cur = a[0]
for x in a[1:]:
    cur = x if cur < 0 else cur + x
    best = best if best > cur else cur
sys.stdout.write(str(best))
""", KADANE)
ok("kadane_open0", """
n, *a = map(int, open(0).read().split())
best = cur = -float("inf")
for x in a:
    cur = max(x, cur + x)
    best = max(best, cur)
print(int(best))
""", KADANE)
ok("kadane_open0_readlines_main", """
def main():
    lines = open(0).readlines()
    a = list(map(int, lines[1].split()))
    best = cur = a[0]
    for x in a[1:]:
        cur = max(x, cur + x)
        best = max(best, cur)
    print(best)

main()
""", KADANE)
ok("kadane_os_read", """
import os, sys
n, *a = map(int, os.read(0, 10**7).decode().split())
pre, lo, best = 0, 0, -10**18
for x in a:
    pre += x
    best = max(best, pre - lo)
    lo = min(lo, pre)
print(best)
""", KADANE)
ok("kadane_fileinput", """
import fileinput
vals = []
for i, line in enumerate(fileinput.input()):
    if i == 1:
        vals = list(map(int, line.split()))
best = cur = vals[0]
for x in vals[1:]:
    cur = max(x, cur + x)
    best = max(best, cur)
print(best)
""", KADANE)
ok("kadane_for_line", """
import sys
rows = [line for line in sys.stdin]
a = list(map(int, rows[1].split()))
from itertools import accumulate
pre = [0] + list(accumulate(a))
best, lo = -10**18, pre[0]
for p in pre[1:]:
    best = max(best, p - lo)
    lo = min(lo, p)
print(best)
""", KADANE)
ok("kadane_numpy", """
import sys
import numpy as np
data = np.array(sys.stdin.read().split()[1:], dtype=np.int64)
pre = np.concatenate(([0], np.cumsum(data)))
lo = np.minimum.accumulate(pre)[:-1]
print(int((pre[1:] - lo).max()))
""", KADANE)
ok("kadane_bytesio_fast_io", """
import io, os, sys
input = io.BytesIO(os.read(0, os.fstat(0).st_size)).readline
n = int(input())
a = list(map(int, input().split()))
dp = a[:]
for i in range(1, n):
    dp[i] = max(a[i], dp[i - 1] + a[i])
sys.stdout.write(str(max(dp)) + "\\n")
""", KADANE)
ok("kadane_input_until_eof", """
tokens = []
while True:
    try:
        tokens += input().split()
    except EOFError:
        break
a = list(map(int, tokens[1:]))
best = cur = a[0]
for x in a[1:]:
    cur = max(x, cur + x)
    best = max(best, cur)
print(best)
""", KADANE)

# ============================================================================================ correct: exit styles
_PAL_BODY = """
t = int(input())
res = []
for _ in range(t):
    s = input().strip()
    res.append("YES" if s == s[::-1] else "NO")
"""
_EXITS = {
    "none": "print('\\n'.join(res))",
    "exit": "print('\\n'.join(res))\nexit()",
    "exit0": "print('\\n'.join(res))\nexit(0)",
    "quit": "print('\\n'.join(res))\nquit()",
    "sys_exit0": "import sys\nprint('\\n'.join(res))\nsys.exit(0)",
    "sys_exit_none": "import sys\nprint('\\n'.join(res))\nsys.exit()",
    "raise_systemexit": "print('\\n'.join(res))\nraise SystemExit",
    "raise_systemexit0": "print('\\n'.join(res))\nraise SystemExit(0)",
    "os_exit_after_flush": "import os, sys\nprint('\\n'.join(res))\nsys.stdout.flush()\nos._exit(0)",
    "os_write_then_os_exit": "import os\nos.write(1, ('\\n'.join(res) + '\\n').encode())\nos._exit(0)",
    "sys_exit_main": "import sys\ndef main():\n    print('\\n'.join(res))\nsys.exit(main())",
    "exit_inside_loop": "for i, r in enumerate(res):\n    print(r)\n    if i == len(res) - 1:\n        exit()",
    "sys_exit_false": "import sys\nprint('\\n'.join(res))\nsys.exit(False)",
}
for _name, _tail in _EXITS.items():
    ok(f"pal_exit_{_name}", _PAL_BODY + _tail, PAL)

# Exit styles inside a main() behind the __main__ guard, as many solutions are structured.
for _name, _stmt in {"exit": "exit()", "quit": "quit()", "sys_exit": "sys.exit(0)", "raise": "raise SystemExit"}.items():
    ok(f"pal_main_guard_{_name}", f"""
import sys
def solve():
    t = int(sys.stdin.readline())
    for _ in range(t):
        s = sys.stdin.readline().strip()
        print("YES" if s == s[::-1] else "NO")
    {_stmt}

if __name__ == "__main__":
    solve()
""", PAL)

# ============================================================================================ correct: output styles
_SQ_HEAD = "n = int(input())\nsq = [i * i for i in range(1, n + 1)]\n"
_OUTPUTS = {
    "print_each": "for x in sq:\n    print(x)",
    "join": "print('\\n'.join(map(str, sq)))",
    "star_sep": "print(*sq, sep='\\n')",
    "write_no_final_newline": "import sys\nsys.stdout.write('\\n'.join(map(str, sq)))",
    "trailing_spaces": "for x in sq:\n    print(x, end=' \\n')",
    "trailing_tab_and_spaces": "for x in sq:\n    print(str(x) + '\\t  ')",
    "extra_blank_lines_after": "print('\\n'.join(map(str, sq)))\nprint()\nprint()",
    "blank_line_before": "print()\nprint('\\n'.join(map(str, sq)))",
    "os_write": "import os\nos.write(1, ('\\n'.join(map(str, sq)) + '\\n').encode())",
    "buffer_write": "import sys\nsys.stdout.buffer.write(('\\n'.join(map(str, sq))).encode())",
    "flush_each": "for x in sq:\n    print(x, flush=True)",
    "stringio_buffered": "import io, sys\nbuf = io.StringIO()\nfor x in sq:\n    buf.write(f'{x}\\n')\nsys.stdout.write(buf.getvalue())",
    "crlf_line_ends": "import sys\nsys.stdout.write(''.join(f'{x}\\r\\n' for x in sq))",
    "write_lines_list": "import sys\nsys.stdout.writelines(f'{x}\\n' for x in sq)",
    "print_file_stdout": "import sys\nfor x in sq:\n    print(x, file=sys.stdout)",
    "stdout_reconfigured": "import sys\nsys.stdout.reconfigure(line_buffering=False)\nprint(*sq, sep='\\n')",
    "atexit_flush": "import atexit, sys\nout = []\natexit.register(lambda: sys.stdout.write('\\n'.join(out) + '\\n'))\nout.extend(map(str, sq))",
    "rebound_stdout_then_restored": "import io, sys\nreal = sys.stdout\nsys.stdout = io.StringIO()\nprint('\\n'.join(map(str, sq)))\ntext = sys.stdout.getvalue()\nsys.stdout = real\nprint(text, end='')",
    "stdout_closed_at_end": "import sys\nprint('\\n'.join(map(str, sq)))\nsys.stdout.close()",
}
for _name, _tail in _OUTPUTS.items():
    ok(f"squares_out_{_name}", _SQ_HEAD + _tail, SQUARES)

ok("rev_split_join", """
n = int(input())
for _ in range(n):
    print(" ".join(input().split()[::-1]))
""", REV)
ok("rev_readlines_reversed", """
import sys
lines = sys.stdin.read().split("\\n")
n = int(lines[0])
print("\\n".join(" ".join(reversed(l.split())) for l in lines[1 : n + 1]))
""", REV)
ok("rev_trailing_space_per_word", """
n = int(input())
for _ in range(n):
    for w in reversed(input().split()):
        print(w, end=" ")
    print()
""", REV)

ok("mean_plain_print", "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a) / n)", MEAN)
ok("mean_format_10f", "n = int(input())\na = list(map(int, input().split()))\nprint('%.10f' % (sum(a) / n))", MEAN)
ok("mean_fstring_12f", "n = int(input())\na = list(map(int, input().split()))\nprint(f'{sum(a) / n:.12f}')", MEAN)
ok("mean_fraction_decimal", """
from decimal import Decimal, getcontext
getcontext().prec = 30
n = int(input())
a = list(map(int, input().split()))
print(Decimal(sum(a)) / Decimal(n))
""", MEAN)
ok("mean_round_8", "n = int(input())\na = list(map(int, input().split()))\nprint(round(sum(a) / n, 8))", MEAN)

# ============================================================================================ correct: recursion and stack
ok("chain_setrecursionlimit", """
import sys
sys.setrecursionlimit(1 << 20)
def main():
    n = int(sys.stdin.readline())
    adj = [[] for _ in range(n + 1)]
    for _ in range(n - 1):
        u, v = map(int, sys.stdin.readline().split())
        adj[u].append(v)
        adj[v].append(u)
    best = 0
    def dfs(u, p, d):
        nonlocal best
        best = max(best, d)
        for w in adj[u]:
            if w != p:
                dfs(w, u, d + 1)
    dfs(1, 0, 0)
    print(best)
main()
""", CHAIN)
ok("chain_threading_stack_size", """
import sys, threading
sys.setrecursionlimit(10**6)
threading.stack_size(1 << 27)
def main():
    data = sys.stdin.buffer.read().split()
    n = int(data[0])
    adj = [[] for _ in range(n + 1)]
    for i in range(n - 1):
        u, v = int(data[1 + 2 * i]), int(data[2 + 2 * i])
        adj[u].append(v)
        adj[v].append(u)
    def dfs(u, p):
        return max([dfs(w, u) + 1 for w in adj[u] if w != p], default=0)
    print(dfs(1, 0))
t = threading.Thread(target=main)
t.start()
t.join()
""", CHAIN)
ok("chain_thread_without_join", """
import sys, threading
sys.setrecursionlimit(300000)
threading.stack_size(64 * 1024 * 1024)
def main():
    n = int(input())
    par = {}
    adj = [[] for _ in range(n + 1)]
    for _ in range(n - 1):
        u, v = map(int, input().split())
        adj[u].append(v)
        adj[v].append(u)
    def depth(u, p):
        best = 0
        for w in adj[u]:
            if w != p:
                best = max(best, 1 + depth(w, u))
        return best
    print(depth(1, 0))
threading.Thread(target=main).start()
""", CHAIN)
ok("chain_iterative_stack", """
import sys
from collections import deque
def main():
    inp = sys.stdin.readline
    n = int(inp())
    adj = [[] for _ in range(n + 1)]
    for _ in range(n - 1):
        u, v = map(int, inp().split())
        adj[u].append(v); adj[v].append(u)
    dist = [-1] * (n + 1)
    dist[1] = 0
    q = deque([1])
    while q:
        u = q.popleft()
        for w in adj[u]:
            if dist[w] < 0:
                dist[w] = dist[u] + 1
                q.append(w)
    print(max(dist[1:]))
main()
""", CHAIN)
ok("chain_generator_bootstrap", """
import sys
from types import GeneratorType
def bootstrap(f, stack=[]):
    def wrapped(*args, **kwargs):
        if stack:
            return f(*args, **kwargs)
        to = f(*args, **kwargs)
        while True:
            if type(to) is GeneratorType:
                stack.append(to)
                to = next(to)
            else:
                stack.pop()
                if not stack:
                    break
                to = stack[-1].send(to)
        return to
    return wrapped
n = int(sys.stdin.readline())
adj = [[] for _ in range(n + 1)]
for _ in range(n - 1):
    u, v = map(int, sys.stdin.readline().split())
    adj[u].append(v); adj[v].append(u)
@bootstrap
def dfs(u, p):
    best = 0
    for w in adj[u]:
        if w != p:
            d = yield dfs(w, u)
            best = max(best, d + 1)
    yield best
print(dfs(1, 0))
""", CHAIN)
def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


ok("fib_lru_cache_recursion", """
import sys
from functools import lru_cache
sys.setrecursionlimit(10000)
@lru_cache(maxsize=None)
def f(n):
    return n if n < 2 else f(n - 1) + f(n - 2)
print(f(int(input())) % 1000000007)
""", stdin(["10\n", "3000\n"], ["55\n", f"{_fib(3000) % 1000000007}\n"]))

# ============================================================================================ correct: scratch files
_ECHO = stdin(["alpha\n", "beta\n", "gamma"], ["alpha\n", "beta\n", "gamma\n"])
ok("file_in_cwd_exclusive_create", """
s = input()
with open("answer.txt", "x") as f:  # "x": fails if a file of an earlier run were still there
    f.write(s)
print(open("answer.txt").read())
""", _ECHO)
ok("file_in_tmp_exclusive_create", """
s = input()
with open("/tmp/answer.txt", "x") as f:
    f.write(s)
with open("/tmp/answer.txt") as f:
    print(f.read())
""", _ECHO)
ok("mkdir_in_tmp_must_not_exist", """
import os
os.mkdir("/tmp/work")
with open("/tmp/work/x", "w") as f:
    f.write(input())
print(open("/tmp/work/x").read())
""", _ECHO)
ok("makedirs_in_cwd_must_not_exist", """
import os
os.makedirs("out/deep/dir")
open("out/deep/dir/f", "w").write(input())
print(open("out/deep/dir/f").read())
""", _ECHO)
ok("tmp_has_no_files_of_mine", """
import os
mine = [n for n in os.listdir("/tmp") if os.lstat("/tmp/" + n).st_uid == os.getuid()]
assert not mine, mine
open("/tmp/mine-" + str(os.getpid()), "w").write("x")
print(input())
""", _ECHO)
ok("tempfile_temporaryfile", """
import tempfile
with tempfile.TemporaryFile("w+") as f:
    f.write(input())
    f.seek(0)
    print(f.read())
""", _ECHO)
ok("tempfile_named_and_mkdtemp", """
import os, tempfile
d = tempfile.mkdtemp()
with tempfile.NamedTemporaryFile("w", dir=d, delete=False, suffix=".txt") as f:
    f.write(input())
print(open(f.name).read())
""", _ECHO)
ok("sqlite_file_in_cwd", """
import sqlite3
con = sqlite3.connect("db.sqlite")
con.execute("create table t (s text)")  # fails if a database of an earlier run were still there
con.execute("insert into t values (?)", (input(),))
print(con.execute("select s from t").fetchone()[0])
""", _ECHO)
ok("pickle_roundtrip_in_home", """
import os, pickle
p = os.path.join(os.path.expanduser("~"), "state.pkl")
assert not os.path.exists(p)
pickle.dump({"s": input()}, open(p, "wb"))
print(pickle.load(open(p, "rb"))["s"])
""", _ECHO)
ok("dev_shm_exclusive_create", """
import os
fd = os.open("/dev/shm/answer", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
os.write(fd, input().encode())
os.close(fd)
print(open("/dev/shm/answer").read())
""", _ECHO)

# ============================================================================================ correct: fresh state per test
ok("module_state_fresh_builtins", """
import builtins
assert not hasattr(builtins, "seen_before")
builtins.seen_before = True
print(input())
""", _ECHO)
ok("module_state_fresh_imported_module", """
import math
assert not hasattr(math, "patched")
math.patched = 1
import collections
assert "mine" not in collections.__dict__
collections.mine = 2
print(input())
""", _ECHO)
ok("module_state_fresh_sys_modules", """
import sys, types
assert "my_helper_mod" not in sys.modules
sys.modules["my_helper_mod"] = types.ModuleType("my_helper_mod")
print(input())
""", _ECHO)
ok("module_state_recursionlimit_default", """
import sys
assert sys.getrecursionlimit() < 10**6, sys.getrecursionlimit()
sys.setrecursionlimit(10**6)
print(input())
""", _ECHO)
ok("env_fresh", """
import os
assert "LEFT_BY_EARLIER" not in os.environ
os.environ["LEFT_BY_EARLIER"] = "1"
print(input())
""", _ECHO)
ok("argv_is_plain", """
import sys
assert len(sys.argv) == 1 and "{" not in sys.argv[0] and "sdpo" not in " ".join(sys.argv), sys.argv
print(input())
""", _ECHO)
ok("env_has_no_runner_settings", """
import os
leaks = [k for k in os.environ if "SDPO" in k or "DATABASE" in k or "REDIS" in k or "SECRET" in k or "TOKEN" in k]
assert not leaks, leaks
print(input())
""", _ECHO)
ok("close_stdin_and_stdout_fds_at_end", """
import os, sys
print(input())
sys.stdout.flush()
os.close(0)
os.close(1)
""", _ECHO)
ok("stdin_closed_then_next_test", """
import sys
s = sys.stdin.read().strip()
sys.stdin.close()
print(s)
""", _ECHO)
ok("stdin_is_not_a_tty", "import sys\nassert not sys.stdin.isatty()\nprint(input())", _ECHO)
ok("atexit_registered_once", """
import atexit
calls = []
atexit.register(lambda: print(input_value))
input_value = input()
""", _ECHO)
ok("systemexit_in_atexit_is_ignored", """
import atexit, sys
atexit.register(lambda: sys.exit(3))  # CPython prints "Exception ignored" and still exits 0
print(input())
""", _ECHO)
ok("signal_alarm_self_limit", """
import signal
signal.signal(signal.SIGALRM, lambda *a: None)
signal.alarm(5)
print(input())
signal.alarm(0)
""", _ECHO)
ok("getpid_is_stable", """
import os
pid = os.getpid()
assert os.getpid() == pid and os.getppid() != pid
print(input())
""", _ECHO)

# ============================================================================================ correct: processes and threads
ok("thread_pool_executor", """
from concurrent.futures import ThreadPoolExecutor
n = int(input())
with ThreadPoolExecutor(4) as ex:
    sq = list(ex.map(lambda i: i * i, range(1, n + 1)))
print("\\n".join(map(str, sq)))
""", SQUARES)
ok("threads_started_and_joined", """
import threading
n = int(input())
out = [0] * n
def work(i):
    out[i] = (i + 1) ** 2
ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print(*out, sep="\\n")
""", SQUARES)
ok("fork_child_writes_output", """
import os, sys
n = int(input())
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    print("\\n".join(str(i * i) for i in range(1, n + 1)))
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
""", SQUARES)
ok("subprocess_echo", """
import subprocess
n = int(input())
r = subprocess.run(["/bin/echo", "\\n".join(str(i * i) for i in range(1, n + 1))], capture_output=True, text=True)
print(r.stdout, end="")
""", SQUARES)
ok("daemon_thread_left_running", """
import threading, time
threading.Thread(target=lambda: time.sleep(100), daemon=True).start()
n = int(input())
print(*[i * i for i in range(1, n + 1)], sep="\\n")
""", SQUARES)
ok("background_process_left_running", """
import os, subprocess, sys
subprocess.Popen(["/bin/sleep", "100"], start_new_session=True)
n = int(input())
print(*[i * i for i in range(1, n + 1)], sep="\\n")
""", SQUARES)
ok("multiprocessing_pool_map", """
import multiprocessing as mp
def sq(x):
    return x * x
if __name__ == "__main__":
    n = int(input())
    with mp.Pool(2) as p:
        print(*p.map(sq, range(1, n + 1)), sep="\\n")
""", SQUARES)

# ============================================================================================ correct: input format
ok("sum_crlf_input", """
t = int(input())
for _ in range(t):
    a, b = map(int, input().split())
    print(a + b)
""", SUM_CRLF)
ok("sum_crlf_buffer", """
import sys
data = sys.stdin.buffer.read().split()
print("\\n".join(str(int(data[i]) + int(data[i + 1])) for i in range(1, 2 * int(data[0]), 2)))
""", SUM_CRLF)
ok("sum_crlf_readline_strip", """
import sys
input = sys.stdin.readline
for _ in range(int(input())):
    a, b = input().strip().split(" ")
    print(int(a) + int(b))
""", SUM_CRLF)
ok("no_final_newline_input", """
import sys
s = sys.stdin.readline()
print(int(s) * 2)
""", stdin(["21", "5\n", "-4"], ["42", "10", "-8"]))
ok("blank_lines_in_input", """
import sys
nums = [int(x) for x in sys.stdin.read().split()]
print(sum(nums))
""", stdin(["\n\n1 2\n\n3\n\n\n", "  7  \n"], ["6\n", "7\n"]))
ok("grid_bfs", """
from collections import deque
h, w = map(int, input().split())
g = [input() for _ in range(h)]
dist = [[-1] * w for _ in range(h)]
dist[0][0] = 0
q = deque([(0, 0)])
while q:
    r, c = q.popleft()
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        nr, nc = r + dr, c + dc
        if 0 <= nr < h and 0 <= nc < w and g[nr][nc] == "." and dist[nr][nc] < 0:
            dist[nr][nc] = dist[r][c] + 1
            q.append((nr, nc))
print(dist[h - 1][w - 1])
""", GRID)
ok("grid_bfs_open0_lines", """
from collections import deque
lines = open(0).read().split("\\n")
h, w = map(int, lines[0].split())
g = lines[1 : 1 + h]
seen = {(0, 0): 0}
q = deque([(0, 0)])
while q:
    r, c = q.popleft()
    for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
        if 0 <= nr < h and 0 <= nc < w and g[nr][nc] != "#" and (nr, nc) not in seen:
            seen[(nr, nc)] = seen[(r, c)] + 1
            q.append((nr, nc))
print(seen.get((h - 1, w - 1), -1))
""", GRID)
ok("big_input_stdin_buffer", """
import sys
data = sys.stdin.buffer.read().split()
n = int(data[0])
print(sum(map(int, data[1 : n + 1])) % 998244353)
""", BIG)
ok("big_input_readline_map", """
import sys
input = sys.stdin.readline
n = int(input())
print(sum(map(int, input().split())) % 998244353)
""", BIG)
ok("big_input_open0", "n, *a = map(int, open(0).read().split())\nprint(sum(a) % 998244353)", BIG)
ok("big_input_plain_input", "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a) % 998244353)", BIG)
ok("big_int_digits", """
import sys
sys.set_int_max_str_digits(0)
n = int(input())
print(n * n)
""", stdin(["9" * 5000 + "\n"], ["9" * 4999 + "8" + "0" * 4999 + "1\n"]))  # (10**5000 - 1) ** 2
ok("unicode_io", "s = input()\nprint(s[::-1], len(s))", stdin(["héllo wörld ✓\n"], ["✓ dlröw olléh 13\n"]))

# ============================================================================================ correct: stderr and warnings
ok("debug_prints_to_stderr", """
import sys
n = int(input())
for i in range(1, n + 1):
    print("debug", i, file=sys.stderr)
    print(i * i)
""", SQUARES)
ok("stderr_100kb_debug", """
import sys
sys.stderr.write("x" * 100000 + "\\n")
n = int(input())
print(*[i * i for i in range(1, n + 1)], sep="\\n")
""", SQUARES)
ok("warnings_and_logging", """
import logging, warnings
warnings.warn("careful")
logging.warning("also careful")
n = int(input())
print(*[i * i for i in range(1, n + 1)], sep="\\n")
""", SQUARES)
ok("exception_caught_and_printed", """
import traceback
try:
    1 / 0
except ZeroDivisionError:
    traceback.print_exc()
n = int(input())
print(*[i * i for i in range(1, n + 1)], sep="\\n")
""", SQUARES)

# ============================================================================================ correct: misc idioms
ok("future_annotations_dataclass", """
from __future__ import annotations
from dataclasses import dataclass
@dataclass
class P:
    a: int
    b: int
    def total(self) -> int:
        return self.a + self.b
t = int(input())
for _ in range(t):
    print(P(*map(int, input().split())).total())
""", SUM)
# LiveCodeBench's harness runs solutions with common modules star-imported (``deque`` without an import).
ok("implicit_lcb_imports_without_import", """
t = int(input())
q = deque()
for _ in range(t):
    a, b = map(int, input().split())
    q.append(a + b)
print(*q, sep="\\n")
""", SUM)
ok("typing_and_heapq", """
from typing import List
import heapq
def solve(pairs: List[List[int]]) -> List[int]:
    h = []
    for i, (a, b) in enumerate(pairs):
        heapq.heappush(h, (i, a + b))
    return [heapq.heappop(h)[1] for _ in range(len(h))]
t = int(input())
print("\\n".join(map(str, solve([list(map(int, input().split())) for _ in range(t)]))))
""", SUM)
ok("exec_of_generated_code", """
src = "def add(a, b):\\n    return a + b\\n"
ns = {}
exec(src, ns)
for _ in range(int(input())):
    print(ns["add"](*map(int, input().split())))
""", SUM)
ok("pickle_local_function_main", """
import pickle
def add(a, b):
    return a + b
f = pickle.loads(pickle.dumps(add))
for _ in range(int(input())):
    print(f(*map(int, input().split())))
""", SUM)
ok("input_reassigned_global", """
import sys
def input():
    return sys.stdin.readline().rstrip()
def main():
    for _ in range(int(input())):
        a, b = map(int, input().split())
        print(a + b)
main()
""", SUM)
ok("class_based_solver", """
class Solver:
    def __init__(self):
        self.t = int(input())
    def run(self):
        for _ in range(self.t):
            a, b = map(int, input().split())
            print(a + b)
Solver().run()
""", SUM)
ok("itertools_and_bisect", """
from bisect import bisect_left
from itertools import combinations
n = int(input())
a = list(map(int, input().split()))
best = max(sum(a[i:j]) for i, j in combinations(range(n + 1), 2))
print(best)
""", KADANE)
ok("sorted_containers_free_heap", """
import heapq
n = int(input())
a = list(map(int, input().split()))
pre, best, h = 0, -10**18, [0]
for x in a:
    pre += x
    best = max(best, pre - h[0])
    heapq.heappush(h, pre)
print(best)
""", KADANE)
ok("random_seeded", """
import random
random.seed(1)
n = int(input())
a = list(map(int, input().split()))
random.shuffle(list(a))
best = cur = a[0]
for x in a[1:]:
    cur = max(x, cur + x); best = max(best, cur)
print(best)
""", KADANE)
ok("time_and_datetime_used", """
import time, datetime
start = time.perf_counter()
now = datetime.datetime.now()
n = int(input())
print(*[i * i for i in range(1, n + 1)], sep="\\n")
""", SQUARES)
ok("os_getcwd_and_listdir", """
import os
cwd = os.getcwd()
assert os.path.isdir(cwd) and os.access(cwd, os.W_OK)
n = int(input())
print(*[i * i for i in range(1, n + 1)], sep="\\n")
""", SQUARES)
ok("memory_200mb", """
n = int(input())
block = bytearray(200 << 20)
block[-1] = 1
print(*[i * i for i in range(1, n + 1)], sep="\\n")
""", SQUARES)

# ============================================================================================ correct: functional (LeetCode style)
ok("fn_two_sum_class_solution", """
from typing import List
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
        return []
""", functional("twoSum", [([2, 7, 11, 15], 9), ([3, 2, 4], 6), ([3, 3], 6)], [[0, 1], [1, 2], [0, 1]]))
ok("fn_max_profit_helper_method", """
from typing import List, Optional
class Solution:
    def _best(self, prices: List[int]) -> int:
        lo, best = float("inf"), 0
        for p in prices:
            lo = min(lo, p)
            best = max(best, p - lo)
        return best
    def maxProfit(self, prices: List[int]) -> int:
        return int(self._best(prices))
""", functional("maxProfit", [([7, 1, 5, 3, 6, 4],), ([7, 6, 4, 3, 1],)], [5, 0]))
ok("fn_valid_parentheses_module_helper", """
PAIRS = {")": "(", "]": "[", "}": "{"}
def _ok(s):
    st = []
    for ch in s:
        if ch in PAIRS:
            if not st or st.pop() != PAIRS[ch]:
                return False
        else:
            st.append(ch)
    return not st
class Solution:
    def isValid(self, s: str) -> bool:
        return _ok(s)
""", functional("isValid", [("()[]{}",), ("(]",), ("([{}])",)], [True, False, True]))
ok("fn_merge_intervals", """
from typing import List
class Solution:
    def merge(self, intervals: List[List[int]]) -> List[List[int]]:
        out = []
        for a, b in sorted(intervals):
            if out and a <= out[-1][1]:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return out
""", functional("merge", [([[1, 3], [2, 6], [8, 10], [15, 18]],), ([[1, 4], [4, 5]],)], [[[1, 6], [8, 10], [15, 18]], [[1, 5]]]))
ok("fn_longest_substring_tuple_free", """
class Solution:
    def lengthOfLongestSubstring(self, s: str) -> int:
        last, start, best = {}, 0, 0
        for i, ch in enumerate(s):
            if last.get(ch, -1) >= start:
                start = last[ch] + 1
            last[ch] = i
            best = max(best, i - start + 1)
        return best
""", functional("lengthOfLongestSubstring", [("abcabcbb",), ("bbbbb",), ("",), ("a b c a",)], [3, 1, 0, 3]))
ok("fn_climb_stairs_lru_cache", """
from functools import lru_cache
class Solution:
    def climbStairs(self, n: int) -> int:
        @lru_cache(None)
        def f(k):
            return 1 if k <= 1 else f(k - 1) + f(k - 2)
        return f(n)
""", functional("climbStairs", [(2,), (3,), (45,)], [2, 3, 1836311903]))
ok("fn_coin_change_dp", """
from typing import List
import math
class Solution:
    def coinChange(self, coins: List[int], amount: int) -> int:
        dp = [0] + [math.inf] * amount
        for a in range(1, amount + 1):
            for c in coins:
                if c <= a:
                    dp[a] = min(dp[a], dp[a - c] + 1)
        return -1 if dp[amount] == math.inf else dp[amount]
""", functional("coinChange", [([1, 2, 5], 11), ([2], 3), ([1], 0)], [3, -1, 0]))
ok("fn_num_islands_grid_of_str", """
from typing import List
class Solution:
    def numIslands(self, grid: List[List[str]]) -> int:
        h, w = len(grid), len(grid[0])
        seen = set()
        def sink(r, c):
            stack = [(r, c)]
            while stack:
                r, c = stack.pop()
                if 0 <= r < h and 0 <= c < w and grid[r][c] == "1" and (r, c) not in seen:
                    seen.add((r, c))
                    stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
        n = 0
        for r in range(h):
            for c in range(w):
                if grid[r][c] == "1" and (r, c) not in seen:
                    n += 1
                    sink(r, c)
        return n
""", functional("numIslands", [([["1", "1", "0"], ["0", "0", "0"], ["0", "1", "1"]],)], [2]))
ok("fn_product_except_self", """
class Solution:
    def productExceptSelf(self, nums):
        n = len(nums)
        out = [1] * n
        acc = 1
        for i in range(n):
            out[i] = acc
            acc *= nums[i]
        acc = 1
        for i in range(n - 1, -1, -1):
            out[i] *= acc
            acc *= nums[i]
        return out
""", functional("productExceptSelf", [([1, 2, 3, 4],), ([-1, 1, 0, -3, 3],)], [[24, 12, 8, 6], [0, 0, 9, 0, 0]]))
ok("fn_search_rotated_bisect", """
from typing import List
from bisect import bisect_left
class Solution:
    def search(self, nums: List[int], target: int) -> int:
        k = min(range(len(nums)), key=nums.__getitem__)
        arr = nums[k:] + nums[:k]
        i = bisect_left(arr, target)
        return (i + k) % len(nums) if i < len(arr) and arr[i] == target else -1
""", functional("search", [([4, 5, 6, 7, 0, 1, 2], 0), ([4, 5, 6, 7, 0, 1, 2], 3), ([1], 1)], [4, -1, 0]))
ok("fn_group_anagrams_sorted", """
from collections import defaultdict
from typing import List
class Solution:
    def groupAnagrams(self, strs: List[str]) -> List[List[str]]:
        g = defaultdict(list)
        for s in strs:
            g["".join(sorted(s))].append(s)
        return sorted(sorted(v) for v in g.values())
""", functional("groupAnagrams", [(["eat", "tea", "tan", "ate", "nat", "bat"],)], [[["ate", "eat", "tea"], ["bat"], ["nat", "tan"]]]))
ok("fn_plain_function_no_class", """
def add_digits(num: int) -> int:
    while num >= 10:
        num = sum(map(int, str(num)))
    return num
""", functional("add_digits", [(38,), (0,), (999999999999,)], [2, 0, 9]))
ok("fn_returns_tuple_for_list", """
class Solution:
    def minMax(self, nums):
        return (min(nums), max(nums))
""", functional("minMax", [([3, 1, 2],)], [[1, 3]]))
ok("fn_returns_float_for_int", """
class Solution:
    def half(self, n: int) -> float:
        return n / 2
""", functional("half", [(4,), (3,)], [2, 1.5]))
ok("fn_bool_result", """
class Solution:
    def isPowerOfTwo(self, n: int) -> bool:
        return n > 0 and n & (n - 1) == 0
""", functional("isPowerOfTwo", [(1,), (16,), (3,), (0,)], [True, True, False, False]))
ok("fn_string_with_spaces", """
class Solution:
    def reverseWords(self, s: str) -> str:
        return " ".join(reversed(s.split()))
""", functional("reverseWords", [("the sky is blue",), ("  hello world  ",)], ["blue is sky the", "world hello"]))
ok("fn_nested_dict_result", """
from collections import Counter
class Solution:
    def counts(self, s: str) -> dict:
        return dict(sorted(Counter(s).items()))
""", functional("counts", [("abca",)], [{"a": 2, "b": 1, "c": 1}]))
ok("fn_null_result", """
from typing import Optional
class Solution:
    def firstEven(self, nums) -> Optional[int]:
        return next((x for x in nums if x % 2 == 0), None)
""", functional("firstEven", [([1, 3],), ([1, 4],)], [None, 4]))
ok("fn_big_int_result", """
class Solution:
    def power(self, n: int) -> int:
        return 3 ** n
""", functional("power", [(5000,)], [3 ** 5000]))
ok("fn_prints_debug_output", """
class Solution:
    def add(self, a: int, b: int) -> int:
        print("debug", a, b)
        return a + b
""", functional("add", [(1, 2), (-3, 3)], [3, 0]))
ok("fn_deep_recursion", """
import sys
sys.setrecursionlimit(100000)
class Solution:
    def depth(self, n: int) -> int:
        def go(k):
            return 0 if k == 0 else 1 + go(k - 1)
        return go(n)
""", functional("depth", [(20000,), (5,)], [20000, 5]))
ok("fn_mutates_input_list", """
class Solution:
    def sortColors(self, nums):
        nums.sort()
        return nums
""", functional("sortColors", [([2, 0, 2, 1, 1, 0],), ([1],)], [[0, 0, 1, 1, 2, 2], [1]]))
ok("fn_module_state_fresh_per_test", """
CALLS = []
class Solution:
    def calls(self, x: int) -> int:
        CALLS.append(x)
        return len(CALLS)
""", functional("calls", [(1,), (2,), (3,)], [1, 1, 1]))
ok("fn_uses_heapq_and_lcb_imports", """
class Solution:
    def kthLargest(self, nums, k):
        return heapq.nlargest(k, nums)[-1]
""", functional("kthLargest", [([3, 2, 1, 5, 6, 4], 2), ([3, 2, 3, 1, 2, 4, 5, 5, 6], 4)], [5, 4]))

# ============================================================================================ correct: assert (HumanEval style)
ok("assert_simple", """
def add(a: int, b: int) -> int:
    return a + b
""", check("add", """
def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate(-1, 1) == 0
"""))
ok("assert_helper_and_imports", """
from typing import List
import math
def _norm(v):
    return math.sqrt(sum(x * x for x in v))
def unit(v: List[float]) -> List[float]:
    n = _norm(v)
    return [x / n for x in v]
""", check("unit", """
def check(candidate):
    r = candidate([3.0, 4.0])
    assert abs(r[0] - 0.6) < 1e-9 and abs(r[1] - 0.8) < 1e-9
"""))
ok("assert_returns_tuple", """
def pair(a, b):
    return (b, a)
""", check("pair", """
def check(candidate):
    assert candidate(1, 2) == (2, 1)
    assert candidate("x", []) == ([], "x")
"""))
ok("assert_generator_consumed", """
def evens(n):
    return [i for i in range(n) if i % 2 == 0]
""", check("evens", """
def check(candidate):
    assert candidate(7) == [0, 2, 4, 6]
    assert candidate(0) == []
"""))
ok("assert_string_processing", """
def is_palindrome(text: str) -> bool:
    t = "".join(ch.lower() for ch in text if ch.isalnum())
    return t == t[::-1]
""", check("is_palindrome", """
def check(candidate):
    assert candidate("A man, a plan, a canal: Panama") is True
    assert candidate("race a car") is False
"""))

# ============================================================================================ wrong: answers
bad("sum_minus_instead_of_plus", """
t = int(input())
for _ in range(t):
    a, b = map(int, input().split())
    print(a - b)
""", SUM)
bad("sum_only_first_case", "t = int(input())\na, b = map(int, input().split())\nprint(a + b)", SUM)
bad("sum_all_on_one_line", """
t = int(input())
print(" ".join(str(sum(map(int, input().split()))) for _ in range(t)))
""", SUM)
bad("sum_off_by_one", """
t = int(input())
for _ in range(t):
    a, b = map(int, input().split())
    print(a + b + 1)
""", SUM)
bad("sum_skips_zero_case", """
for _ in range(int(input())):
    a, b = map(int, input().split())
    if a + b:
        print(a + b)
""", SUM)
bad("sum_extra_debug_line", """
t = int(input())
print("debug: t =", t)
for _ in range(t):
    print(sum(map(int, input().split())))
""", SUM)
bad("sum_float_output", """
t = int(input())
for _ in range(t):
    a, b = map(float, input().split())
    print(a + b + 0.5)
""", SUM)
bad("sum_overflow_emulated", """
t = int(input())
for _ in range(t):
    a, b = map(int, input().split())
    import ctypes
    print(ctypes.c_int32(2 * (a + b)).value // 2)  # as a C int
""", SUM)
bad("sum_prints_nothing", "t = int(input())", SUM)
bad("sum_reads_wrong_count", """
t = int(input())
for _ in range(t - 1):
    a, b = map(int, input().split())
    print(a + b)
""", SUM)
bad("kadane_zero_floor", """
n = int(input())
a = list(map(int, input().split()))
best = cur = 0
for x in a:
    cur = max(0, cur + x)
    best = max(best, cur)
print(best)
""", KADANE)
bad("kadane_total_sum", "n = int(input())\nprint(sum(map(int, input().split())))", KADANE)
bad("kadane_max_element", "n = int(input())\nprint(max(map(int, input().split())))", KADANE)
bad("kadane_prefix_bug", """
n = int(input())
a = list(map(int, input().split()))
best = a[0]
for i in range(n):
    s = a[i]
    for j in range(i + 1, n):
        s += a[j]
        best = max(best, s)
print(best)
""", KADANE)
bad("pal_lowercase_yes", """
for _ in range(int(input())):
    s = input()
    print("yes" if s == s[::-1] else "no")
""", PAL)
bad("pal_title_case", """
for _ in range(int(input())):
    s = input()
    print("Yes" if s == s[::-1] else "No")
""", PAL)
bad("pal_inverted", """
for _ in range(int(input())):
    s = input()
    print("NO" if s == s[::-1] else "YES")
""", PAL)
bad("pal_first_last_only", """
for _ in range(int(input())):
    s = input()
    print("YES" if s[0] == s[-1] else "NO")
""", PAL)
bad("squares_starting_at_zero", "n = int(input())\nprint(*[i * i for i in range(n)], sep='\\n')", SQUARES)
bad("squares_cubes", "n = int(input())\nprint(*[i ** 3 for i in range(1, n + 1)], sep='\\n')", SQUARES)
bad("squares_space_separated", "n = int(input())\nprint(*[i * i for i in range(1, n + 1)])", SQUARES)
bad("squares_missing_last", "n = int(input())\nprint(*[i * i for i in range(1, n)], sep='\\n')", SQUARES)
bad("squares_joined_without_separator", "n = int(input())\nprint(''.join(str(i * i) for i in range(1, n + 1)))",
    SQUARES)
bad("squares_reversed", "n = int(input())\nprint(*[i * i for i in range(n, 0, -1)], sep='\\n')", SQUARES)
bad("squares_extra_line_in_middle", """
n = int(input())
for i in range(1, n + 1):
    print(i * i)
    if i == 1:
        print()
""", SQUARES)
bad("squares_text_label", "n = int(input())\nfor i in range(1, n + 1):\n    print(f'sq={i * i}')", SQUARES)
bad("rev_reverses_characters", "n = int(input())\nfor _ in range(n):\n    print(input()[::-1])", REV)
bad("rev_keeps_order", "n = int(input())\nfor _ in range(n):\n    print(' '.join(input().split()))", REV)
bad("mean_integer_division", "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a) // n)", MEAN)
bad("mean_two_decimals", "n = int(input())\na = list(map(int, input().split()))\nprint('%.2f' % (sum(a) / n))", MEAN)
bad("mean_of_max", "n = int(input())\na = list(map(int, input().split()))\nprint(max(a) / n)", MEAN)
bad("grid_ignores_walls", "h, w = map(int, input().split())\nprint(h + w - 2)", GRID)
bad("grid_manhattan_minus", "h, w = map(int, input().split())\nprint(-1 if h > 1 else 0)", GRID)
bad("chain_counts_nodes", "n = int(input())\nprint(n)", CHAIN)
bad("big_without_modulo", "n, *a = map(int, open(0).read().split())\nprint(sum(a))", BIG)
bad("nan_for_mean", "print(float('nan'))\nprint(float('nan'))", MEAN)
bad("inf_for_number", "print(float('inf'))", stdin(["1\n"], ["1000000000000\n"]))
bad("decimal_vs_integer_exact", "print('1000000000.0')", stdin(["\n"], ["1000000001\n"]))
bad("empty_output_for_empty_expected_line", "print('x')", stdin(["\n"], ["\n"]))

# ============================================================================================ wrong: crashes
bad("zero_division_on_last_test", """
t = int(input())
for _ in range(t):
    a, b = map(int, input().split())
    print((a + b) * b // b)
""", SUM)
bad("unpack_error_on_test_2", "lines = open(0).read().split('\\n')\nfor i in range(1, 4):\n    a, b = map(int, lines[i].split())\n    print(a + b)", SUM)
bad("exit_code_1", "import sys\nprint(3)\nprint(7)\nprint(11)\nsys.exit(1)", SUM)
bad("sys_exit_with_message", """
import sys
t = int(input())
for _ in range(t):
    print(sum(map(int, input().split())))
sys.exit("done")
""", SUM)
bad("raise_systemexit_2", """
for _ in range(int(input())):
    print(sum(map(int, input().split())))
raise SystemExit(2)
""", SUM)
bad("os_exit_3", """
import os, sys
for _ in range(int(input())):
    print(sum(map(int, input().split())))
sys.stdout.flush()
os._exit(3)
""", SUM)
bad("os_exit_before_flush_loses_output", """
import os
for _ in range(int(input())):
    print(sum(map(int, input().split())))
os._exit(0)
""", SUM)
bad("assertion_error", "t = int(input())\nassert t == 3\nfor _ in range(t):\n    print(sum(map(int, input().split())))", SUM)
bad("recursion_without_limit", """
n = int(input())
adj = [[] for _ in range(n + 1)]
for _ in range(n - 1):
    u, v = map(int, input().split())
    adj[u].append(v); adj[v].append(u)
def dfs(u, p):
    return max([dfs(w, u) + 1 for w in adj[u] if w != p], default=0)
print(dfs(1, 0))
""", CHAIN)
bad("memory_error", "x = [0] * (10 ** 10)\nprint(1)", SQUARES)
bad("memory_grows_until_limit", """
chunks = []
while True:
    chunks.append(bytearray(64 << 20))
""", SQUARES)
bad("keyboard_interrupt", "raise KeyboardInterrupt", SQUARES)
bad("segfault_ctypes", "import ctypes\nctypes.string_at(0)", SQUARES)
bad("abort", "import os\nprint(1)\nos.abort()", SQUARES)
bad("kill_self_sigkill", "import os, signal\nprint(1)\nos.kill(os.getpid(), signal.SIGKILL)", SQUARES)
bad("kill_self_sigterm", "import os, signal, sys\nprint(1)\nsys.stdout.flush()\nos.kill(os.getpid(), signal.SIGTERM)\nimport time\ntime.sleep(1)", stdin(["1\n"], ["1\n"]))
bad("stack_overflow_unlimited", """
import sys
sys.setrecursionlimit(10**9)
def f(n):
    return f(n + 1) + 1
print(f(0))
""", stdin(["1\n"], ["1\n"], time_limit=3.0))
bad("reads_past_eof", "t = int(input())\nfor _ in range(t + 1):\n    print(sum(map(int, input().split())))", SUM)
bad("needs_argv", "import sys\nprint(open(sys.argv[1]).read())", _ECHO)
bad("syntax_error", "def f(:\n    pass", SQUARES)
bad("python2_print", "print 'hello'", SQUARES)
bad("indentation_error", "n = int(input())\n  print(n)", SQUARES)
bad("name_error", "n = int(input())\nprint(undefined_name)", SQUARES)
bad("type_error", "n = input()\nprint(n + 1)", SQUARES)
# sys.stdin splits lines at "\n" only (no newline translation, as CPython on POSIX and LiveCodeBench's
# StringIO): a program that compares whole lines keeps the "\r" of CRLF input and is wrong on it.
bad("crlf_input_not_stripped", """
for _ in range(int(input())):
    s = input()
    print("YES" if s == s[::-1] else "NO")
""", stdin(["3\r\nabba\r\nabc\r\nx\r\n", "2\r\nracecar\r\nab"], ["YES\nNO\nYES\n", "YES\nNO\n"]))
bad("unicode_decode_binary_stdin", "import sys\nsys.stdin.reconfigure(encoding='ascii', errors='strict')\nprint(sys.stdin.read())", stdin(["é\n"], ["é\n"]))
bad("closes_stdout_before_print", "import os\nos.close(1)\nprint(input())", _ECHO)
bad("error_after_correct_output", "print(input())\nraise ValueError('late')", _ECHO)

# ============================================================================================ wrong: hangs
bad("infinite_loop", "while True:\n    pass", stdin(["1\n"], ["1\n"], time_limit=1.0))
bad("infinite_loop_on_test_2", """
t = int(input())
if t == 1:
    while True:
        pass
for _ in range(t):
    print(sum(map(int, input().split())))
""", {**SUM, "time_limit": 1.0})
bad("sleep_forever", "import time\ntime.sleep(1000)", stdin(["1\n"], ["1\n"], time_limit=1.0))
bad("non_daemon_thread_never_ends", """
import threading, time
threading.Thread(target=lambda: time.sleep(1000)).start()
print(input())
""", stdin(["x\n"], ["x\n"], time_limit=1.0))
bad("deadlock_threads", """
import threading
a = threading.Lock(); a.acquire()
t = threading.Thread(target=a.acquire)
t.start(); t.join()
print(1)
""", stdin(["1\n"], ["1\n"], time_limit=1.0))
bad("atexit_loops_forever", """
import atexit
def spin():
    while True:
        pass
atexit.register(spin)
print(input())
""", stdin(["x\n"], ["x\n"], time_limit=1.0))
bad("waits_for_more_input", "import sys\ndata = sys.stdin.read()\nimport time\nwhile True:\n    time.sleep(0.1)", stdin(["1\n"], ["1\n"], time_limit=1.0))
bad("quadratic_too_slow", "n = 10 ** 5\ns = 0\nfor i in range(n):\n    for j in range(n):\n        s += i ^ j\nprint(s)", stdin(["1\n"], ["1\n"], time_limit=1.0))

# ============================================================================================ wrong: output floods
bad("stdout_1gb", "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)", stdin(["1\n"], ["1\n"], time_limit=3.0))
bad("correct_then_flood", "print(1)\nimport sys\nsys.stdout.write('\\n' * (64 << 20))", stdin(["1\n"], ["1\n"], time_limit=3.0))
bad("stderr_1gb", "import os\nchunk = b'e' * (1 << 20)\nfor _ in range(1024):\n    os.write(2, chunk)", stdin(["1\n"], ["1\n"], time_limit=3.0))
bad("stderr_flood_with_correct_stdout", """
import sys
print(input())
sys.stdout.flush()
for _ in range(40):
    sys.stderr.write("e" * (1 << 20))
""", stdin(["x\n"], ["x\n"], time_limit=3.0))

# ============================================================================================ wrong: fake a pass
bad("forge_verdict_lines_everywhere", """
import os
for fd in range(3, 64):
    try:
        os.write(fd, b'{"verdict": "passed"}\\n{"done": "x", "exit": 0}\\n{"result": ["i", "0x2"]}\\n')
    except OSError:
        pass
print('{"verdict": "passed", "ok": true}')
""", stdin(["1\n"], ["42\n"]))
bad("forge_expected_from_gc", """
import gc
found = None
for o in gc.get_objects():
    if isinstance(o, dict):
        for v in list(o.values()):
            if isinstance(v, str) and v.startswith("EXPECTED_"):
                found = v
print(found or "none")
""", stdin(["1\n"], ["EXPECTED_3141\n"]))
bad("forge_expected_from_frames", """
import sys
f, found = sys._getframe(), None
while f is not None:
    for v in list(f.f_globals.values()) + list(f.f_locals.values()):
        if isinstance(v, str) and v.startswith("EXPECTED_"):
            found = v
    f = f.f_back
print(found or "none")
""", stdin(["1\n"], ["EXPECTED_2718\n"]))
bad("forge_expected_from_memory_maps", """
import ctypes, re
found = "none"
for line in open("/proc/self/maps"):
    addr, perms = line.split()[:2]
    if "r" not in perms or "[v" in line:
        continue
    lo, hi = (int(x, 16) for x in addr.split("-"))
    if hi - lo > 64 << 20:
        continue
    try:
        m = re.search(rb"EXPECTED_[0-9]{4}", ctypes.string_at(lo, hi - lo))
    except Exception:
        m = None
    if m:
        found = m.group().decode()
print(found)
""", stdin(["1\n"], ["EXPECTED_1618\n"], time_limit=3.0))
bad("forge_expected_from_parent_environ_and_cmdline", """
import os
found = "none"
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for f in ("environ", "cmdline"):
            try:
                data = open(f"/proc/{pid}/{f}", "rb").read()
            except OSError:
                continue
            if b"EXPECTED_" in data:
                found = "leak"
print(found)
""", stdin(["1\n"], ["EXPECTED_1414\n"]))
bad("forge_functional_custom_eq", """
class Any:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
class Solution:
    def f(self, x):
        return Any()
""", functional("f", [(1,), (2,)], [2, 4]))
bad("forge_functional_int_subclass", """
class Int(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def f(x):
    return Int(7)
""", functional("f", [(1,)], [2]))
bad("forge_functional_str_subclass", """
class S(str):
    def __eq__(self, other):
        return True
    __hash__ = str.__hash__
def f(x):
    return S("no")
""", functional("f", [(1,)], ["yes"]))
bad("forge_functional_list_subclass", """
class L(list):
    def __eq__(self, other):
        return True
def f(x):
    return L([0])
""", functional("f", [(1,)], [[1, 2]]))
bad("forge_functional_write_result_then_crash", """
import os
def f(x):
    os.write(3, b'{"result": ["i", "0x2"]}\\n')
    raise ValueError("after forging")
""", functional("f", [(1,)], [2]))
bad("forge_assert_custom_eq", """
class Any:
    def __eq__(self, other):
        return True
def square(x):
    return Any()
""", check("square", "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 25\n"))
bad("forge_assert_monkeypatch_builtins", """
import builtins, sys
builtins.AssertionError = type("Nope", (Exception,), {})
def check(candidate):
    return None
sys.modules["builtins"].__dict__["check"] = check
def square(x):
    return x + 1
""", check("square", "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 25\n"))
bad("forge_assert_channel", """
import os
for fd in range(3, 64):
    try:
        os.write(fd, b'{"verdict": "passed"}\\n{"ready": true}\\n')
    except OSError:
        pass
def square(x):
    return x + 1
""", check("square", "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 25\n"))
bad("forge_assert_kill_checker", """
import os, signal
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
def square(x):
    return 0
""", check("square", "def check(candidate):\n    assert candidate(2) == 4\n"))
bad("forge_assert_exit_zero", "import sys\ndef square(x):\n    sys.exit(0)",
    check("square", "def check(candidate):\n    assert candidate(2) == 4\n"))
bad("forge_assert_os_exit_zero", "import os\ndef square(x):\n    os._exit(0)",
    check("square", "def check(candidate):\n    assert candidate(2) == 4\n"))
bad("forge_functional_sys_exit_zero", "import sys\ndef f(x):\n    sys.exit(0)", functional("f", [(1,)], [2]))
bad("forge_functional_os_exit_zero", "import os\ndef f(x):\n    os._exit(0)", functional("f", [(1,)], [2]))
bad("forge_stdin_exit_zero_before_output", "import sys\nsys.exit(0)\nprint(input())", _ECHO)
bad("forge_kill_parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('ok')",
    stdin(["\n"], ["EXPECTED_0001\n"]))
bad("forge_kill_minus_one", "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('ok')",
    stdin(["\n"], ["EXPECTED_0002\n"]))
bad("forge_kill_every_pid", """
import os, signal
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
print("ok")
""", stdin(["\n"], ["EXPECTED_0003\n"]))

# ============================================================================================ wrong: would pass only if state leaked
# Each "problem" below asks on test 2 for the input of test 1 (which a program can only know if something of
# test 1 survived into test 2); on test 1 the program echoes its input. An isolated runner fails them all.
_LEAK = stdin(["7\n", "0\n"], ["7\n", "7\n"])


def _leak(name: str, remember: str, recall: str) -> None:
    bad(f"leak_{name}", f"""
s = input().strip()
try:
{textwrap.indent(_code(recall), "    ")}
except Exception:
    old = None
if old:
    print(old)
else:
{textwrap.indent(_code(remember), "    ")}
    print(s)
""", _LEAK)


_leak("tmp_file", "open('/tmp/remember', 'w').write(s)", "old = open('/tmp/remember').read()")
_leak("cwd_file", "open('remember', 'w').write(s)", "old = open('remember').read()")
_leak("cwd_parent_file", "open('../remember', 'w').write(s)", "old = open('../remember').read()")
_leak("home_file", "import os\nopen(os.path.expanduser('~/remember'), 'w').write(s)",
      "import os\nold = open(os.path.expanduser('~/remember')).read()")
_leak("dev_shm_file", "open('/dev/shm/remember', 'w').write(s)", "old = open('/dev/shm/remember').read()")
_leak("tmpdir_env_file", "import os, tempfile\nopen(os.path.join(tempfile.gettempdir(), 'remember'), 'w').write(s)",
      "import os, tempfile\nold = open(os.path.join(tempfile.gettempdir(), 'remember')).read()")
_leak("builtins_attr", "import builtins\nbuiltins.remember = s", "import builtins\nold = builtins.remember")
_leak("stdlib_module_attr", "import collections\ncollections.remember = s", "import collections\nold = collections.remember")
_leak("sys_modules_entry", "import sys, types\nm = types.ModuleType('remember')\nm.v = s\nsys.modules['remember'] = m",
      "import sys\nold = sys.modules['remember'].v")
_leak("os_environ", "import os\nos.environ['REMEMBER'] = s", "import os\nold = os.environ['REMEMBER']")
_leak("sys_argv", "import sys\nsys.argv.append(s)", "import sys\nold = sys.argv[1]")
_leak("recursionlimit_channel", "import sys\nsys.setrecursionlimit(1000 + int(s))",
      "import sys\nold = str(sys.getrecursionlimit() - 1000) if sys.getrecursionlimit() < 50000 and sys.getrecursionlimit() != 1000 else None")
_leak("open_fd_left", "import os\nr, w = os.pipe()\nos.write(w, s.encode())\nos.dup2(r, 40)",
      "import os\nold = os.read(40, 100).decode()")
_leak("cwd_changed", "import os\nos.makedirs('/tmp/rem/' + s)\nos.chdir('/tmp/rem/' + s)",
      "import os\nold = os.path.basename(os.getcwd()) if '/tmp/rem/' in os.getcwd() else None")
_leak("sysv_shm", """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0x5EED, 4096, 0o1666)
ctypes.memmove(libc.shmat(shm, None, 0), s.encode() + b"\\0", len(s) + 1)
""", """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0x5EED, 0, 0)
old = ctypes.string_at(libc.shmat(shm, None, 0)).decode() if shm >= 0 else None
""")
_leak("daemon_process_server", """
import os, socket, time
sys_s = s
srv = socket.socket(socket.AF_UNIX)
srv.bind("\\0sdpo-corpus-remember")
srv.listen(1)
if os.fork() == 0:
    os.setsid()
    while True:
        c, _ = srv.accept()
        c.sendall(sys_s.encode())
        c.close()
""", """
import socket
c = socket.socket(socket.AF_UNIX)
c.settimeout(0.5)
c.connect("\\0sdpo-corpus-remember")
old = c.recv(100).decode()
""")
_leak("daemon_process_file_writer", """
import os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(0.3)
    open('/tmp/late', 'w').write(s)
    time.sleep(100)
""", "old = open('/tmp/late').read()")
_leak("daemon_thread_of_previous_test", """
import threading, builtins, time
def keep():
    while True:
        builtins.remember2 = s
        time.sleep(0.01)
threading.Thread(target=keep, daemon=True).start()
""", "import builtins\nold = builtins.remember2")
_leak("atexit_of_previous_test", """
import atexit, builtins
atexit.register(lambda: setattr(builtins, 'remember3', s))
""", "import builtins\nold = builtins.remember3")
_leak("tempfile_tempdir_global", "import tempfile\ntempfile.tempdir = '/tmp/rem-' + s\nimport os\nos.makedirs(tempfile.tempdir)",
      "import tempfile\nold = (tempfile.tempdir or '').split('rem-')[1]")
_leak("stdin_replaced", "import sys, io\nsys.stdin = io.StringIO(s)",
      "import sys\nold = sys.stdin.read() if type(sys.stdin).__name__ == 'StringIO' else None")
_leak("functools_cache_on_module", "import functools\nfunctools.REM = s", "import functools\nold = functools.REM")

# Functional tests that would only pass with state carried from one test to the next.
bad("leak_fn_module_global", """
SEEN = []
class Solution:
    def count(self, x: int) -> int:
        SEEN.append(x)
        return len(SEEN)
""", functional("count", [(1,), (2,), (3,)], [1, 2, 3]))
bad("leak_fn_builtins", """
import builtins
class Solution:
    def count(self, x: int) -> int:
        builtins.N = getattr(builtins, "N", 0) + 1
        return builtins.N
""", functional("count", [(1,), (2,), (3,)], [1, 2, 3]))
bad("leak_fn_tmp_file", """
import os
class Solution:
    def count(self, x: int) -> int:
        n = int(open("/tmp/n").read()) + 1 if os.path.exists("/tmp/n") else 1
        open("/tmp/n", "w").write(str(n))
        return n
""", functional("count", [(1,), (2,), (3,)], [1, 2, 3]))

# ============================================================================================ wrong: format
bad("no_code_block", "just text, no code", SQUARES)
bad("empty_program", "", SQUARES)
bad("comment_only", "# TODO", SQUARES)
bad("prints_prompt_text", "n = int(input('Enter n: '))\nprint(*[i * i for i in range(1, n + 1)], sep='\\n')", SQUARES)
bad("fn_missing_function", "def other(x):\n    return x", functional("f", [(1,)], [1]))
bad("fn_wrong_name_in_class", "class Solution:\n    def g(self, x):\n        return x", functional("f", [(1,)], [1]))
bad("fn_returns_string_for_int", "class Solution:\n    def f(self, x):\n        return str(x)", functional("f", [(1,)], [1]))
bad("fn_returns_bool_for_int", "class Solution:\n    def f(self, x):\n        return True", functional("f", [(1,)], [1]))
bad("fn_returns_int_for_bool", "class Solution:\n    def f(self, x):\n        return 1", functional("f", [(1,)], [True]))
bad("fn_returns_none", "class Solution:\n    def f(self, x):\n        pass", functional("f", [(1,)], [0]))
bad("fn_returns_set", "class Solution:\n    def f(self, x):\n        return {1, 2}", functional("f", [(1,)], [[1, 2]]))
bad("fn_returns_generator", "class Solution:\n    def f(self, x):\n        return (i for i in range(2))", functional("f", [(1,)], [[0, 1]]))
bad("fn_prints_instead_of_returning", "class Solution:\n    def f(self, x):\n        print(x * 2)", functional("f", [(1,)], [2]))
bad("fn_wrong_order", "class Solution:\n    def f(self, xs):\n        return sorted(xs, reverse=True)", functional("f", [([1, 2, 3],)], [[1, 2, 3]]))
bad("fn_float_for_exact_int", "class Solution:\n    def f(self, x):\n        return x + 0.5", functional("f", [(1,)], [1]))
bad("fn_raises", "class Solution:\n    def f(self, x):\n        raise RuntimeError('nope')", functional("f", [(1,)], [1]))
bad("fn_infinite_loop", "class Solution:\n    def f(self, x):\n        while True:\n            pass", functional("f", [(1,)], [1], time_limit=1.0))
bad("fn_none_for_zero", "class Solution:\n    def f(self, x):\n        return None", functional("f", [(0,)], [0]))
bad("fn_nested_wrong", "class Solution:\n    def f(self, x):\n        return [[1, 2], [3]]", functional("f", [(0,)], [[[1, 2], [3, 4]]]))
bad("fn_correct_only_first_test", """
class Solution:
    def twoSum(self, nums, target):
        return [0, 1]
""", functional("twoSum", [([2, 7, 11, 15], 9), ([3, 2, 4], 6)], [[0, 1], [1, 2]]))
bad("assert_wrong_value", "def add(a, b):\n    return a * b", check("add", "def check(candidate):\n    assert candidate(2, 2) == 4\n    assert candidate(1, 2) == 3\n"))
bad("assert_returns_none", "def add(a, b):\n    pass", check("add", "def check(candidate):\n    assert candidate(1, 2) == 3\n"))
bad("assert_raises", "def add(a, b):\n    raise KeyError(a)", check("add", "def check(candidate):\n    assert candidate(1, 2) == 3\n"))
bad("assert_missing_function", "def plus(a, b):\n    return a + b", check("add", "def check(candidate):\n    assert candidate(1, 2) == 3\n"))
bad("assert_infinite_loop", "def add(a, b):\n    while True:\n        pass", check("add", "def check(candidate):\n    assert candidate(1, 2) == 3\n", time_limit=1.0))

# ============================================================================================ wrong: hostile resource use
bad("fork_bomb", """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
""", stdin(["1\n"], ["1\n"], time_limit=1.0))
bad("cpu_storm_children", """
import os
for _ in range(16):
    if os.fork() == 0:
        os.setsid()
        while True:
            pass
while True:
    pass
""", stdin(["1\n"], ["1\n"], time_limit=1.0))
bad("thread_bomb", """
import threading, time
for _ in range(100000):
    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
""", stdin(["1\n"], ["1\n"], time_limit=2.0))
bad("disk_fill", """
with open("big", "wb") as f:
    while True:
        f.write(b"\\0" * (1 << 20))
""", stdin(["1\n"], ["1\n"], time_limit=3.0))
bad("zombie_factory_then_wrong", """
import os
for _ in range(20):
    if os.fork() == 0:
        os._exit(0)
print(0)
""", stdin(["1\n"], ["1\n"]))
bad("connect_redis", """
import socket
s = socket.create_connection(("127.0.0.1", 6379), timeout=0.5)
s.sendall(b"PING\\r\\n")
print(s.recv(100).decode().strip())
""", stdin(["\n"], ["+PONG\n"]))
bad("connect_postgres", """
import socket
socket.create_connection(("127.0.0.1", 5432), timeout=0.5)
print("connected")
""", stdin(["\n"], ["connected\n"]))
bad("read_project_files", """
import glob
print("found" if glob.glob("/work/**/pyproject.toml", recursive=True) else "none")
""", stdin(["\n"], ["found\n"]))
bad("become_root", "import os\nos.setuid(0)\nprint('root')", stdin(["\n"], ["root\n"]))

assert len({c.name for c in CORRECT + WRONG}) == len(CORRECT) + len(WRONG), "duplicate case names"
