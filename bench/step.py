"""Cost of an SDPO training step relative to a GRPO step on the same batch.

The SDPO update adds one no-grad teacher forward to GRPO's forward + backward (floor ~1.33x for the update
part); with sampling included the ratio approaches 1. Also times the fused LM-head variant
(``fused_lm_head=True``: the loss never holds [B, T, V] logits).

    python bench/step.py            # tiny model + a ~100M-parameter random Qwen2 model
    python bench/step.py --quick    # tiny model only, small batch (smoke)
    python bench/step.py --variants grpo,sdpo_fused   # only the fused rows (GRPO is the reference)

Medians of alternating repetitions; prints ratios, not absolute claims.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdpo.config import SelfDistillationConfig  # noqa: E402
from sdpo.models import load_model_and_tokenizer  # noqa: E402
from sdpo.rollout.base import SamplingParams  # noqa: E402
from sdpo.rollout.hf import HFSampler  # noqa: E402
from sdpo.teacher import make_teacher  # noqa: E402
from sdpo.tiny import make_tiny_model  # noqa: E402
from sdpo.update import ScoredBatch, UpdateConfig, make_optimizer, policy_update  # noqa: E402

PROMPTS = [[{"role": "user", "content": f"Write a program that prints the {i}-th prime number."}] for i in range(4)]


def build_model(kind: str, root: Path) -> Path:
    if kind == "tiny":
        return make_tiny_model(root / "tiny", seed=0)
    # ~100M parameters: hidden 768, 12 layers, the tiny tokenizer's 2k vocabulary scaled up is not needed
    return make_tiny_model(root / "m100", seed=0, hidden_size=768, num_layers=12)


VARIANTS = ("grpo", "sdpo", "sdpo_fused")


def variants(args) -> dict[str, UpdateConfig]:
    sd = SelfDistillationConfig(distillation_topk=20, alpha=1.0, is_clip=2.0, teacher_regularization="ema",
                                teacher_update_rate=0.01)
    common = dict(lr=1e-6, self_distillation=sd, micro_batch_size=args.micro, rollout_correction_threshold=2.0)
    cfgs = {
        "grpo": UpdateConfig(loss="grpo", **common),
        "sdpo": UpdateConfig(loss="sdpo", **common),
        "sdpo_fused": UpdateConfig(loss="sdpo", fused_lm_head=True, **common),
    }
    return {name: cfgs[name] for name in VARIANTS if name in args.variants}


def one_step(model, tok, teacher, opt, cfg, batch, sample: bool, sampler, params) -> float:
    t0 = time.perf_counter()
    if sample:
        sampler.generate([p for p in PROMPTS[: args_global.questions]], args_global.n, params)
    policy_update(model, opt, teacher, tok, batch, cfg)
    if teacher is not None:
        teacher.update(model)
    return time.perf_counter() - t0


def bench_model(path: Path, args) -> list[tuple[str, str, float, float]]:
    model, tok = load_model_and_tokenizer(path)
    n_params = sum(p.numel() for p in model.parameters())
    sampler = HFSampler(model, tok, batch_size=args.questions * args.n)
    params = SamplingParams(max_new_tokens=args.tokens, temperature=1.0, seed=0)
    rollouts = sampler.generate(PROMPTS[: args.questions], args.n, params)
    # every rollout gets feedback (rich-feedback setting): all samples are distilled
    batch = ScoredBatch([PROMPTS[r.prompt_index] for r in rollouts], rollouts,
                        [1.0 if i % 4 == 0 else 0.0 for i in range(len(rollouts))],
                        ["Wrong answer on input 3: expected 5, got 7."] * len(rollouts),
                        [r.prompt_index for r in rollouts])
    cfgs = variants(args)
    states = {}
    for name, cfg in cfgs.items():
        m = copy.deepcopy(model)
        teacher = make_teacher(cfg.self_distillation, m) if cfg.loss != "grpo" else None
        opt, _ = make_optimizer(m, cfg)
        states[name] = (m, teacher, opt, HFSampler(m, tok, batch_size=args.questions * args.n))
    rows = []
    for sample in (False, True):
        times = {name: [] for name in cfgs}
        for rep in range(args.reps + 1):
            for name, cfg in cfgs.items():  # alternate variants within each repetition
                m, teacher, opt, smp = states[name]
                t = one_step(m, tok, teacher, opt, cfg, batch, sample, smp, params)
                if rep > 0:  # first repetition is warm-up
                    times[name].append(t)
        base = statistics.median(times["grpo"])
        label = "incl. sampling" if sample else "update only"
        for name in (n for n in cfgs if n != "grpo"):
            rows.append((f"{path.name} ({n_params / 1e6:.1f}M)", f"{name}/grpo [{label}]",
                         statistics.median(times[name]) / base, base))
    return rows


def main(argv=None) -> None:
    global args_global
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model only, small batch")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--n", type=int, default=4, help="rollouts per question")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens per rollout")
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="tiny,m100", help="comma-separated: tiny (2M), m100 (~80M random Qwen2)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated subset of grpo,sdpo,sdpo_fused (grpo, the reference, is always run)")
    args = ap.parse_args(argv)
    args.variants = {"grpo"} | set(args.variants.split(","))
    unknown = args.variants - set(VARIANTS)
    if unknown:
        ap.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.quick:
        args.questions, args.n, args.tokens, args.reps = 2, 2, 16, 1
    args_global = args
    torch.manual_seed(0)
    kinds = ["tiny"] if args.quick else args.models.split(",")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.questions}x{args.n} "
          f"rollouts, <= {args.tokens} new tokens, micro-batch {args.micro}, median of {args.reps} reps")
    print(f"{'model':<18} {'ratio':<36} {'value':>7} {'grpo step s':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            for model, name, ratio, base in bench_model(build_model(kind, Path(tmp)), args):
                print(f"{model:<18} {name:<36} {ratio:>7.3f} {base:>12.3f}")


args_global = None

if __name__ == "__main__":
    main()
