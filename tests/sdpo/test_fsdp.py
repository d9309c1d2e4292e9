"""FSDP2 (``distributed: fsdp``, sdpo.distributed.apply_fsdp) on CPU with gloo and 2 processes (torchrun).

- policy_update on a global batch split across 2 sharded ranks (one rank fully masked under SDPO, with fewer
  micro-batches) finishes and takes the one-process step: weights, loss, grad norm and the EMA / trust-region
  teacher equal the one-process run on the whole batch.
- train() under fsdp (LoRA + EMA teacher; full model + trust-region teacher): HF generate stays in step across
  ranks, checkpoints hold full tensors in the one-process layout, a 2-rank checkpoint resumes on 2 ranks and
  reproduces the uninterrupted run, loads in one process, and a one-process checkpoint resumes on 2 fsdp ranks.

This file is also the per-rank program: ``torchrun ... -m tests.sdpo.test_fsdp update|generate|train ...``
(``tests/sdpo/two_ranks.py``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from sdpo.config import ConfigError, SelfDistillationConfig
from sdpo.distributed import SINGLE, DistContext
from tests.sdpo.test_distributed import CASES, LAYOUTS, TASKS, _batch, _metrics, _run_case, _tensors
from tests.sdpo.two_ranks import rank_train, run_rank_program, torchrun

MODULE = "tests.sdpo.test_fsdp"  # the ranks' program (two_ranks.torchrun)
FSDP_CASES = ("sdpo-token-mean-ema", "sdpo-trust-region", "hybrid-token-sum-norm")


# ------------------------------------------------------------------------------------------ config rules


def test_fsdp_is_accepted_on_cpu_and_distributed_has_one_spelling(tmp_path):
    from sdpo.trainer import TrainConfig, check_world

    data = tmp_path / "t.jsonl"
    data.write_text('{"prompt": "p", "kind": "mcq", "answer": "A"}\n')
    cfg = TrainConfig.from_dict({"train_file": str(data), "train_batch_size": 2, "distributed": "fsdp"})
    assert cfg.distributed == "fsdp" and "strategy" not in cfg.to_dict()
    assert check_world(cfg, DistContext(rank=1, world_size=2, strategy="fsdp")) == "hf"
    # the reference's actor.strategy is called distributed here (docs/fidelity.md): one spelling
    with pytest.raises(ConfigError, match=r"^strategy: unknown key; known keys are .*distributed"):
        TrainConfig.from_dict({"train_file": str(data), "strategy": "fsdp"})
    with pytest.raises(ConfigError, match="^fused_lm_head: fused_lm_head=true cannot run with distributed='fsdp'"):
        TrainConfig(train_file=str(data), distributed="fsdp", fused_lm_head=True, adapter="lora")


# ----------------------------------------------------------------------------- the per-rank programs


def _fsdp_case(model, tok, name: str, dist: DistContext) -> dict:
    """test_distributed._run_case with the student (and the teacher's own weights) sharded by FSDP2; the
    returned tensors are gathered full tensors."""
    from sdpo.distributed import apply_fsdp, gather_full, shard
    from sdpo.teacher import make_teacher
    from sdpo.trainer import shard_teacher
    from sdpo.update import UpdateConfig, policy_update

    case = dict(CASES[name])
    groups = shard(LAYOUTS[case.pop("layout", "mixed")], dist)
    sd = SelfDistillationConfig(distillation_topk=10, alpha=0.5, is_clip=case.pop("is_clip", None),
                                loss_agg_mode=case.pop("agg"), teacher_regularization=case.pop("teacher", "live"),
                                teacher_update_rate=0.3)
    cfg = UpdateConfig(**{"self_distillation": sd, "max_grad_norm": 1e9, "rollout_correction_threshold": None,
                          **case})
    m = copy.deepcopy(model)
    teacher = make_teacher(sd, m) if cfg.loss != "grpo" else None
    apply_fsdp(m, dist)
    shard_teacher(teacher, dist)
    before = gather_full([p.detach() for p in m.parameters()])
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    metrics = policy_update(m, opt, teacher, tok, _batch(tok, groups), cfg, seed=5, dist=dist)
    if teacher is not None:
        teacher.update(m)
    after = gather_full([p.detach() for p in m.parameters()])
    delta = torch.cat([(a - b).flatten() for a, b in zip(after, before, strict=True)])
    t_state = list(_tensors(gather_full(teacher.state_dict()))) if teacher is not None else []
    return {"delta": delta, "metrics": metrics, "teacher": t_state}


def _rank_update(model_path: str, out: str) -> None:
    from sdpo.distributed import init_from_env, shutdown
    from sdpo.models import load_model_and_tokenizer

    torch.set_num_threads(1)
    dist = init_from_env("fsdp", device="cpu")
    assert dist.strategy == "fsdp" and torch.distributed.get_backend() == "gloo"
    model, tok = load_model_and_tokenizer(model_path)
    model = model.double()
    results = {name: _fsdp_case(model, tok, name, dist) for name in FSDP_CASES}
    torch.save(results, Path(out) / f"rank{dist.rank}.pt")
    shutdown(dist)


def _rank_generate(model_path: str, out: str) -> None:
    """Greedy HF generation from the sharded model where rank 1 stops after one token (its first greedy token
    is made an EOS there) and rank 0 runs all max_new_tokens: without synced_gpus rank 1 would leave generate
    while rank 0's forwards still all-gather. Rank 1 then has one prompt fewer (one generate call fewer)."""
    from sdpo.distributed import apply_fsdp, init_from_env, shutdown, sync_generate
    from sdpo.models import load_model_and_tokenizer
    from sdpo.rollout.base import SamplingParams
    from sdpo.rollout.hf import HFSampler

    torch.set_num_threads(1)
    dist = init_from_env("fsdp", device="cpu")
    model, tok = load_model_and_tokenizer(model_path)
    prompts = [[{"role": "user", "content": "Print hello."}], [{"role": "user", "content": "Say 2."}]]
    prompts = prompts[: 2 - dist.rank]
    params = SamplingParams(max_new_tokens=8, temperature=0.0, seed=1)
    sampler = HFSampler(model, tok, batch_size=1)
    if dist.rank == 1:
        first = sampler.generate(prompts, 1, SamplingParams(max_new_tokens=1, temperature=0.0))[0].response_ids[0]
        model.generation_config.eos_token_id = [tok.eos_token_id, first]
    whole = [r.response_ids for r in sampler.generate(prompts, 1, params)]  # unsharded, no collectives
    apply_fsdp(model, dist)
    sharded = [r.response_ids for r in sync_generate(sampler, prompts, 1, params, dist)]
    torch.save({"whole": whole, "sharded": sharded}, Path(out) / f"gen{dist.rank}.pt")
    dist.barrier()
    shutdown(dist)


# -------------------------------------------------------------------------------------- 2-rank tests


@pytest.mark.slow
def test_fsdp_two_ranks_take_the_one_process_step(tiny_model_path, tmp_path):
    """Sharded ranks, one fully masked under SDPO with fewer micro-batches, finish (bounded by the timeout) and
    take the one-process step: updated weights, loss, grad norm and EMA / trust-region teacher state."""
    from sdpo.models import load_model_and_tokenizer

    torchrun(MODULE, ["update", str(tiny_model_path), str(tmp_path)], timeout=120)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model = model.double()
    for name in FSDP_CASES:
        ref = _run_case(model, tok, name, SINGLE)
        scale = float(ref["delta"].abs().max())
        assert scale > 0, name
        for r in ranks:
            got = r[name]
            torch.testing.assert_close(got["delta"], ref["delta"], rtol=1e-5, atol=1e-6 * scale, msg=name)
            for k in ("loss", "grad_norm"):
                assert got["metrics"][k] == pytest.approx(ref["metrics"][k], rel=1e-6, abs=1e-9), (name, k)
            assert got["metrics"].keys() == ref["metrics"].keys(), name
            assert len(got["teacher"]) == len(ref["teacher"]), name
            assert got["teacher"] or name == "hybrid-token-sum-norm", name  # EMA / trust-region: compared
            for a, b in zip(got["teacher"], ref["teacher"], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=name)
        torch.testing.assert_close(ranks[0][name]["delta"], ranks[1][name]["delta"], rtol=0, atol=0)


def test_fsdp_generate_keeps_ranks_of_different_lengths_and_call_counts_in_step(tiny_model_path, tmp_path):
    torchrun(MODULE, ["generate", str(tiny_model_path), str(tmp_path)], timeout=90)
    r0, r1 = (torch.load(tmp_path / f"gen{r}.pt", weights_only=False) for r in (0, 1))
    assert [len(x) for x in r1["whole"]] == [1] and all(len(x) == 8 for x in r0["whole"])  # lengths differ
    assert r0["sharded"] == r0["whole"] and r1["sharded"] == r1["whole"]  # sharded generate = unsharded


def _base(tiny_model_path, data: Path, **kw) -> dict:
    # train_batch_size=3 on 2 ranks: 2 questions on rank 0, 1 on rank 1, so the ranks' generate calls have
    # different chunk counts (sampler_batch_size=2) and different lengths (synced_gpus)
    return {**dict(model_path=str(tiny_model_path), train_file=str(data), test_file=str(data),
                   train_batch_size=3, n=2, max_new_tokens=8, micro_batch_size=2, val_k=1, lr=1e-3, progress=False,
                   seed=3, sampler_batch_size=2, distributed="fsdp", device="cpu",
                   self_distillation={"distillation_topk": 10, "teacher_update_rate": 0.2}), **kw}


@pytest.mark.slow
def test_fsdp_lora_checkpoint_resumes_on_two_ranks_and_loads_in_one_process(tiny_model_path, tmp_path):
    from sdpo.teacher import make_teacher
    from sdpo.trainer import TrainConfig, build_policy, load_checkpoint, train
    from sdpo.update import make_optimizer

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    base = _base(tiny_model_path, data, adapter="lora", max_steps=3, save_every=2)
    torchrun(MODULE, ["train", json.dumps({**base, "out_dir": str(tmp_path / "a")})], timeout=150)
    steps, a = _metrics(tmp_path / "a")
    assert steps == [1, 2, 3] and "val/avg@1" in a[3] and a[3]["loss"] == a[3]["loss"]
    ckpt = tmp_path / "a/checkpoints/step_2"
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and state["position"] == 6 and len(state["rng_ranks"]) == 2
    assert (ckpt / "adapter/adapter_model.safetensors").is_file()
    # the one-process layout: plain full tensors, optimizer state keyed by parameter index
    assert not any(type(t) is not torch.Tensor for t in _tensors_raw(state))
    # resumed from step 2 on 2 ranks: step 3 reproduces the uninterrupted run
    resume = {**base, "out_dir": str(tmp_path / "b"), "resume_from": str(ckpt)}
    torchrun(MODULE, ["train", json.dumps(resume)], timeout=150)
    steps_b, b = _metrics(tmp_path / "b")
    assert steps_b == [3] and a[3].keys() == b[3].keys()
    for k in a[3]:
        assert a[3][k] == pytest.approx(b[3][k], rel=1e-5, abs=1e-7), k
    # the 2-rank fsdp checkpoint loads into one process (weights, optimizer, EMA teacher) and trains on
    cfg = TrainConfig.from_dict({**base, "distributed": "none", "out_dir": str(tmp_path / "c"),
                                 "resume_from": str(ckpt)})
    model, tok, _ = build_policy(cfg)
    teacher = make_teacher(cfg.self_distillation, model)
    opt, sched = make_optimizer(model, cfg)
    load_checkpoint(ckpt, model, opt, sched, teacher)
    assert sum(len(s) for s in opt.state_dict()["state"].values()) > 0
    for k, v in teacher.state_dict()["weights"].items():
        torch.testing.assert_close(v, state["teacher"]["weights"][k], rtol=0, atol=0)
    assert train(cfg).steps == 3


@pytest.mark.slow
def test_one_process_full_checkpoint_resumes_on_two_fsdp_ranks_and_back(tiny_model_path, tmp_path):
    """Full model + trust-region teacher (its frozen reference is sharded too): a one-process checkpoint
    resumes on 2 fsdp ranks, whose checkpoint (gathered full weights, tied LM head) loads strictly in one
    process."""
    from safetensors.torch import load_file

    from sdpo.teacher import make_teacher
    from sdpo.trainer import TrainConfig, build_policy, load_checkpoint, train
    from sdpo.update import make_optimizer

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    base = _base(tiny_model_path, data, adapter="full", max_steps=1, val_every=0,
                 self_distillation={"distillation_topk": 10, "teacher_regularization": "trust-region"})
    one = TrainConfig.from_dict({**base, "distributed": "none", "out_dir": str(tmp_path / "one")})
    train(one)
    resume = {**base, "max_steps": 2, "out_dir": str(tmp_path / "two"),
              "resume_from": str(tmp_path / "one/checkpoints/step_1")}
    torchrun(MODULE, ["train", json.dumps(resume)], timeout=150)
    steps, _ = _metrics(tmp_path / "two")
    assert steps == [2]
    ckpt = tmp_path / "two/checkpoints/step_2"
    cfg = TrainConfig.from_dict({**base, "distributed": "none", "out_dir": str(tmp_path / "three")})
    model, tok, _ = build_policy(cfg)
    teacher = make_teacher(cfg.self_distillation, model)
    opt, sched = make_optimizer(model, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_checkpoint(ckpt, model, opt, sched, teacher)  # strict: every weight of the model is in the file
    saved = load_file(str(ckpt / "model/model.safetensors"))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    ref0 = load_file(str(tmp_path / "one/checkpoints/step_1/model/model.safetensors"))
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    ref = state["teacher"]["weights"]  # the trust-region reference is the initial model, gathered whole
    assert all(torch.equal(ref[k], before[k]) for k in ref) and ref0.keys() <= before.keys()


@pytest.mark.slow
def test_fsdp_bf16_full_fine_tuning_keeps_float32_masters_and_resumes_exactly(tiny_model_path, tmp_path):
    """bfloat16 full fine-tuning on 2 fsdp ranks at lr 1e-6: the float32 masters are sharded like their
    parameters, the checkpoint holds them gathered (float32; without masters ~1.5% of the bf16 weights move at
    all), the EMA teacher keeps a float32 master, and a resume on 2 ranks reproduces the uninterrupted run."""
    from safetensors.torch import load_file

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    base = _base(tiny_model_path, data, adapter="full", dtype="bfloat16", lr=1e-6, max_steps=3, save_every=2,
                 val_every=0)
    torchrun(MODULE, ["train", json.dumps({**base, "out_dir": str(tmp_path / "a")})], timeout=150)
    saved = load_file(str(tmp_path / "a/checkpoints/step_3/model/model.safetensors"))
    init = load_file(str(tiny_model_path / "model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float32}
    moved = sum(int((v != init[k].to(torch.bfloat16).float()).sum()) for k, v in saved.items())
    assert moved > 0.9 * sum(v.numel() for v in saved.values())
    state = torch.load(tmp_path / "a/checkpoints/step_2/trainer_state.pt", weights_only=False)
    assert {v.dtype for v in state["teacher"]["weights"].values()} == {torch.float32}
    resume = {**base, "out_dir": str(tmp_path / "b"), "resume_from": str(tmp_path / "a/checkpoints/step_2")}
    torchrun(MODULE, ["train", json.dumps(resume)], timeout=150)
    _, a = _metrics(tmp_path / "a")
    _, b = _metrics(tmp_path / "b")
    for k in a[3]:
        assert a[3][k] == pytest.approx(b[3][k], rel=1e-5, abs=1e-7), k
    again = load_file(str(tmp_path / "b/checkpoints/step_3/model/model.safetensors"))
    assert all(torch.equal(again[k], saved[k]) for k in saved)


def _tensors_raw(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_raw(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_raw(v)


if __name__ == "__main__":  # a rank of a torchrun launch (see the tests above)
    run_rank_program({"update": _rank_update, "generate": _rank_generate, "train": rank_train})
