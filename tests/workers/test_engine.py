"""The glue between the engines and the services: configs are validated by the engines' own dataclasses
(so the services and the engines cannot drift apart), problems by the engine's parser."""

from __future__ import annotations

import json

import pytest

from backend.errors import InvalidInput
from backend.schemas import AttemptIn
from sdpo.callbacks import Attempt
from sdpo.sizing import CPU_SOLVE, CPU_TRAIN
from sdpo.trainer import TrainConfig
from sdpo.ttt import SolveConfig
from tests.workers.problems import DOUBLE as PROBLEM
from workers.engine import TRAIN_RUNTIME_KEYS, attempt_in, parse_problem, validate_config


def test_solve_config_is_normalized_by_the_engine_dataclass(settings_env):
    # the server's default model (the demo model, not built yet) gets the CPU-sized defaults
    out = validate_config("solve", {"strategy": "best_of_k", "budget": 3})
    assert out == SolveConfig.from_dict({**CPU_SOLVE, "strategy": "best_of_k", "budget": 3}).to_dict()
    assert out["budget"] == 3 and out["n"] == CPU_SOLVE["n"]  # defaults filled from the engine
    assert json.loads(json.dumps(out)) == out  # storable as JSON
    assert validate_config("solve", out) == out  # stored configs re-validate unchanged (re-run)


def test_train_config_is_normalized_without_runtime_keys(settings_env):
    out = validate_config("train", {"dataset": "humaneval", "max_steps": 3})
    expected = TrainConfig.from_dict({**CPU_TRAIN, "dataset": "humaneval", "max_steps": 3}).to_dict()
    for key in TRAIN_RUNTIME_KEYS:
        expected.pop(key, None)
    assert out == expected
    assert validate_config("train", out) == out


@pytest.mark.parametrize("kind, config, field", [
    ("solve", {"budget": -1}, "budget"),
    ("solve", {"adapter": "qlora"}, "adapter"),
    ("solve", {"self_distillation": {"mode": "token", "alpha": 0.5}}, "alpha"),
    ("solve", {"self_distillation": {"nope": 1}}, "nope"),
    ("train", {}, "dataset"),
    ("train", {"dataset": "humaneval", "resume_from": "/x"}, "resume_from"),
    ("train", {"dataset": "humaneval", "model_path": "/no/model"}, "model_path"),
    ("ping", {}, "kind"),
])
def test_engine_errors_name_the_field(kind, config, field, settings_env):
    with pytest.raises(InvalidInput) as e:
        validate_config(kind, config)
    assert e.value.field.endswith(field), str(e.value)
    assert e.value.message and not e.value.message.startswith(f"{field}:")


def _checkpoint(path, **dims):
    """A checkpoint folder as far as the defaults look: its config.json (the parameter count comes from it)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2", **dims}))
    return str(path)


BIG = dict(hidden_size=4096, num_hidden_layers=36, vocab_size=151936, intermediate_size=12288,
           num_attention_heads=32, num_key_value_heads=8)  # an 8B-parameter model
SMALL = dict(hidden_size=192, num_hidden_layers=4, vocab_size=2048, intermediate_size=512, tie_word_embeddings=True)


def test_defaults_fit_the_model_and_the_machine(tmp_path, settings_env):
    """The paper's values for a real checkpoint on GPU workers; CPU-sized ones for a small (demo) model, for
    device: cpu and when the workers have no GPU; whatever the user sets wins."""
    big, small = _checkpoint(tmp_path / "big", **BIG), _checkpoint(tmp_path / "small", **SMALL)
    paper = SolveConfig()

    def solve(config=None, **target):
        out = validate_config("solve", config or {}, **target)
        return out["budget"], out["n"], out["max_new_tokens"], out["context_budget"]

    assert solve(model=big, gpu=True) == (paper.budget, paper.n, paper.max_new_tokens, paper.context_budget)
    cpu = (CPU_SOLVE["budget"], CPU_SOLVE["n"], CPU_SOLVE["max_new_tokens"], CPU_SOLVE["context_budget"])
    assert solve(model=big, gpu=False) == cpu
    assert solve({"device": "cpu"}, model=big, gpu=True) == cpu
    assert solve(model=small, gpu=True) == cpu
    assert solve({"n": 6, "budget": 30}, model=small)[:2] == (30, 6)
    # a longer response than the context fits: context_budget (not set by the user) grows with it
    assert solve({"max_new_tokens": 20_000}, model=big, gpu=True)[2:] == (20_000, 22_048)
    assert solve({"max_new_tokens": 5_000}, model=small)[2:] == (5_000, 7_048)
    train = validate_config("train", {"dataset": "humaneval"}, model=big, gpu=True)
    assert (train["n"], train["max_prompt_len"]) == (TrainConfig.n, TrainConfig.max_prompt_len)
    train = validate_config("train", {"dataset": "humaneval"}, model=small, gpu=True)
    assert {k: train[k] for k in CPU_TRAIN} == CPU_TRAIN


@pytest.mark.parametrize("kind, config, target, field", [
    ("solve", {}, {"model": "/no/such/model"}, "model"),
    ("train", {"dataset": "humaneval"}, {"model": "/no/such/model"}, "model"),
    ("train", {"dataset": "humaneval", "model_path": "/no/such/model"}, {}, "model_path"),
])
def test_the_model_is_checked_when_the_job_is_submitted(kind, config, target, field, settings_env):
    with pytest.raises(InvalidInput) as e:
        validate_config(kind, config, **target)
    assert e.value.field == field and "no Hugging Face checkpoint (config.json) at /no/such/model" in str(e.value)


@pytest.mark.parametrize("kind, config, field, limit", [
    ("solve", {"budget": 10**12}, "budget", 100_000),
    ("solve", {"max_new_tokens": 99_999_999}, "max_new_tokens", 131_072),  # not context_budget, derived from it
    ("solve", {"n": 5000}, "n", 1024),
    ("solve", {"context_budget": 10**7}, "context_budget", 262_144),
    ("solve", {"self_distillation": {"max_reprompt_len": 10**6}}, "self_distillation.max_reprompt_len", 262_144),
    ("train", {"dataset": "humaneval", "max_new_tokens": 99_999_999}, "max_new_tokens", 131_072),
    ("train", {"dataset": "humaneval", "max_prompt_len": 10**6}, "max_prompt_len", 131_072),
    ("train", {"dataset": "humaneval", "max_steps": 10**9}, "max_steps", 10_000_000),
])
def test_upper_limits_name_the_field_the_user_set(kind, config, field, limit, settings_env):
    with pytest.raises(InvalidInput) as e:
        validate_config(kind, config)
    assert e.value.field == field and f"must be <= {limit}" in str(e.value), str(e.value)


def test_dataset_config_is_accepted_by_the_trainer(tmp_path, settings_env):
    """backend.services.datasets.dataset_config speaks TrainConfig's language (train_file/test_file)."""
    from backend.db import make_engine, make_session_factory, session_scope
    from backend.migrate import upgrade
    from backend.services.datasets import dataset_config, upload_dataset

    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    rows = b"".join(json.dumps({"prompt": f"q{i}"}).encode() + b"\n" for i in range(2))
    with session_scope(make_session_factory(make_engine(url))) as s:
        ds = upload_dataset(s, name="mine", content=rows, test_content=rows, settings=settings_env)
        keys = dataset_config(ds)
    out = validate_config("train", {"dataset": "humaneval", **keys})
    assert out["train_file"] == keys["train_file"] and out["dataset"] is None


