"""The SDPO family side by side on the toy world: SDPO, GRPO, hybrid, SRPO, SC-SDPO and SDPG trained on the same
problems at equal generations.

Usage:
    python bench/family.py [--model var/models/toy] [--methods sdpo,grpo,hybrid,srpo,sc_sdpo,sdpg]
        [--seeds 0,1,2] [--steps 6] [--batch 8] [--group 4] [--train-problems 128] [--test-problems 24]
        [--out docs/family.png] [--json FILE] [--quick] [--set KEY=VALUE ...]

Every method runs ``sdpo.trainer.train`` with the training part of ``bench/toyworld.py`` (its data split, its
run settings: full fine-tuning, lr 1e-4, top-k 20 + tail, alpha 1, validation at temperature 1 with val_k
samples per test problem) and only ``loss`` (plus the method's own settings below) changed, for every seed:
the same steps x questions x rollouts, hence the same generations. Step 0 is the base model's validation with
the run's seed. Reported per method: mean ± standard error over seeds of val/avg@k after each validation and at
the end, and of the mean training response length.

Method settings: hybrid mixes the losses with weight 0.5 (TRL's distillation_weight); SRPO β = 1 (its paper's);
SC-SDPO has none; SDPG the paper's β_base = α = 1e-3 (URKL) with its warm-up / decay windows scaled from 50 / 350
of 400 steps to this run's step count. ``--set`` overrides apply to every method.

``--quick`` shrinks everything (the smoke test on the tiny model; the numbers are meaningless there).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import toyworld  # noqa: E402  (bench/toyworld.py: data split, run settings, statistics)

METHODS = ("sdpo", "grpo", "hybrid", "srpo", "sc_sdpo", "sdpg")
FAMILY_KEYS = {"srpo": ("srpo/route_sdpo_fraction", "srpo/entropy_weight_max"),
               "sc_sdpo": ("sc_sdpo/zero_weight_fraction", "sc_sdpo/pass_rate_mean"),
               "sdpg": ("sdpg/gate_fraction", "sdpg/ref_kl")}


def method_settings(method: str, steps: int) -> dict:
    """The settings of ``method`` on top of the shared run (see the module docstring)."""
    if method == "hybrid":
        return {"loss": "hybrid", "hybrid_weight": 0.5}
    if method == "srpo":
        return {"loss": "srpo", "srpo_entropy_beta": 1.0}
    if method == "sdpg":  # the paper's windows, 50 and 350 of 400 steps, scaled to this run
        return {"loss": "sdpg", "sdpg_beta": 1e-3, "kl_coef": 1e-3, "kl_estimator": "urkl",
                "sdpg_warmup_steps": max(1, round(steps * 50 / 400)), "sdpg_decay_steps": round(steps * 350 / 400)}
    return {"loss": method}


def run_method(args, data: dict, method: str, seed: int, base_val: float) -> dict:
    """One training run; its validation curve (step 0 = ``base_val``), mean response length and the method's
    own metrics averaged over its steps."""
    from sdpo.config import apply_overrides, deep_merge
    from sdpo.trainer import TrainConfig, train

    out_dir = Path(args.run_dir) / f"{method}-seed{seed}"
    if (out_dir / "metrics.jsonl").exists():
        (out_dir / "metrics.jsonl").unlink()  # a fresh run (metrics.jsonl is appended to)
    cfg = deep_merge(toyworld._train_dict(args, data, "sdpo", seed, out_dir), method_settings(method, args.steps))
    cfg = apply_overrides(cfg, args.train_set)  # --set wins over the method's settings too
    t0 = time.perf_counter()
    train(TrainConfig.from_dict(cfg))
    seconds = time.perf_counter() - t0
    key = f"val/avg@{args.val_k}"
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r[key]) for r in rows if key in r]
    return {"seed": seed, "steps": [0] + [s for s, _ in val], "val": [base_val] + [v for _, v in val],
            "length": mean(r["response/length_mean"] for r in rows), "reward": mean(r["reward/mean"] for r in rows),
            "seconds": seconds,
            "family": {k: mean(r.get(k, float("nan")) for r in rows) for k in FAMILY_KEYS.get(method, ())}}


def run(args, data: dict) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    key = f"val/avg@{args.val_k}"
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in seeds:
        base = toyworld._base_validation(args, data, seed)[key]
        for m in methods:
            r = run_method(args, data, m, seed, base)
            runs[m].append(r)
            print(f"  {m:8s} seed {seed}: val {[round(v, 3) for v in r['val']]} len {r['length']:.1f} "
                  f"({r['seconds']:.0f}s)", flush=True)
    steps = runs[methods[0]][0]["steps"]
    gens = [s * args.batch * args.group for s in steps]
    stats = {m: [toyworld.mean_se([r["val"][i] for r in runs[m]]) for i in range(len(steps))] for m in methods}
    return {"seeds": seeds, "methods": methods, "steps": steps, "generations": gens, "metric": key, "runs": runs,
            "mean": {m: [a for a, _ in stats[m]] for m in methods}, "se": {m: [e for _, e in stats[m]] for m in methods},
            "length": {m: toyworld.mean_se([r["length"] for r in runs[m]]) for m in methods},
            "seconds": {m: sum(r["seconds"] for r in runs[m]) for m in methods},
            "family": {m: {k: toyworld.mean_se([r["family"][k] for r in runs[m]]) for k in FAMILY_KEYS.get(m, ())}
                       for m in methods},
            "set": args.train_set}


def separated(a: tuple[float, float], b: tuple[float, float], z: float = 2.0) -> bool:
    """Whether two mean ± SE differ by more than ``z`` combined standard errors (and at all)."""
    gap = abs(a[0] - b[0])
    return gap > 0 and gap > z * math.sqrt(a[1] ** 2 + b[1] ** 2)


def verdict(res: dict) -> str:
    """What the final accuracies show: the pairs that differ by more than 2 combined SE, or that none do."""
    final = {m: (res["mean"][m][-1], res["se"][m][-1]) for m in res["methods"]}
    pairs = [(a, b) for i, a in enumerate(res["methods"]) for b in res["methods"][i + 1:]
             if separated(final[a], final[b])]
    if not pairs:
        return (f"No difference at this scale: no two methods' final {res['metric']} differ by more than 2 combined "
                f"standard errors over {len(res['seeds'])} seeds.")
    return "Differ by more than 2 combined SE: " + ", ".join(
        f"{a} {final[a][0]:.3f} vs {b} {final[b][0]:.3f}" for a, b in pairs)


def table(res: dict) -> list[str]:
    gens = res["generations"]
    lines = [f"Family: seeds {res['seeds']}; {res['metric']} on the test split; overrides "
             f"{' '.join(res['set']) or 'none'}", "",
             "| method | " + " | ".join(f"{g} gens" for g in gens) + " | mean response length | time (s) |",
             "|---|" + "---|" * len(gens) + "---|---|"]
    for m in res["methods"]:
        cells = [f"{a:.3f} ± {e:.3f}" for a, e in zip(res["mean"][m], res["se"][m], strict=True)]
        lm, le = res["length"][m]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {lm:.1f} ± {le:.1f} | {res['seconds'][m]:.0f} |")
    lines += ["", "(mean ± standard error over seeds; generations = steps x questions x rollouts, equal for every "
              "method; 0 gens is the base model)", "", verdict(res)]
    extra = [f"{m}: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in res["family"][m].items())
             for m in res["methods"] if res["family"].get(m)]
    if extra:
        lines += ["Method metrics (mean over steps and seeds): " + "; ".join(extra)]
    return lines


def plot(res: dict, path: Path) -> None:
    plt = toyworld._plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    styles = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))
    for m, style in zip(res["methods"], styles, strict=False):
        ax.errorbar(res["generations"], res["mean"][m], yerr=res["se"][m], linestyle=style, marker="o", capsize=3,
                    linewidth=2, label=m)
    ax.set_xlabel("generations (rollouts sampled for training)")
    ax.set_ylabel(res["metric"] + " (test split)")
    ax.set_title(f"toy world: the SDPO family ({len(res['seeds'])} seeds, ± SE)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=8)
    lengths = [res["length"][m] for m in res["methods"]]
    bx.bar(range(len(lengths)), [a for a, _ in lengths], yerr=[e for _, e in lengths], capsize=4)
    bx.set_xticks(range(len(lengths)), res["methods"], rotation=30)
    bx.set_ylabel("mean training response length (tokens)")
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF checkpoint (default: sdpo.models.default_model_path())")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--out", default="docs/family.png", help="the PNG")
    ap.add_argument("--json", default=None, help="write all raw results here")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--train-problems", type=int, default=128)
    ap.add_argument("--test-problems", type=int, default=24)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8, help="questions per step")
    ap.add_argument("--group", type=int, default=4, help="rollouts per question")
    ap.add_argument("--val-every", type=int, default=3)
    ap.add_argument("--val-k", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--set", dest="train_set", action="append", default=[], help="TrainConfig override key=value")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = "0,1" if args.seeds == "0,1,2" else args.seeds
        args.max_new_tokens, args.train_problems, args.test_problems = 16, 4, 2
        args.steps, args.batch, args.group, args.val_every, args.val_k = 2, 2, 2, 1, 2
    for name in ("max_new_tokens", "train_problems", "test_problems", "steps", "batch", "group", "val_k"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: got {getattr(args, name)}; must be >= 1")
    bad = set(args.methods.split(",")) - set(METHODS)
    if bad:
        ap.error(f"--methods: unknown {sorted(bad)}; allowed values are {list(METHODS)}")
    # toyworld's data and run settings read these
    args.hard, args.gap_problems = 1, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    import torch

    from sdpo.models import default_model_path

    args = parse_args(argv)
    torch.set_num_threads(1)
    args.model = args.model or str(default_model_path())
    tmp = Path(tempfile.mkdtemp(prefix="family-"))
    args.data_dir = args.data_dir or str(tmp / "data")
    args.run_dir = args.run_dir or str(tmp / "runs")
    data = toyworld.make_data(args)
    print(f"model {args.model}; data {args.data_dir} (seed {args.data_seed}); seeds {args.seeds}", flush=True)
    t0 = time.perf_counter()
    res = run(args, data)
    res["model"], res["wall_s"] = args.model, round(time.perf_counter() - t0, 1)
    print("\n" + "\n".join(table(res)) + f"\n({res['wall_s']:.0f} s wall)", flush=True)
    plot(res, Path(args.out))
    print(f"plot: {args.out}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
    return res


if __name__ == "__main__":
    main()
