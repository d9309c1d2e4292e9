"""The first click: time from Solve to the first attempt and to discovery, for every built-in example problem.

Usage:
    python bench/first_click.py [--model PATH] [--seeds 0,1,2] [--groups easy,classic,hard] [--limit N]
        [--strategy sdpo] [--budget B] [--n N] [--max-new-tokens T] [--set key=value ...] [--json FILE]

Each (example, seed) is one engine-level solve as a worker runs a Solve job: ``sdpo.ttt.solve_from_config``
(the model loaded inside the timed call, as a worker loads it per job) with the settings a Solve job on this
model gets when the user sets nothing but the strategy (``sdpo.sizing.fit_config``: for the demo model the
CPU-sized defaults, n 4, 384 new tokens, budget 16; every other ``SolveConfig`` setting its default; CPU, HF
sampler). --budget, --n, --max-new-tokens and --set override them. Times come from the engine's callbacks:

* first attempt: from the call to the first ``on_attempts`` (model load + the first round sampled and scored);
* discovery: from the call to the ``on_attempts`` holding the attempt that passes the public and hidden tests.

Prints one row per example: the median first-attempt time over the seeds, how many seeds discovered, the
median time and attempt of discovery over the seeds that discovered; then the totals. The very first run of
the process also pays the imports and the sandbox pool's start ("cold" line). No asserts: numbers only.
--model: default ``sdpo.models.default_model_path()`` (SDPO_MODEL, a built var/models/toy, else the committed
demo model). --limit: the first N examples of each group.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIXED = {"device": "cpu", "sampler": "hf"}
GROUPS = ("easy", "classic", "hard")


def group_of(problem: dict) -> str:
    meta = problem.get("meta") or {}
    return "classic" if meta.get("source") == "classic" else str(meta.get("difficulty"))


def discovered(a) -> bool:
    """The attempt passes every public test and every hidden test (when it was run on them)."""
    if not (a.total > 0 and a.passed == a.total):
        return False
    return a.hidden_total is None or a.hidden_passed == a.hidden_total


def run_once(problem: dict, cfg_dict: dict, model_path: str | None) -> dict:
    """One timed solve: seconds to the first attempt and to discovery (None: not discovered)."""
    from sdpo.callbacks import Callbacks
    from sdpo.data.problem import Problem
    from sdpo.ttt import SolveConfig, solve_from_config

    cfg = SolveConfig.from_dict(cfg_dict)
    p = Problem.parse(problem)
    marks: dict[str, float] = {}
    count = [0]

    def on_attempts(attempts):
        now = time.perf_counter()
        marks.setdefault("first", now)
        for a in attempts:
            count[0] += 1
            if "found" not in marks and discovered(a):
                marks["found"] = now
                marks["found_at"] = count[0]

    t0 = time.perf_counter()
    result = solve_from_config(p, cfg, Callbacks(on_attempts=on_attempts), model_path=model_path)
    end = time.perf_counter()
    return {"first_s": marks["first"] - t0 if "first" in marks else None,
            "discovery_s": marks["found"] - t0 if "found" in marks else None,
            "discovered_at": result.discovered_at, "attempts": result.attempts_used, "total_s": end - t0}


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def summarise(title: str, group: str, runs: list[dict]) -> dict:
    firsts = [r["first_s"] for r in runs if r["first_s"] is not None]
    found = [r for r in runs if r["discovery_s"] is not None]
    return {"title": title, "group": group, "runs": runs, "first_s": _median(firsts),
            "discovered": len(found), "n_runs": len(runs),
            "discovery_s": _median([r["discovery_s"] for r in found]),
            "discovered_at": _median([r["discovered_at"] for r in found])}


def table(rows: list[dict]) -> str:
    lines = ["| example | group | first attempt (s) | discovered | discovery (s) | at attempt |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['title']} | {r['group']} | {_fmt(r['first_s'])} | {r['discovered']}/{r['n_runs']} | "
                     f"{_fmt(r['discovery_s'])} | {_fmt(r['discovered_at'], 'g')} |")
    return "\n".join(lines)


def totals(rows: list[dict]) -> str:
    out = []
    for group in GROUPS + ("all",):
        sel = [r for r in rows if group in ("all", r["group"])]
        if not sel:
            continue
        runs = [x for r in sel for x in r["runs"]]
        found = [x["discovery_s"] for x in runs if x["discovery_s"] is not None]
        firsts = [x["first_s"] for x in runs if x["first_s"] is not None]
        solved = sum(1 for r in sel if r["discovered"])
        out.append(f"{group}: {solved}/{len(sel)} examples discovered at least once, {len(found)}/{len(runs)} "
                   f"runs; median first attempt {_fmt(_median(firsts))} s (max {_fmt(max(firsts, default=None))}), "
                   f"median discovery {_fmt(_median(found))} s (max {_fmt(max(found, default=None))})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--groups", default=",".join(GROUPS))
    ap.add_argument("--limit", type=int, default=None, help="The first N examples of each group.")
    ap.add_argument("--strategy", default="sdpo")
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="Other SolveConfig settings (YAML values, dotted keys nest).")
    ap.add_argument("--json", default=None, help="Write every run's times here.")
    args = ap.parse_args(argv)

    import yaml

    from sdpo.data.examples import example_problems
    from sdpo.models import default_model_path
    from sdpo.sizing import fit_config

    groups = [g for g in args.groups.split(",") if g]
    bad = sorted(set(groups) - set(GROUPS))
    if bad:
        ap.error(f"--groups: unknown {', '.join(bad)}; choose from {', '.join(GROUPS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cfg = {**FIXED, "strategy": args.strategy}
    for key in ("budget", "n", "max_new_tokens"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    for pair in args.set:
        key, sep, raw = pair.partition("=")
        if not sep:
            ap.error(f"--set {pair!r}: expected KEY=VALUE")
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    model = args.model or str(default_model_path())
    cfg = fit_config("solve", cfg, model_path=model)
    chosen = []
    for group in groups:
        members = [p for p in example_problems() if group_of(p) == group]
        chosen += members[: args.limit] if args.limit is not None else members
    print(f"model {model}; settings {json.dumps({k: v for k, v in cfg.items() if k not in ('device', 'sampler')})}; "
          f"seeds {seeds}; {len(chosen)} examples", flush=True)

    rows = []
    cold = None
    for problem in chosen:
        runs = []
        for seed in seeds:
            run = run_once(problem, {**cfg, "seed": seed}, model)
            cold = cold or run
            runs.append(run)
        rows.append(summarise(problem["title"], group_of(problem), runs))
        r = rows[-1]
        print(f"  {r['title']}: first {_fmt(r['first_s'])} s, discovered {r['discovered']}/{r['n_runs']}"
              f", discovery {_fmt(r['discovery_s'])} s", flush=True)
    print()
    print(table(rows))
    print()
    print(totals(rows))
    if cold is not None:
        print(f"cold (first run of the process, imports and sandbox start included): first attempt "
              f"{_fmt(cold['first_s'])} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "settings": cfg, "seeds": seeds, "rows": rows},
                                              indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
