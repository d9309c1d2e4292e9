"""The verdict corpus (tests/sdpo/envs/sandbox_corpus.py) through a code runner: false negatives (correct
programs judged wrong) and false positives (wrong or hostile programs judged right).

    python bench/sandbox_reference.py --runner ours [--slots 3]
    python bench/sandbox_reference.py --runner reference --reference PATH/verl/utils/reward_score/feedback/code.py

``ours`` is this project's code environment and sandbox (strong isolation needs root). ``reference`` loads the
code-feedback runner that lasgroup/SDPO's reward function imports (``verl.utils.reward_score.feedback.code``,
``compute_score(solution, ground_truth, extra_info, sparse_rewards=True)``) from the given path, a checkout
kept outside this repository, and runs it as its reward function does. That runner is not a sandbox: run it
in throw-away namespaces, e.g. ``unshare -n -m -i -p -f --mount-proc sh -c 'mount -t tmpfs tmpfs /tmp &&
python bench/sandbox_reference.py --runner reference --reference ...'`` (docs/sandbox.md has the command used).

Our test types map onto the reference's: stdin -> "stdin", functional -> "functional" (one JSON argument per
line), assert -> "code" (the check code followed by ``check(<entry point>)``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--reference: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def reference_ground_truth(tests: dict) -> str:
    if tests["testtype"] == "assert":
        code = tests["assert_code"] + f"\ncheck({tests['fn_name']})\n"
        cases = {"inputs": [code], "outputs": [""], "testtype": "code", "fn_name": tests["fn_name"]}
    else:
        cases = {k: tests[k] for k in ("inputs", "outputs", "testtype")}
        cases["fn_name"] = tests.get("fn_name") or ""
    cases["time_limit"] = tests["time_limit"]
    return json.dumps(cases)


def judge_reference(path: Path, cases) -> list[bool]:
    ref = load_module("reference_feedback_code", path)
    passed = []
    for c in cases:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its own diagnostics
            out = ref.compute_score(c.response(), reference_ground_truth(c.tests), {"split": "train"},
                                    sparse_rewards=True, max_test_cases=None)
        passed.append(out["score"] == 1.0)
    return passed


def judge_ours(cases, slots: int) -> list[bool]:
    sys.path.insert(0, str(ROOT))
    from sdpo.envs.code import evaluate_many
    from sdpo_sandbox import SandboxConfig, SandboxPool

    with SandboxPool(SandboxConfig(slots=slots)) as pool:
        results = evaluate_many([c.response() for c in cases], [c.tests for c in cases], sandbox=pool)
    return [r.reward == 1.0 for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runner", choices=("ours", "reference"), required=True)
    ap.add_argument("--reference", type=Path, help="path of lasgroup/SDPO's verl/utils/reward_score/feedback/code.py")
    ap.add_argument("--slots", type=int, default=3, help="ours: sandbox slots")
    ap.add_argument("--corpus", type=Path, default=ROOT / "tests" / "sdpo" / "envs" / "sandbox_corpus.py")
    args = ap.parse_args()
    if args.runner == "reference" and (args.reference is None or not args.reference.is_file()):
        ap.error("--reference: the path of the reference's feedback/code.py is required")
    corpus = load_module("sandbox_corpus", args.corpus)
    cases = corpus.CORRECT + corpus.WRONG
    t0 = time.monotonic()
    passed = judge_ours(cases, args.slots) if args.runner == "ours" else judge_reference(args.reference, cases)
    seconds = time.monotonic() - t0
    n = len(corpus.CORRECT)
    fn = [c.name for c, ok in zip(corpus.CORRECT, passed[:n], strict=True) if not ok]
    fp = [c.name for c, ok in zip(corpus.WRONG, passed[n:], strict=True) if ok]
    print(f"false negatives ({len(fn)}): {', '.join(fn)}")
    print(f"false positives ({len(fp)}): {', '.join(fp)}")
    print(f"runner {args.runner}: {len(corpus.CORRECT)} correct, {len(corpus.WRONG)} wrong or hostile programs; "
          f"false negatives {len(fn)}, false positives {len(fp)} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