def test_parse_problem_counts_tests_and_normalizes():
    p = parse_problem(PROBLEM)
    assert (p.title, p.n_public_tests, p.n_hidden_tests) == ("Double", 2, 1)
    assert p.data["tests"]["inputs"] == ["2\n", "5\n"] and parse_problem(p.data).data == p.data
    with pytest.raises(InvalidInput) as e:
        parse_problem({**PROBLEM, "tests": {"inputs": ["1"], "outputs": [], "testtype": "stdin"}})
    assert e.value.field.startswith("tests")


def test_attempt_conversion_keeps_every_field():
    a = Attempt(round=2, index=1, response="r", code="c", reward=0.5, passed=1, total=2, feedback="fb",
                tokens=7, seconds=0.25, hidden_passed=0, hidden_total=1, task_id="t")
    assert attempt_in(a) == AttemptIn(round=2, index=1, response="r", code="c", reward=0.5, passed_public=1,
                                      total_public=2, passed_hidden=0, total_hidden=1, feedback="fb", tokens=7,
                                      seconds=0.25, task_id="t")


def test_distributed_has_one_spelling():
    base = {"dataset": "humaneval", "train_batch_size": 2}
    out = validate_config("train", {**base, "distributed": "ddp"})
    assert out["distributed"] == "ddp" and "strategy" not in out
    with pytest.raises(InvalidInput) as e:  # the reference's name of the setting is not a second spelling
        validate_config("train", {**base, "strategy": "ddp"})
    assert e.value.field == "strategy" and "unknown key" in e.value.message
    with pytest.raises(InvalidInput) as e:
        validate_config("train", {**base, "distributed": "zero3"})
    assert e.value.field == "distributed" and "'zero3'" in e.value.message


def test_a_cpu_host_accepts_an_fsdp_config_meant_for_gpu_workers():
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only app host")
    out = validate_config("train", {"dataset": "humaneval", "distributed": "fsdp"})
    assert out["distributed"] == "fsdp"  # stored as asked; the GPU worker validates it again


@pytest.mark.parametrize("batch, gpus, sampler", [
    (b, g, s) for b in (1, 2, 3, 4) for g in (2, 3, 4) for s in ("auto", "hf", "vllm")])
def test_submit_time_world_check_mirrors_the_trainer(batch, gpus, sampler):
    """backend.services.jobs.check_world_size refuses exactly what sdpo.trainer.check_world refuses on
    ``gpus`` ranks, with the same field."""
    from backend.services.jobs import check_world_size
    from sdpo.config import ConfigError
    from sdpo.distributed import DistContext, resolve_strategy
    from sdpo.trainer import check_world

    config = validate_config("train", {"dataset": "humaneval", "train_batch_size": batch, "sampler": sampler})
    cfg = TrainConfig.from_dict(config)
    ctx = DistContext(rank=0, world_size=gpus, strategy=resolve_strategy(cfg.distributed, gpus))
    try:
        check_world(cfg, ctx)
        trainer_field = None
    except ConfigError as e:
        trainer_field = e.field
    try:
        check_world_size(config, gpus)
        backend_field = None
    except InvalidInput as e:
        backend_field = e.field
    assert backend_field == trainer_field
