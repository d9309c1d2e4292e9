"""Data parallelism (sdpo.distributed) on CPU with gloo and 2 processes launched by torchrun.

- policy_update on a global batch split across 2 ranks (whole groups per rank, unequal sizes, one rank fully
  masked for SDPO) takes the same optimizer step and reports the same loss as one process holding the whole
  batch, in every loss (the family's included) / aggregation mode, with mini-batches and PPO epochs; the EMA and
  trust-region teachers stay identical across ranks and equal to the one-process teacher.
- train() under torchrun completes, rank 0 alone writes metrics.jsonl, and a 2-rank checkpoint resumes on
  2 ranks reproducing the uninterrupted run.

This file is also the per-rank program: ``torchrun ... -m tests.sdpo.test_distributed update|train ...``
(``tests/sdpo/two_ranks.py``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from sdpo.config import SelfDistillationConfig
from sdpo.distributed import SINGLE, DistContext, resolve_strategy, shard_bounds
from tests.sdpo.two_ranks import rank_train, run_rank_program, torchrun

MODULE = "tests.sdpo.test_distributed"  # the ranks' program (two_ranks.torchrun)
P1 = [{"role": "user", "content": "Print hello."}]
P2 = [{"role": "user", "content": "Print 2."}]
P3 = [{"role": "user", "content": "Say something."}]
# (prompt, response, reward, feedback) per group; G2 has neither a success nor feedback, so under SDPO every one
# of its samples is masked out (a rank holding only G2 distils nothing but must not skip collectives)
G0 = [(P1, "```python\nprint('hello')\n```", 1.0, None), (P1, "x = 1", 0.0, "Wrong answer"),
      (P1, "print('a b c d e f g h i j k l')", 0.0, None)]
G1 = [(P2, "no", 0.0, "Runtime error"), (P2, "```python\nprint(2)\n```", 1.0, None),
      (P2, "while True: pass", 0.0, None)]
G2 = [(P3, "a", 0.0, None), (P3, "bb", 0.0, None), (P3, "c c c", 0.0, None)]
G3 = [(P3, "print(3)", 0.0, "Wrong answer: expected 4"), (P3, "4", 1.0, None)]
# contiguous blocks of whole groups: "masked-rank" = rank 0 [G0, G1] (6 samples), rank 1 [G2] (3, all masked);
# "mixed" = rank 0 [G0, G2] (6), rank 1 [G1, G3] (5): both ranks distil, so global normalisation matters
LAYOUTS = {"masked-rank": [G0, G1, G2], "mixed": [G0, G2, G1, G3]}
CASES = {
    "sdpo-token-mean-ema": dict(loss="sdpo", micro_batch_size=2, agg="token-mean", teacher="ema",
                                layout="masked-rank"),
    "sdpo-token-mean-mixed": dict(loss="sdpo", micro_batch_size=2, agg="token-mean"),
    "sdpo-trust-region": dict(loss="sdpo", micro_batch_size=3, agg="seq-mean-token-mean", teacher="trust-region"),
    # 11 samples in mini-batches of 2: each epoch ends with a 1-sample mini-batch, so one rank has no rows there
    "sdpo-seq-mean-token-mean-mini": dict(loss="sdpo", micro_batch_size=1, mini_batch_size=2, ppo_epochs=2,
                                          agg="seq-mean-token-mean"),
    "grpo-token-mean": dict(loss="grpo", micro_batch_size=2, agg="token-mean"),
    # the reference's weighting: every sequence of the mini-batch counts, the masked rank's as zero
    "sdpo-token-mean-all": dict(loss="sdpo", micro_batch_size=1, agg="seq-mean-token-mean-all",
                                layout="masked-rank"),
    "hybrid-token-sum-norm": dict(loss="hybrid", micro_batch_size=3, agg="seq-mean-token-sum-norm"),
    "hybrid-token-sum-clip": dict(loss="hybrid", micro_batch_size=2, agg="seq-mean-token-sum", is_clip=2.0,
                                  rollout_correction_threshold=2.0),
    # the family: SRPO's entropy weights and SC-SDPO's pass-rate weights are normalised over both ranks' samples
    "srpo-token-mean": dict(loss="srpo", micro_batch_size=2, agg="token-mean", is_clip=2.0),
    "sc_sdpo-seq-mean-token-mean": dict(loss="sc_sdpo", micro_batch_size=2, agg="seq-mean-token-mean"),
    "srpo-mini": dict(loss="srpo", micro_batch_size=1, mini_batch_size=3, ppo_epochs=2, agg="seq-mean-token-mean-all"),
    "sc_sdpo-mini": dict(loss="sc_sdpo", micro_batch_size=1, mini_batch_size=3, ppo_epochs=2, agg="token-mean",
                         is_clip=2.0),
    "sdpg-mini": dict(loss="sdpg", micro_batch_size=1, mini_batch_size=4, ppo_epochs=2, agg="token-mean",
                      sdpg_beta=0.5, kl_coef=0.1),
    "sdpo-base-kl": dict(loss="sdpo", micro_batch_size=2, agg="token-mean", teacher="base", kl_coef=0.2),
}


# ------------------------------------------------------------------------------------------ pure pieces


def test_shard_bounds_cover_every_item_once():
    for n in range(0, 9):
        for world in range(1, 5):
            blocks = [shard_bounds(n, r, world) for r in range(world)]
            assert [i for s, e in blocks for i in range(s, e)] == list(range(n))
            assert max(e - s for s, e in blocks) - min(e - s for s, e in blocks) <= 1


def test_strategy_resolution():
    assert resolve_strategy("none", 1) == "none"
    assert resolve_strategy("ddp", 1) == "none"  # one process: nothing to distribute
    assert resolve_strategy("none", 4) == "ddp"  # torchrun without a config change
    assert resolve_strategy("fsdp", 2) == "fsdp"
    from sdpo.config import ConfigError

    with pytest.raises(ConfigError, match="^distributed: got 'zero'"):
        resolve_strategy("zero", 2)
    assert SINGLE.all_reduce([1.0, 2.0]).tolist() == [1.0, 2.0] and SINGLE.max_divergence([torch.ones(2)]) == 0


def test_world_dependent_settings_are_checked(tmp_path):
    from sdpo.config import ConfigError
    from sdpo.trainer import TrainConfig, check_world

    data = tmp_path / "t.jsonl"
    data.write_text('{"prompt": "p", "kind": "mcq", "answer": "A"}\n')
    cfg = TrainConfig(train_file=str(data), train_batch_size=2, sampler="vllm")
    assert check_world(cfg, SINGLE) == "vllm"  # one process: the config's sampler
    two, four = DistContext(rank=1, world_size=2, strategy="ddp"), DistContext(world_size=4, strategy="ddp")
    with pytest.raises(ConfigError, match="^sampler: got 'vllm' in a multi-process"):
        check_world(cfg, two)
    assert check_world(TrainConfig(train_file=str(data), train_batch_size=2), two) == "hf"  # auto -> hf
    with pytest.raises(ConfigError, match=r"^train_batch_size: got 2; must be >= the number of processes \(4\)"):
        check_world(TrainConfig(train_file=str(data), train_batch_size=2), four)
    fsdp = TrainConfig(train_file=str(data), train_batch_size=2, distributed="fsdp")  # CPU (gloo) too
    assert check_world(fsdp, DistContext(world_size=2, strategy="fsdp")) == "hf"


# ----------------------------------------------------------------------------- the per-rank programs


def _batch(tok, groups):
    from sdpo.models import chat_ids
    from sdpo.rollout.base import Rollout
    from sdpo.update import ScoredBatch

    prompts, rollouts, rewards, feedback, gids = [], [], [], [], []
    for gi, group in enumerate(groups):
        for prompt, text, reward, fb in group:
            p = chat_ids(tok, prompt)
            r = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rollouts.append(Rollout(prompt_ids=p, response_ids=r, text=text, logprobs=[-0.5] * len(r),
                                    truncated=False, prompt_index=gi))
            prompts.append(prompt)
            rewards.append(reward)
            feedback.append(fb)
            gids.append(gi)
    return ScoredBatch(prompts, rollouts, rewards, feedback, gids)


def _run_case(model, tok, name: str, dist: DistContext) -> dict:
    """One policy_update (+ teacher update) with SGD(lr=1) on a float64 copy: the step is minus the gradient.
    With ``dist`` enabled the batch is this rank's block of the case's groups, else all of them."""
    from sdpo.distributed import shard
    from sdpo.teacher import make_reference, make_teacher
    from sdpo.update import UpdateConfig, policy_update

    case = dict(CASES[name])
    groups = shard(LAYOUTS[case.pop("layout", "mixed")], dist)
    sd = SelfDistillationConfig(distillation_topk=10, alpha=0.5, is_clip=case.pop("is_clip", None),
                                loss_agg_mode=case.pop("agg"), teacher_regularization=case.pop("teacher", "live"),
                                teacher_update_rate=0.3)
    cfg = UpdateConfig(**{"self_distillation": sd, "max_grad_norm": 1e9, "rollout_correction_threshold": None,
                          **case})
    m = copy.deepcopy(model)
    before = [p.detach().clone() for p in m.parameters()]
    teacher = make_teacher(sd, m) if cfg.loss != "grpo" else None
    reference = make_reference(m, teacher) if cfg.kl_coef else None
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    metrics = policy_update(m, opt, teacher, tok, _batch(tok, groups), cfg, seed=5, dist=dist, reference=reference)
    if teacher is not None:
        teacher.update(m)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), before, strict=True)])
    t_state = [v for v in _tensors(teacher.state_dict())] if teacher is not None else []
    return {"delta": delta, "metrics": metrics, "teacher": t_state,
            "divergence": dist.max_divergence([delta, *t_state])}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj.detach().double().cpu()
    elif isinstance(obj, dict):
        for k in sorted(obj):
            yield from _tensors(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _rank_update(model_path: str, out: str) -> None:
    from sdpo.distributed import init_from_env, shutdown
    from sdpo.models import load_model_and_tokenizer

    torch.set_num_threads(1)
    dist = init_from_env("ddp")
    model, tok = load_model_and_tokenizer(model_path)
    model = model.double()
    results = {name: _run_case(model, tok, name, dist) for name in CASES}
    torch.save(results, Path(out) / f"rank{dist.rank}.pt")
    shutdown(dist)


# -------------------------------------------------------------------------------------- 2-rank tests


@pytest.mark.slow
def test_two_ranks_take_the_one_process_step(tiny_model_path, tmp_path):
    """Unequal ranks (one fully masked under SDPO, fewer micro-batches) do not hang, and the weights, loss,
    grad norm and EMA teacher equal the one-process run on the whole batch, in every loss / aggregation mode."""
    from sdpo.models import load_model_and_tokenizer

    torchrun(MODULE, ["update", str(tiny_model_path), str(tmp_path)], timeout=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model = model.double()
    for name in CASES:
        ref = _run_case(model, tok, name, SINGLE)
        scale = float(ref["delta"].abs().max())
        assert scale > 0, name
        for r in ranks:
            got = r[name]
            assert got["divergence"] == 0.0, name  # replicas (student and teacher) are bit-identical
            torch.testing.assert_close(got["delta"], ref["delta"], rtol=1e-5, atol=1e-6 * scale, msg=name)
            for k in ("loss", "grad_norm"):
                assert got["metrics"][k] == pytest.approx(ref["metrics"][k], rel=1e-6, abs=1e-9), (name, k)
            assert got["metrics"].keys() == ref["metrics"].keys(), name
            assert len(got["teacher"]) == len(ref["teacher"])
            for a, b in zip(got["teacher"], ref["teacher"], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=name)
        if "ema" in name:
            assert ref["teacher"], name  # the EMA case really compared teacher weights


TASKS = [
    {"prompt": "Read an integer n and print n*2.", "kind": "code",
     "tests": json.dumps({"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"], "testtype": "stdin"})},
    {"prompt": "Which letter comes first?\nA: a\nB: b", "kind": "mcq", "answer": "A"},
    {"prompt": "Which number is larger?\nA: 3\nB: 7", "kind": "mcq", "answer": "B"},
]


def _metrics(path: Path) -> tuple[list[int], dict[int, dict]]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows], {r["step"]: {k: v for k, v in r.items() if not k.startswith("perf/")}
                                        for r in rows}


@pytest.mark.slow
def test_train_on_two_ranks_writes_once_and_resumes_on_two_ranks(tiny_model_path, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    base = dict(model_path=str(tiny_model_path), train_file=str(data), test_file=str(data), train_batch_size=3,
                n=2, max_new_tokens=8, micro_batch_size=2, val_k=1, lr=1e-3, progress=False, seed=3,
                max_steps=3, save_every=2, adapter="lora",
                self_distillation={"distillation_topk": 10, "teacher_update_rate": 0.2})
    torchrun(MODULE, ["train", json.dumps({**base, "out_dir": str(tmp_path / "a")})], timeout=300)
    steps, a = _metrics(tmp_path / "a")
    assert steps == [1, 2, 3]  # one metrics file, one row per step (rank 0 alone writes)
    assert a[3]["reward/mean"] >= 0.0 and "val/avg@1" in a[3] and a[3]["loss"] == a[3]["loss"]
    state = torch.load(tmp_path / "a/checkpoints/step_2/trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and state["position"] == 6 and len(state["rng_ranks"]) == 2
    assert sorted(p.name for p in (tmp_path / "a/checkpoints").iterdir()) == ["step_2", "step_3"]
    # resumed from step 2 on 2 ranks, in a new run directory: step 3 reproduces the uninterrupted run
    resume = {**base, "out_dir": str(tmp_path / "b"), "resume_from": str(tmp_path / "a/checkpoints/step_2")}
    torchrun(MODULE, ["train", json.dumps(resume)], timeout=300)
    steps_b, b = _metrics(tmp_path / "b")
    assert steps_b == [3]
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        assert a[3][k] == pytest.approx(b[3][k], rel=1e-5, abs=1e-7), k


if __name__ == "__main__":  # a rank of a torchrun launch (see the tests above)
    run_rank_program({"update": _rank_update, "train": rank_train})
