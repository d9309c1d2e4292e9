"""Margins of the suite's learning tests: the quantities that tests/sdpo/test_trainer.py bounds (log-probs
learned by short optimisation runs, reward gains), measured over seeds, thread counts and CPU kernel sets.

Float results of an optimisation run differ between CPUs (and between torch's vectorised kernel sets on one
CPU, which stand in here for a second CPU kind: ``ATEN_CPU_CAPABILITY=default|avx2|avx512``), so a test may
only bound what holds with a wide margin on all of them. This prints, for each quantity, the range measured
and the bound the test asserts.

    .venv/bin/python bench/margins.py                       # 5 seeds x threads 1,2 x default/avx2/avx512
    .venv/bin/python bench/margins.py --seeds 2 --threads 1 --kernels default
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bounds() -> dict[str, tuple[float, bool]]:
    """quantity -> (the bound its test asserts, whether the test asserts value > bound (True) or < bound)."""
    sys.path.insert(0, str(ROOT))
    from tests.sdpo import test_trainer as T

    return {"teacher_logp": (T.TEACHER_LOGP_BOUND, True), "student_logp": (T.STUDENT_LOGP_BOUND, False),
            "demo_sdpo_gain": (T.DEMO_GAIN_BOUND, True), "demo_grpo_gain": (T.DEMO_GAIN_BOUND, True),
            "all_success_sdpo_gain": (T.ALL_SUCCESS_GAIN_BOUND, True),
            "grpo_reward_gain": (T.GRPO_REWARD_GAIN_BOUND, True)}


def measure(seeds: int) -> list[dict[str, float]]:
    """Run in a child with the thread count and kernel set already chosen."""
    sys.path.insert(0, str(ROOT))
    import torch

    from sdpo.tiny import make_tiny_model
    from tests.sdpo import test_trainer as T

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model(Path(tmp) / "model", seed=0)
        for seed in range(seeds):
            base, tok, teacher_logp, student_logp = T.make_copy_model(path, seed)
            sdpo_gain, grpo_gain, _, _ = T.demonstration_gains(base, tok, seed)
            all_sdpo, _ = T.all_success_gains(base, tok, seed)
            start, end = T.grpo_reward_gain(path, seed)
            rows.append({"seed": seed, "teacher_logp": teacher_logp, "student_logp": student_logp,
                         "demo_sdpo_gain": sdpo_gain, "demo_grpo_gain": grpo_gain,
                         "demo_sdpo_over_grpo": sdpo_gain / grpo_gain, "all_success_sdpo_gain": all_sdpo,
                         "grpo_reward_gain": end - start})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--kernels", default="default,avx2,avx512",
                    help="ATEN_CPU_CAPABILITY values (each must be supported by this CPU)")
    ap.add_argument("--rows", action="store_true", help="also print every run's values")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.seeds)))
        return

    results = []
    for kernels in args.kernels.split(","):
        for threads in args.threads.split(","):
            env = {**os.environ, "ATEN_CPU_CAPABILITY": kernels, "OMP_NUM_THREADS": threads}
            out = subprocess.run([sys.executable, __file__, "--child", "--seeds", str(args.seeds)], env=env,
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout
            for row in json.loads(out.strip().splitlines()[-1]):
                results.append({"kernels": kernels, "threads": threads, **row})
            print(f"measured kernels={kernels} threads={threads}", file=sys.stderr)

    if args.rows:
        for r in results:
            print(" ".join(f"{k}={v:+.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    print(f"{len(results)} runs ({args.seeds} seeds x threads {args.threads} x kernels {args.kernels})\n")
    print("| quantity | min | max | test asserts | margin |")
    print("| --- | ---: | ---: | --- | ---: |")
    BOUNDS = bounds()
    for name in [k for k in results[0] if k not in ("kernels", "threads", "seed")]:
        values = [r[name] for r in results]
        lo, hi = min(values), max(values)
        if name in BOUNDS:
            bound, above = BOUNDS[name]
            rule, margin = (f"> {bound}", lo - bound) if above else (f"< {bound}", bound - hi)
            print(f"| {name} | {lo:+.3f} | {hi:+.3f} | {rule} | {margin:+.3f} |")
        else:
            print(f"| {name} | {lo:+.3f} | {hi:+.3f} | (not asserted) | |")


if __name__ == "__main__":
    main()
