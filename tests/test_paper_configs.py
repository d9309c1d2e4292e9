"""configs/paper/: every preset holds the reference's values (lasgroup/SDPO at commit 0e6d510, the YAML its
scripts run plus each script's overrides, tabulated below), names its source on every line, and runs for one
step on the tiny model with size overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"

# The reference's templates, verl/trainer/config/actor/actor.yaml:131-148 (YAML block scalars, "|-").
REPROMPT = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
SOLUTION = "\nCorrect solution:\n\n{successful_previous_attempt}"
FEEDBACK = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}"

# What every training run of the reference shares: user.yaml, actor.yaml, dp_actor.yaml, rollout.yaml,
# optim/fsdp.yaml, engine/fsdp.yaml (our names; verl's mini-batch counts questions, ours samples).
COMMON = {
    "adapter": "full", "dtype": "bfloat16", "distributed": "fsdp", "train_batch_size": 32, "n": 8,
    "micro_batch_size": 1, "ppo_epochs": 1, "weight_decay": 0.01, "lr_schedule": "constant", "max_grad_norm": 1.0,
    "temperature": 1.0, "top_p": 1.0, "top_k": None, "max_prompt_len": 2048, "max_new_tokens": 8192,
    "rollout_correction_threshold": 2.0, "norm_adv_by_std": False, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28,
    "clip_ratio_c": 3.0, "gpu_memory_utilization": 0.55, "val_every": 5, "val_temperature": 0.6, "val_top_p": 0.95,
    "val_top_k": None, "val_max_questions": None, "save_every": 0,
    "self_distillation.loss_agg_mode": "seq-mean-token-mean-all",
}
SDPO = {  # sdpo.yaml + actor.yaml's self_distillation block
    "loss": "sdpo", "self_distillation.mode": "logit", "self_distillation.distillation_add_tail": True,
    "self_distillation.is_clip": 2.0, "self_distillation.temperature": 1.0,
    "self_distillation.success_reward_threshold": 0.5, "self_distillation.dont_reprompt_on_self_success": True,
    "self_distillation.remove_thinking_from_demonstration": True,
    "self_distillation.environment_feedback_only_without_solution": True,
    "self_distillation.max_reprompt_len": 10240, "self_distillation.reprompt_truncation": "right",
    "self_distillation.teacher_regularization": "ema", "self_distillation.reprompt_template": REPROMPT,
    "self_distillation.solution_template": SOLUTION, "self_distillation.feedback_template": FEEDBACK,
}
LCB = {"train_file": "data/lcb_v6/train.jsonl", "test_file": "data/lcb_v6/test.jsonl", "max_steps": 120}
CHEMISTRY = {"train_file": "data/sciknoweval/chemistry/train.json",
             "test_file": "data/sciknoweval/chemistry/test.json", "max_steps": 1770}
REFERENCE = {
    "rich_feedback_sdpo.yaml": {  # experiments/rich_feedback/run_sdpo.sh
        **COMMON, **SDPO, **LCB, "mini_batch_size": 8, "lr": 1e-6, "warmup_steps": 0, "val_k": 4,
        "code_feedback": "all_tests", "self_distillation.distillation_topk": 20, "self_distillation.alpha": 1.0,
        "self_distillation.teacher_update_rate": 0.01, "self_distillation.include_environment_feedback": True},
    "rich_feedback_grpo.yaml": {  # experiments/rich_feedback/run_baseline_grpo.sh
        **COMMON, **LCB, "loss": "grpo", "mini_batch_size": 64, "lr": 1e-6, "warmup_steps": 0, "val_k": 4},
    "generalization_sdpo.yaml": {  # experiments/generalization/run_sdpo_all.sh
        **COMMON, **SDPO, **CHEMISTRY, "mini_batch_size": 256, "lr": 1e-5, "warmup_steps": 10, "val_k": 16,
        "self_distillation.distillation_topk": 100, "self_distillation.alpha": 0.5,
        "self_distillation.teacher_update_rate": 0.05, "self_distillation.include_environment_feedback": False},
    "generalization_grpo.yaml": {  # experiments/generalization/run_baseline_grpo_all.sh (lr 1e-6, 8 questions)
        **COMMON, **CHEMISTRY, "loss": "grpo", "mini_batch_size": 64, "lr": 1e-6, "warmup_steps": 10, "val_k": 16},
    "ttt_multiturn.yaml": {  # baseline_multiturn/multiturn.py
        "strategy": "multiturn", "budget": 2880, "multiturn_template": "feedback_only", "context_budget": 32000,
        "max_new_tokens": 8192, "temperature": 1.0, "top_p": 1.0, "top_k": None, "dtype": "bfloat16",
        "gpu_memory_utilization": 0.7, "code_feedback": "all_tests", "seed": 0},
    "ttt_sdpo.yaml": {  # the rich-feedback recipe on one question (the reference released no test-time script)
        **{k: v for k, v in SDPO.items() if k != "loss"}, "strategy": "sdpo", "budget": 2880, "n": 32,
        "mini_batch_size": 8, "micro_batch_size": 1, "adapter": "full", "dtype": "bfloat16", "lr": 1e-6,
        "weight_decay": 0.01, "max_new_tokens": 8192, "rollout_correction_threshold": 2.0, "temperature": 1.0,
        "code_feedback": "all_tests", "self_distillation.distillation_topk": 20, "self_distillation.alpha": 1.0,
        "self_distillation.teacher_update_rate": 0.01, "self_distillation.include_environment_feedback": True,
        "self_distillation.loss_agg_mode": "seq-mean-token-mean-all"},
}
TRAIN = [n for n in REFERENCE if not n.startswith("ttt_")]
CODE_ROWS = [{"prompt": "Read an integer n and print n*2.", "kind": "code",
              "tests": json.dumps({"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"], "testtype": "stdin"})},
             {"prompt": "Read a line and print it reversed.", "kind": "code",
              "tests": json.dumps({"inputs": ["abc\n"], "outputs": ["cba\n"], "testtype": "stdin"})}]
MCQ_ROWS = [{"prompt": f"Which letter comes first? ({i})\nA: a\nB: b", "kind": "mcq", "answer": "A",
             "system": "Answer with <answer>A</answer> or <answer>B</answer>."} for i in range(2)]
PROBLEM = {"title": "Double", "statement": "Read an integer n from stdin and print 2n.",
           "tests": {"inputs": ["3\n", "5\n"], "outputs": ["6\n", "10\n"], "testtype": "stdin"},
           "hidden_tests": {"inputs": ["7\n"], "outputs": ["14\n"], "testtype": "stdin"}}


def _value(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _data(tmp_path, name: str) -> list[str]:
    f = tmp_path / "data.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in (MCQ_ROWS if "generalization" in name else CODE_ROWS)))
    return [f"train_file={f}", f"test_file={f}"]


def test_every_preset_is_tabulated_and_names_its_source_on_every_line():
    assert sorted(p.name for p in PAPER.glob("*.yaml")) == sorted(REFERENCE)
    for path in PAPER.glob("*.yaml"):
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert "#" in line or line.rstrip().endswith(":"), f"{path.name}: no source for {line!r}"


@pytest.mark.parametrize("name", TRAIN)
def test_training_presets_hold_the_reference_values(name, tmp_path, tiny_model_path):
    from sdpo.trainer import load_config

    raw = yaml.safe_load((PAPER / name).read_text())
    assert raw["model_path"] == "models/Qwen3-8B"
    assert (raw["train_file"], raw["test_file"]) == (REFERENCE[name]["train_file"], REFERENCE[name]["test_file"])
    cfg = load_config(str(PAPER / name), [f"model_path={tiny_model_path}", *_data(tmp_path, name)])
    for key, want in REFERENCE[name].items():
        if key not in ("train_file", "test_file"):
            assert _value(cfg, key) == want, (name, key)


@pytest.mark.parametrize("name", ["ttt_multiturn.yaml", "ttt_sdpo.yaml"])
def test_test_time_presets_hold_the_reference_values(name):
    from sdpo.ttt import SolveConfig

    cfg = SolveConfig.from_dict(yaml.safe_load((PAPER / name).read_text()))
    for key, want in REFERENCE[name].items():
        assert _value(cfg, key) == want, (name, key)


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAIN)
def test_training_preset_runs_one_step_on_the_tiny_model(name, tmp_path, tiny_model_path):
    """The preset as it is (bf16 full fine-tuning with float32 masters, EMA teacher, the reference's
    aggregation and validation protocol), shrunk: 2 questions x 2 rollouts of 16 tokens, one step."""
    import time

    from sdpo.trainer import load_config, train

    cfg = load_config(str(PAPER / name), [
        f"model_path={tiny_model_path}", *_data(tmp_path, name), f"out_dir={tmp_path / 'run'}", "max_steps=1",
        "train_batch_size=2", "n=2", "mini_batch_size=2", "max_new_tokens=16", "val_k=1", "sampler=hf",
        "device=cpu", "progress=false", "warmup_steps=0"])
    t0 = time.perf_counter()
    result = train(cfg)
    m = result.last_metrics
    print(f"{name}: loss {m['loss']:.4g} reward {m['reward/mean']:.3g} val/avg@1 {m['val/avg@1']:.3g} "
          f"{time.perf_counter() - t0:.1f} s")
    assert result.steps == 1 and m["update/optimizer_steps"] == 2.0  # 4 samples in mini-batches of 2
    assert m["loss"] == m["loss"] and "val/avg@1" in m
    weights = tmp_path / "run/checkpoints/step_1/model/model.safetensors"
    assert weights.is_file()  # float32 masters of the bf16 run (tests/sdpo/test_precision.py)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ttt_multiturn.yaml", "ttt_sdpo.yaml"])
def test_test_time_preset_runs_on_the_tiny_model(name, tmp_path, tiny_model_path):
    import time

    from typer.testing import CliRunner

    from sdpo.cli import app

    problem = tmp_path / "p.json"
    problem.write_text(json.dumps(PROBLEM))
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, ["solve", "--config", str(PAPER / name), "--problem", str(problem), "--model",
                                 str(tiny_model_path), "--out", str(tmp_path / "o"), "--budget", "4", "--set",
                                 "n=2", "--set", "mini_batch_size=2", "--set", "max_new_tokens=16", "--set",
                                 "context_budget=512", "--set", "sampler=hf", "--set", "device=cpu"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "o/result.json").read_text())
    assert result["strategy"] == yaml.safe_load((PAPER / name).read_text())["strategy"]
    assert result["attempts_used"] == 4
    rewards = [json.loads(x)["reward"] for x in (tmp_path / "o/attempts.jsonl").read_text().splitlines()]
    print(f"{name}: attempts {len(rewards)} mean reward {sum(rewards) / len(rewards):.3g} "
          f"{time.perf_counter() - t0:.1f} s")
