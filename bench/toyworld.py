"""Toy-world benchmarks: can SDPO's claims be seen at CPU scale?

Usage:
    python bench/toyworld.py [--model var/models/toy] [--parts discovery,training,gaps] [--seeds 0,1,2]
        [--data-dir DIR] [--out-dir docs] [--json FILE] [--quick] [size flags, see --help]

The data is the toy world's deterministic split (``sdpo.toy.generator.write_split`` with ``--data-seed``):
``train.jsonl`` (RL train bucket), ``test.jsonl`` (easy held-out problems) and ``hard.jsonl`` (held-out
compositions of depth 3-4 never seen in pretraining). Three parts, each printed as a table and plotted:

1. ``discovery``: test-time solving of the first ``--hard`` hard problems with ``sdpo``, ``best_of_k`` and
   ``multiturn`` (``bench/discovery.py``'s runner, one fresh model copy per run) for every seed. Per seed, the
   discovery curve is the fraction of problems solved within k attempts; the table gives the mean over seeds
   and its standard error. Ratio: best-of-k's final mean rate r is first reached by best-of-k after K_bok
   attempts and by sdpo after K_sdpo; ratio = K_bok / K_sdpo (the paper: ~3x).
2. ``training``: ``sdpo.trainer.train`` with ``loss=sdpo`` and ``loss=grpo`` on ``train.jsonl`` for every seed,
   validated on ``test.jsonl`` (val/avg@k, sparse reward). Step 0 is the base model's validation with the
   same seed. x axis: generations = steps x train_batch_size x n. Ratio: GRPO's final mean accuracy a is first
   reached by GRPO after G_grpo generations and by SDPO after G_sdpo; ratio = G_grpo / G_sdpo (the paper:
   ~4x). Also the mean training response length of each.
3. ``gaps``: for held-out problems (easy and hard), log p(y | context) summed over the response tokens, for
   y = the reference solution and y = a failed near-miss attempt, under the student context (the problem)
   and the two teacher contexts SDPO builds ("Correct solution: ..." and failing-test feedback), exactly as
   the trainer builds them. SDPO needs gap = log p(y | teacher) - log p(y | student) > 0 for the solution and
   < 0 for the wrong attempt. Also the greedy solve rate under each context (does the model *use* it?).

``--quick`` shrinks everything (for the smoke test on the tiny model; numbers are meaningless there).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, stdev
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("discovery", "training", "gaps")
STRATEGIES = ("sdpo", "best_of_k", "multiturn")
LOSSES = ("sdpo", "grpo")
CONTEXTS = ("student", "demo", "feedback")
SDPO_FRACTIONS = ("reprompt_sample_fraction", "success_sample_fraction", "feedback_used_fraction")


# ------------------------------------------------------------------------------------------- statistics


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean of the finite values (0 for a single value; nan for none)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return values[0], 0.0
    return mean(values), stdev(values) / math.sqrt(len(values))


def first_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first x whose y >= target (with a 1e-12 tolerance), or None."""
    return next((x for x, y in zip(xs, ys, strict=True) if y >= target - 1e-12), None)


def ratio_line(name: str, base: str, xs: list[float], curves: dict[str, list[float]], unit: str) -> str:
    """'name reaches base's final rate r after K (base: K_base); ratio K_base / K' (or why undefined)."""
    target = curves[base][-1]
    if target <= 0:
        return f"ratio {base}/{name}: undefined ({base} ends at 0)"
    k_base = first_reach(xs, curves[base], target)
    k = first_reach(xs, curves[name], target)
    if k is None:
        return (f"{name} never reaches {base}'s final rate {target:.3f} (within {xs[-1]:g} {unit}; "
                f"{base} first reaches it at {k_base:g})")
    if k == 0:
        return f"{name} already starts at {base}'s final rate {target:.3f}; ratio undefined"
    return (f"{name} reaches {base}'s final rate {target:.3f} after {k:g} {unit} ({base}: {k_base:g}); "
            f"ratio {k_base / k:.2f}x")


# --------------------------------------------------------------------------------------------------- data


def make_data(args) -> dict:
    """Write the split files (or reuse them) and regenerate the ToyProblem objects of the same split."""
    from sdpo.toy.generator import splits, write_split

    data_dir = Path(args.data_dir)
    paths = write_split(data_dir, n_train=args.train_problems, n_test=args.test_problems, seed=args.data_seed,
                        n_hard=max(args.hard, args.gap_problems))
    problems = splits(args.train_problems, args.test_problems, max(args.hard, args.gap_problems),
                      seed=args.data_seed)
    return {"paths": {k: str(v) for k, v in paths.items()}, "problems": problems}


