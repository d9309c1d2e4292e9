"""Discovery curves of test-time solving: SDPO on the problem vs best-of-k vs multi-turn.

Usage:
    python bench/discovery.py [--model PATH] [--problems FILE.jsonl] [--seeds 0,1] [--budget 32] [--n 8]
        [--strategies sdpo,best_of_k,multiturn] [--set key=value ...] [--out docs/discovery.png] [--json FILE]

--problems: JSONL, one problem per line, either in the ``Problem`` format (title, statement, tests,
hidden_tests, ...) or a lasgroup/SDPO code row (prompt, system, kind, tests), e.g. ``hard.jsonl`` of the toy
world (``sdpo.toy.generator.write_split``), whose prompts are kept exactly. Default: four small built-in
stdin problems. --model: default ``sdpo.models.default_model_path()`` (SDPO_MODEL, else var/models/toy when
built, else the tiny model). --set: ``SolveConfig`` overrides shared by every run (e.g. max_new_tokens=64).

Every (strategy, problem, seed) run starts from a fresh copy of the model. Measured:
* discovery curve: the fraction of (problem, seed) runs solved within k attempts, for k = 1 .. budget;
* the ratio: best-of-k's final discovery rate r (at the budget) is reached by best-of-k after K_bok attempts
  (the first k with rate >= r) and by sdpo after K_sdpo attempts; ratio = K_bok / K_sdpo (the paper reports
  about 3x on hard LiveCodeBench problems). Undefined when best-of-k solves nothing or sdpo never reaches r.
Prints a table and writes the plot (PNG) to --out and, with --json, the raw ``discovered_at`` of every run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUILTIN_PROBLEMS = [
    {"title": "Double", "statement": "Read an integer n from standard input and print 2n.",
     "tests": {"inputs": ["3\n", "10\n"], "outputs": ["6\n", "20\n"], "testtype": "stdin"},
     "hidden_tests": {"inputs": ["-4\n", "0\n"], "outputs": ["-8\n", "0\n"], "testtype": "stdin"}},
    {"title": "Sum of a line", "statement": "Read one line of space-separated integers and print their sum.",
     "tests": {"inputs": ["1 2 3\n", "5\n"], "outputs": ["6\n", "5\n"], "testtype": "stdin"},
     "hidden_tests": {"inputs": ["-1 1\n", "10 20 30\n"], "outputs": ["0\n", "60\n"], "testtype": "stdin"}},
    {"title": "Reverse", "statement": "Read one word and print it reversed.",
     "tests": {"inputs": ["abc\n", "x\n"], "outputs": ["cba\n", "x\n"], "testtype": "stdin"},
     "hidden_tests": {"inputs": ["level\n", "ab\n"], "outputs": ["level\n", "ba\n"], "testtype": "stdin"}},
    {"title": "Maximum", "statement": "Read one line of space-separated integers and print the largest.",
     "tests": {"inputs": ["1 5 3\n", "7\n"], "outputs": ["5\n", "7\n"], "testtype": "stdin"},
     "hidden_tests": {"inputs": ["-3 -1 -2\n"], "outputs": ["-1\n"], "testtype": "stdin"}},
]


def load_tasks(path: str | None) -> list:
    """Code tasks from a JSONL of Problems or lasgroup code rows (or the built-in problems). A bad line exits
    with a message naming the file and the line."""
    from sdpo.data.lasgroup import DatasetError, row_to_task
    from sdpo.data.problem import Problem

    if path is None:
        return [Problem.parse(p).to_task() for p in BUILTIN_PROBLEMS]
    tasks = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise SystemExit(f"{path}:{i}: expected a JSON object (a problem), got {type(row).__name__}")
            try:
                tasks.append(Problem.parse(row).to_task() if "statement" in row
                             else row_to_task(row, source=path, line=i))
            except DatasetError as e:  # already names file and line
                raise SystemExit(str(e)) from None
            except ValueError as e:
                raise SystemExit(f"{path}:{i}: {e}") from None
    return tasks


def curve(discovered_at: list[int | None], budget: int) -> list[float]:
    """Fraction of runs solved within k attempts, for k = 1 .. budget."""
    n = len(discovered_at)
    return [sum(1 for d in discovered_at if d is not None and d <= k) / n for k in range(1, budget + 1)]


def attempts_to_reach(c: list[float], rate: float) -> int | None:
    """First k (1-based) with c[k-1] >= rate, or None."""
    return next((k for k, v in enumerate(c, 1) if v >= rate - 1e-12), None)


def run(args) -> dict:
    from sdpo.config import apply_overrides
    from sdpo.models import default_model_path, load_model_and_tokenizer
    from sdpo.rollout.hf import HFSampler
    from sdpo.ttt import SolveConfig, solve

    model_path = args.model or str(default_model_path())
    base, tokenizer = load_model_and_tokenizer(model_path)
    tasks = load_tasks(args.problems)[: args.max_problems]
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = args.strategies.split(",")
    found: dict[str, list[int | None]] = {}
    seconds: dict[str, float] = {}
    for strategy in strategies:
        found[strategy], t0 = [], time.perf_counter()
        for task in tasks:
            for seed in seeds:
                data = apply_overrides({"strategy": strategy, "budget": args.budget, "n": args.n, "seed": seed},
                                       args.set)
                cfg = SolveConfig.from_dict(data)
                model = copy.deepcopy(base)
                res = solve(task, model, tokenizer, HFSampler(model, tokenizer, batch_size=args.n), cfg)
                found[strategy].append(res.discovered_at)
                print(f"  {strategy:10s} {task.id[:30]:30s} seed {seed}: "
                      f"{'solved at ' + str(res.discovered_at) if res.discovered_at else 'not solved'}",
                      flush=True)
        seconds[strategy] = time.perf_counter() - t0
    curves = {s: curve(found[s], args.budget) for s in strategies}
    return {"model": model_path, "problems": args.problems or "built-in", "n_problems": len(tasks),
            "seeds": seeds, "budget": args.budget, "n": args.n, "set": args.set, "discovered_at": found,
            "curves": curves, "seconds": seconds}


def summarize(r: dict) -> list[str]:
    budget, curves = r["budget"], r["curves"]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k < budget] + [budget]
    runs = r["n_problems"] * len(r["seeds"])
    lines = [f"model {r['model']}; problems: {r['problems']} ({r['n_problems']}); seeds {r['seeds']}; "
             f"budget {budget}; n {r['n']}; overrides {r['set'] or 'none'}",
             "",
             "| strategy | runs | solved | " + " | ".join(f"rate@{k}" for k in ks) + " | time (s) |",
             "|---|---|---|" + "---|" * len(ks) + "---|"]
    for s, c in curves.items():
        solved = sum(d is not None for d in r["discovered_at"][s])
        lines.append(f"| {s} | {runs} | {solved} | " + " | ".join(f"{c[k - 1]:.2f}" for k in ks)
                     + f" | {r['seconds'][s]:.0f} |")
    lines.append("")
    if "best_of_k" in curves:
        target = curves["best_of_k"][-1]
        if target == 0:
            lines.append("ratio: undefined (best-of-k solved nothing within the budget)")
        else:
            k_bok = attempts_to_reach(curves["best_of_k"], target)
            for s in (x for x in curves if x != "best_of_k"):
                k = attempts_to_reach(curves[s], target)
                lines.append(f"{s}: reaches best-of-k's final rate {target:.2f} after "
                             + (f"{k} attempts (best-of-k: {k_bok}); ratio K_bok / K_{s} = {k_bok / k:.2f}"
                                if k else f"- (never within {budget}; best-of-k: {k_bok})"))
    return lines


def plot(r: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"sdpo": "-", "best_of_k": "--", "multiturn": ":"}
    for s, c in r["curves"].items():
        ax.step(range(1, len(c) + 1), c, where="post", label=s, linestyle=styles.get(s, "-."), linewidth=2)
    ax.set_xlabel("attempts")
    ax.set_ylabel("fraction of (problem, seed) runs solved")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"discovery ({r['n_problems']} problems x {len(r['seeds'])} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--problems", default=None)
    ap.add_argument("--max-problems", type=int, default=None)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--budget", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--strategies", default="sdpo,best_of_k,multiturn")
    ap.add_argument("--set", action="append", default=[], help="SolveConfig override key=value (repeatable)")
    ap.add_argument("--out", default="docs/discovery.png")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    r = run(args)
    for line in summarize(r):
        print(line)
    plot(r, args.out)
    print(f"plot: {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
