"""The glue between the engines and the services: configs are validated by the engines' own dataclasses
(so the services and the engines cannot drift apart), problems by the engine's parser."""

from __future__ import annotations

import json

import pytest

from backend.errors import InvalidInput
from backend.schemas import AttemptIn
from sdpo.callbacks import Attempt
from sdpo.trainer import TrainConfig
from sdpo.ttt import SolveConfig
from workers.engine import TRAIN_RUNTIME_KEYS, attempt_in, parse_problem, validate_config

PROBLEM = {
    "title": "Double",
    "statement": "Read an integer n and print 2*n.",
    "tests": {"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"], "testtype": "stdin"},
    "hidden_tests": {"inputs": ["7\n"], "outputs": ["14\n"], "testtype": "stdin"},
}


def test_solve_config_is_normalized_by_the_engine_dataclass():
    out = validate_config("solve", {"strategy": "best_of_k", "budget": 3})
    assert out == SolveConfig.from_dict({"strategy": "best_of_k", "budget": 3}).to_dict()
    assert out["budget"] == 3 and out["n"] == SolveConfig().n  # defaults filled from the engine
    assert json.loads(json.dumps(out)) == out  # storable as JSON
    assert validate_config("solve", out) == out  # stored configs re-validate unchanged (re-run)


def test_train_config_is_normalized_without_runtime_keys():
    out = validate_config("train", {"dataset": "humaneval", "max_steps": 3})
    expected = TrainConfig.from_dict({"dataset": "humaneval", "max_steps": 3}).to_dict()
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
def test_engine_errors_name_the_field(kind, config, field):
    with pytest.raises(InvalidInput) as e:
        validate_config(kind, config)
    assert e.value.field.endswith(field), str(e.value)
    assert e.value.message and not e.value.message.startswith(f"{field}:")


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


def test_strategy_is_another_name_of_distributed():
    base = {"dataset": "humaneval", "train_batch_size": 2}
    out = validate_config("train", {**base, "strategy": "ddp"})
    assert out["distributed"] == "ddp" and "strategy" not in out
    assert out == validate_config("train", {**base, "distributed": "ddp"})
    with pytest.raises(InvalidInput) as e:
        validate_config("train", {**base, "strategy": "ddp", "distributed": "none"})
    assert e.value.field == "strategy"
    with pytest.raises(InvalidInput) as e:
        validate_config("train", {**base, "strategy": "zero3"})
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