# ------------------------------------------------------------------------------------------- 1. discovery


def part_discovery(args, data: dict) -> dict:
    """Discovery curves per seed via bench/discovery.py's runner; mean and SE over seeds."""
    sys.path.insert(0, str(ROOT / "bench"))
    import discovery  # bench/discovery.py

    seeds = [int(s) for s in args.seeds.split(",")]
    ns = SimpleNamespace(model=args.model, problems=data["paths"][args.disc_split], max_problems=args.hard,
                         seeds=args.seeds, budget=args.budget, n=args.n, strategies=",".join(STRATEGIES),
                         set=[f"max_new_tokens={args.max_new_tokens}", f"adapter={args.disc_adapter}",
                              f"lr={args.disc_lr:.12f}", *args.disc_set])
    r = discovery.run(ns)
    n_problems = r["n_problems"]
    per_seed: dict[str, list[list[float]]] = {}
    for s in STRATEGIES:
        found = r["discovered_at"][s]  # problem-major, then seed
        per_seed[s] = [discovery.curve([found[p * len(seeds) + j] for p in range(n_problems)], args.budget)
                       for j in range(len(seeds))]
    stats = {s: [mean_se([c[k] for c in per_seed[s]]) for k in range(args.budget)] for s in STRATEGIES}
    return {"split": args.disc_split, "n_problems": n_problems, "seeds": seeds, "budget": args.budget, "n": args.n, "set": ns.set,
            "discovered_at": r["discovered_at"], "seconds": r["seconds"], "per_seed": per_seed,
            "mean": {s: [m for m, _ in stats[s]] for s in STRATEGIES},
            "se": {s: [e for _, e in stats[s]] for s in STRATEGIES}}


def discovery_table(d: dict) -> list[str]:
    budget = d["budget"]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k < budget] + [budget]
    lines = [f"Discovery: {d['n_problems']} {d['split']} problems x seeds {d['seeds']}; budget {budget}, n {d['n']}; "
             f"overrides {' '.join(d['set'])}", "",
             "| strategy | " + " | ".join(f"solved@{k}" for k in ks) + " | time (s) |",
             "|---|" + "---|" * len(ks) + "---|"]
    for s in STRATEGIES:
        cells = [f"{d['mean'][s][k - 1]:.2f} ± {d['se'][s][k - 1]:.2f}" for k in ks]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {d['seconds'][s]:.0f} |")
    xs = list(range(1, budget + 1))
    lines += ["", "(mean ± standard error over seeds of the fraction of problems solved within k attempts)", ""]
    for s in ("sdpo", "multiturn"):
        lines.append(ratio_line(s, "best_of_k", xs, d["mean"], "attempts"))
    return lines


# ------------------------------------------------------------------------------------------- 2. training


def _base_validation(args, data: dict, seed: int) -> dict[str, float]:
    """Step-0 validation of the base model with the trainer's own ``validate`` (same seed formula)."""
    from sdpo.models import load_model_and_tokenizer
    from sdpo.rollout.hf import HFSampler
    from sdpo.trainer import TrainConfig, load_data, validate

    cfg = TrainConfig.from_dict(_train_dict(args, data, "grpo", seed, Path(args.run_dir) / "base"))
    _, val_tasks = load_data(cfg)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu")
    return validate(HFSampler(model, tokenizer, batch_size=cfg.sampler_batch_size), val_tasks, cfg, 0)


def _train_dict(args, data: dict, loss: str, seed: int, out_dir: Path) -> dict:
    from sdpo.config import apply_overrides

    base = {"model_path": args.model, "train_file": data["paths"]["train"], "test_file": data["paths"]["test"],
            "loss": loss, "seed": seed, "out_dir": str(out_dir), "adapter": "full", "lr": args.lr,
            "max_steps": args.steps, "train_batch_size": args.batch, "n": args.group,
            "max_new_tokens": args.max_new_tokens, "val_every": args.val_every, "val_k": args.val_k,
            "val_max_questions": args.test_problems, "val_temperature": 1.0, "val_top_p": 1.0,
            "micro_batch_size": 16, "sampler": "hf",
            "sampler_batch_size": 32, "device": "cpu", "dtype": "float32", "progress": False,
            "self_distillation": {"alpha": 1.0, "distillation_topk": 20}}
    return apply_overrides(base, args.train_set)


def part_training(args, data: dict) -> dict:
    """SDPO and GRPO runs per seed; val/avg@k against generations; mean and SE over seeds."""
    from sdpo.trainer import TrainConfig, train

    seeds = [int(s) for s in args.seeds.split(",")]
    key = f"val/avg@{args.val_k}"
    runs: dict[str, list[dict]] = {loss: [] for loss in LOSSES}
    base: list[float] = []
    seconds = {loss: 0.0 for loss in LOSSES}
    for seed in seeds:
        v0 = _base_validation(args, data, seed)
        base.append(v0[key])
        for loss in LOSSES:
            out_dir = Path(args.run_dir) / f"{loss}-seed{seed}"
            if (out_dir / "metrics.jsonl").exists():
                (out_dir / "metrics.jsonl").unlink()  # a fresh run (metrics.jsonl is appended to)
            cfg = TrainConfig.from_dict(_train_dict(args, data, loss, seed, out_dir))
            t0 = time.perf_counter()
            train(cfg)
            seconds[loss] += time.perf_counter() - t0
            rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
            val = [(r["step"], r[key]) for r in rows if key in r]
            runs[loss].append({
                "seed": seed, "steps": [0] + [s for s, _ in val], "val": [v0[key]] + [v for _, v in val],
                "length": mean(r["response/length_mean"] for r in rows),
                "reward": [r["reward/mean"] for r in rows],
                **{k: mean(r.get(f"sdpo/{k}", float("nan")) for r in rows) for k in SDPO_FRACTIONS},
            })
            print(f"  {loss:5s} seed {seed}: val {runs[loss][-1]['val']} "
                  f"len {runs[loss][-1]['length']:.1f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    steps = runs["sdpo"][0]["steps"]
    gens = [s * args.batch * args.group for s in steps]
    stats = {loss: [mean_se([r["val"][i] for r in runs[loss]]) for i in range(len(steps))] for loss in LOSSES}
    return {"seeds": seeds, "steps": steps, "generations": gens, "runs": runs, "seconds": seconds,
            "metric": key, "set": args.train_set,
            "mean": {loss: [m for m, _ in stats[loss]] for loss in LOSSES},
            "se": {loss: [e for _, e in stats[loss]] for loss in LOSSES},
            "length": {loss: mean_se([r["length"] for r in runs[loss]]) for loss in LOSSES},
            "fractions": {k: mean_se([r[k] for r in runs["sdpo"]]) for k in SDPO_FRACTIONS}}


def training_table(t: dict) -> list[str]:
    lines = [f"Training: seeds {t['seeds']}; {t['metric']} on the test split; overrides "
             f"{' '.join(t['set']) or 'none'}", "",
             "| loss | " + " | ".join(f"{g} gens" for g in t["generations"]) + " | mean response length | "
             "time (s) |", "|---|" + "---|" * len(t["generations"]) + "---|---|"]
    for loss in LOSSES:
        cells = [f"{m:.3f} ± {e:.3f}" for m, e in zip(t["mean"][loss], t["se"][loss], strict=True)]
        lm, le = t["length"][loss]
        lines.append(f"| {loss} | " + " | ".join(cells) + f" | {lm:.1f} ± {le:.1f} | {t['seconds'][loss]:.0f} |")
    lines += ["", "(mean ± standard error over seeds; step 0 is the base model)", "",
              ratio_line("sdpo", "grpo", t["generations"], t["mean"], "generations"),
              "SDPO teacher contexts per training sample (mean over steps and seeds): "
              + ", ".join(f"{k} {m:.2f}" for k, (m, _) in t["fractions"].items())]
    return lines


# ---------------------------------------------------------------------------------------------- 3. gaps


def _greedy(model, tokenizer, chats: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
    from sdpo.rollout.base import SamplingParams
    from sdpo.rollout.hf import HFSampler

    sampler = HFSampler(model, tokenizer, batch_size=32)
    return [r.text for r in sampler.generate(chats, 1, SamplingParams(max_new_tokens=max_new_tokens,
                                                                      temperature=0.0))]


def gaps_for(model, tokenizer, problems, *, seed: int, max_new_tokens: int) -> dict:
    """Per-problem log p of the solution / a failed near-miss under the three contexts, and greedy solve rates
    under each context (reusing ``sdpo.toy.measure``'s pieces)."""
    from sdpo.toy.corpus import CorpusExample, feedback_text, near_miss, teacher_messages
    from sdpo.toy.measure import response_logprobs, solved_many

    rng = random.Random(seed)
    rows = [(p, w) for p in problems if (w := near_miss(p, rng)) is not None]
    chats = {
        "student": [p.messages() for p, _ in rows],
        "demo": [teacher_messages(p, solution=p.solution()) for p, _ in rows],
        "feedback": [teacher_messages(p, feedback=feedback_text(p, w)) for p, w in rows],
    }
    logp: dict[str, dict[str, list[float]]] = {}
    for target in ("solution", "wrong"):
        logp[target] = {}
        for ctx in CONTEXTS:
            exs = [CorpusExample(ctx, chat, p.solution() if target == "solution" else w.response, p.id)
                   for chat, (p, w) in zip(chats[ctx], rows, strict=True)]
            logp[target][ctx] = response_logprobs(model, tokenizer, exs)
    solve = {}
    for ctx in CONTEXTS:
        texts = _greedy(model, tokenizer, chats[ctx], max_new_tokens)
        solve[ctx] = [float(x) for x in solved_many(texts, [p for p, _ in rows])]  # judged in the sandbox
    gap = {t: {c: [a - b for a, b in zip(logp[t][c], logp[t]["student"], strict=True)] for c in ("demo", "feedback")}
           for t in logp}
    return {"n": len(rows), "logp": {t: {c: mean_se(v) for c, v in d.items()} for t, d in logp.items()},
            "gap": {t: {c: mean_se(v) for c, v in d.items()} for t, d in gap.items()},
            "gap_positive": {t: {c: mean(x > 0 for x in v) if v else float("nan") for c, v in d.items()}
                             for t, d in gap.items()},
            "solve": {c: mean_se(v) for c, v in solve.items()}}


def part_gaps(args, data: dict) -> dict:
    import torch

    from sdpo.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu")
    model.eval()
    out = {}
    with torch.no_grad():
        for name in ("test", "hard"):
            probs = data["problems"][name][: args.gap_problems]
            out[name] = gaps_for(model, tokenizer, probs, seed=args.data_seed, max_new_tokens=args.max_new_tokens)
    return out


def gaps_table(g: dict) -> list[str]:
    lines = ["Teacher-vs-student log-prob gaps (nats per response, summed over its tokens; mean ± SE over problems)",
             "", "| problems | n | y | log p(y given problem) | gap demo (\"Correct solution:\") | "
             "gap feedback | share demo gap > 0 | share feedback gap > 0 |", "|---|---|---|---|---|---|---|---|"]
    for name, d in g.items():
        for t in ("solution", "wrong"):
            lp = d["logp"][t]["student"]
            gd, gf = d["gap"][t]["demo"], d["gap"][t]["feedback"]
            lines.append(f"| {name} | {d['n']} | {t} | {lp[0]:.2f} ± {lp[1]:.2f} | {gd[0]:+.2f} ± {gd[1]:.2f} | "
                         f"{gf[0]:+.2f} ± {gf[1]:.2f} | {d['gap_positive'][t]['demo']:.2f} | "
                         f"{d['gap_positive'][t]['feedback']:.2f} |")
    lines += ["", "Greedy solve rate under each context (does the model use the context?)", "",
              "| problems | problem only | problem + \"Correct solution:\" | problem + feedback |",
              "|---|---|---|---|"]
    for name, d in g.items():
        lines.append(f"| {name} | " + " | ".join(f"{d['solve'][c][0]:.2f} ± {d['solve'][c][1]:.2f}"
                                                  for c in CONTEXTS) + " |")
    return lines


# ---------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_discovery(d: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(1, d["budget"] + 1))
    for s, style in zip(STRATEGIES, ("-", "--", ":"), strict=True):
        m, e = d["mean"][s], d["se"][s]
        ax.step(xs, m, where="post", linestyle=style, linewidth=2, label=s)
        ax.fill_between(xs, [a - b for a, b in zip(m, e, strict=True)], [a + b for a, b in zip(m, e, strict=True)],
                        step="post", alpha=0.2)
    ax.set_xlabel("attempts")
    ax.set_ylabel(f"fraction of {d['split']} problems solved")
    ax.set_title(f"toy world: discovery ({d['n_problems']} problems, {len(d['seeds'])} seeds, ± SE)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(t: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for loss, style in zip(LOSSES, ("-", "--"), strict=True):
        m, e = t["mean"][loss], t["se"][loss]
        ax.errorbar(t["generations"], m, yerr=e, linestyle=style, marker="o", capsize=3, linewidth=2,
                    label=f"{loss} (mean length {t['length'][loss][0]:.0f} tok)")
    ax.set_xlabel("generations (rollouts sampled for training)")
    ax.set_ylabel(t["metric"] + " (test split)")
    ax.set_title(f"toy world: training ({len(t['seeds'])} seeds, ± SE)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gaps(g: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    labels = [f"{n}\n{t}" for n in g for t in ("solution", "wrong")]
    xs = range(len(labels))
    for ax, ctx, title in ((axes[0], "demo", "problem + \"Correct solution:\""),
                           (axes[1], "feedback", "problem + feedback")):
        vals = [g[n]["gap"][t][ctx] for n in g for t in ("solution", "wrong")]
        ax.bar(xs, [v[0] for v in vals], yerr=[v[1] for v in vals], capsize=4,
               color=["tab:green" if "solution" in lab else "tab:red" for lab in labels])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(list(xs), labels)
        ax.set_title(title)
        ax.set_ylabel("log p(y | teacher) - log p(y | problem)  [nats]")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("toy world: teacher-vs-student gaps (SDPO needs green > 0, red < 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF checkpoint (default: var/models/toy)")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the toy split (write_split)")
    ap.add_argument("--data-dir", default=None, help="where the split is written (default: a temp dir)")
    ap.add_argument("--run-dir", default=None, help="training run directories (default: a temp dir)")
    ap.add_argument("--out-dir", default="docs", help="where the PNG plots go")
    ap.add_argument("--prefix", default="toyworld", help="plot file names: PREFIX-{discovery,training,gaps}.png")
    ap.add_argument("--json", default=None, help="write all raw results here")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    g = ap.add_argument_group("discovery")
    g.add_argument("--hard", type=int, default=6, help="problems to solve (the first of the split)")
    g.add_argument("--disc-split", default="hard", choices=("hard", "test"),
                   help="hard: held-out compositions (depth 3-4, never trained on); test: easy held-out problems")
    g.add_argument("--disc-adapter", default="full", choices=("full", "lora"))
    g.add_argument("--disc-lr", type=float, default=1e-4)
    g.add_argument("--budget", type=int, default=16)
    g.add_argument("--n", type=int, default=4, help="attempts per round (sdpo / best_of_k)")
    g.add_argument("--disc-set", action="append", default=[], help="SolveConfig override key=value")
    g = ap.add_argument_group("training")
    g.add_argument("--train-problems", type=int, default=256)
    g.add_argument("--test-problems", type=int, default=32)
    g.add_argument("--steps", type=int, default=6)
    g.add_argument("--batch", type=int, default=8, help="questions per step")
    g.add_argument("--group", type=int, default=4, help="rollouts per question")
    g.add_argument("--val-every", type=int, default=2)
    g.add_argument("--val-k", type=int, default=4)
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--train-set", action="append", default=[], help="TrainConfig override key=value")
    g = ap.add_argument_group("gaps")
    g.add_argument("--gap-problems", type=int, default=32)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = "0,1" if args.seeds == "0,1,2" else args.seeds
        args.hard, args.budget, args.n, args.max_new_tokens = 1, 4, 2, 24
        args.train_problems, args.test_problems, args.steps, args.batch, args.group = 4, 2, 2, 2, 2
        args.val_every, args.val_k, args.gap_problems = 1, 2, 2
    for name in ("hard", "budget", "n", "max_new_tokens", "train_problems", "test_problems", "steps", "batch",
                 "group", "val_k", "gap_problems"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: got {getattr(args, name)}; must be >= 1")
    bad = set(args.parts.split(",")) - set(PARTS)
    if bad:
        ap.error(f"--parts: unknown {sorted(bad)}; allowed values are {list(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    import torch

    from sdpo.models import default_model_path

    args = parse_args(argv)
    torch.set_num_threads(1)
    args.model = args.model or str(default_model_path())
    tmp = Path(tempfile.mkdtemp(prefix="toyworld-"))
    args.data_dir = args.data_dir or str(tmp / "data")
    args.run_dir = args.run_dir or str(tmp / "runs")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = make_data(args)
    parts = args.parts.split(",")
    results: dict = {"model": args.model, "args": {k: v for k, v in vars(args).items()}, "data": data["paths"]}
    print(f"model {args.model}; data {args.data_dir} (seed {args.data_seed}); seeds {args.seeds}", flush=True)
    for part, run, table, plot in (("gaps", part_gaps, gaps_table, plot_gaps),
                                   ("discovery", part_discovery, discovery_table, plot_discovery),
                                   ("training", part_training, training_table, plot_training)):
        if part not in parts:
            continue
        t0 = time.perf_counter()
        res = run(args, data)
        wall = time.perf_counter() - t0
        results[part] = res
        results.setdefault("wall_s", {})[part] = round(wall, 1)
        print("\n" + "\n".join(table(res)) + f"\n({part}: {wall:.0f} s wall)", flush=True)
        path = out_dir / f"{args.prefix}-{part}.png"
        plot(res, path)
        print(f"plot: {path}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
